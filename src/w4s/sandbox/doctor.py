"""`w4s sandbox doctor`: which isolation layers hold on this machine, checked live from inside."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import asdict, dataclass, replace

from w4s.sandbox import isolation
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.host import Sandbox
from w4s.sandbox.runtime import protocol


@dataclass
class Check:
    layer: str
    ok: bool
    detail: str


def probe(cfg: SandboxConfig, read: list[str] = (), write: list[str] = (), port: int = 9) -> dict:
    """Run the probe job in a real sandbox and return what it saw.

    No jobs are forked ahead, so the only processes the probe may see are the zygote and itself.
    """
    with Sandbox(replace(cfg, warm_jobs=0)) as box:
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            box.spawn("probe", [child_end.fileno()], read=list(read), write=list(write), port=port)
        finally:
            child_end.close()
        host_end.settimeout(cfg.load_timeout_s)
        try:
            report = protocol.recv(host_end)["report"]
        finally:
            host_end.close()
        report["applied"] = box.applied
        return report


def diagnose(cfg: SandboxConfig | None = None) -> list[Check]:
    """Probe every guarantee; each check is ok only if the probe saw the layer hold (a degraded
    sandbox is started on purpose here, to see what it lacks)."""
    cfg = replace(cfg or SandboxConfig(), allow_degraded=True)
    backend = isolation.backend(cfg)
    with tempfile.TemporaryDirectory(prefix="w4s-doctor-") as outside:
        secret = os.path.join(outside, "secret.txt")
        with open(secret, "w") as handle:
            handle.write("host secret")
        os.chmod(outside, 0o755)
        os.chmod(secret, 0o644)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        try:
            os.environ["W4S_DOCTOR_CANARY"] = "1"
            report = probe(
                cfg,
                read=[secret],
                write=[os.path.join(outside, "written.txt")],
                port=listener.getsockname()[1],
            )
        finally:
            os.environ.pop("W4S_DOCTOR_CANARY", None)
            listener.close()
    env_ok = not (set(report["env_keys"]) - {"HOME", "LANG", "PATH", "MALLOC_ARENA_MAX", "PWD"})
    others = [p for p in report["visible_pids"] if p not in (1, report["pid"])]
    limits = report["rlimits"]
    checks = [
        Check("backend", backend == "bwrap", f"{backend}" + ("" if backend == "bwrap" else " (degraded)")),
        Check(
            "network",
            report["network"].startswith("blocked"),
            f"connect to the host's loopback: {report['network']}",
        ),
        Check("environment", env_ok, f"variables visible: {', '.join(report['env_keys'])}"),
        Check("processes", len(others) <= 1, f"{len(report['visible_pids'])} processes visible"),
        Check(
            "filesystem (read)",
            not report["readable"][secret],
            "a host file outside the sandbox is "
            + ("readable" if report["readable"][secret] else "not readable"),
        ),
        Check(
            "filesystem (write)",
            not any(v for k, v in report["writable"].items() if k.startswith(outside))
            and any(v for k, v in report["writable"].items() if not k.startswith(outside)),
            "writes only inside its scratch directory",
        ),
        Check(
            "privileges",
            report["uid"] != 0 and int(report.get("capabilities", "0"), 16) == 0,
            f"uid {report['uid']}, effective capabilities {report.get('capabilities')}",
        ),
        Check("seccomp", report.get("seccomp_mode") == 2, f"seccomp mode {report.get('seccomp_mode')}"),
        Check(
            "private scratch",
            report["applied"].get("private_scratch") == "on",
            "each job has its own tmpfs behind its scratch directory and /tmp"
            if report["applied"].get("private_scratch") == "on"
            else f"jobs share the scratch filesystem ({report['applied'].get('private_scratch')})",
        ),
        Check(
            "rlimits",
            limits["RLIMIT_AS"] > 0 and limits["RLIMIT_CPU"] > 0 and limits["RLIMIT_NPROC"] > 0,
            ", ".join(f"{k[7:].lower()}={v}" for k, v in limits.items()),
        ),
        Check(
            "job isolation",
            bool(report["applied"].get("job_uids")),
            "each job runs under its own uid"
            if report["applied"].get("job_uids")
            else "jobs share a uid (non-root): non-dumpable, group-killed, orphans swept",
        ),
    ]
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(check) for check in checks]
