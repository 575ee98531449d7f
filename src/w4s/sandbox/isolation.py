"""How a sandbox process is started: which isolation layers exist here and the command that uses them.

Two :class:`Isolation` kinds start the same zygote (``runtime/worker.py``):

:class:`Bubblewrap` (``bwrap``)
    new network, PID, IPC, UTS (and, unprivileged, user) namespaces; a root filesystem holding only
    the system libraries, the Python installation (read-only), the worker runtime and the code to run
    (read-only); a private tmpfs scratch per job. As root, bwrap runs without a user namespace and
    each job drops to a dedicated unprivileged uid before it reads any untrusted code.
:class:`ProcessIsolation` (``process``, degraded: only with ``allow_degraded``)
    where namespaces are unavailable (e.g. a Kubernetes pod without user namespaces): a child process
    with an empty environment, rlimits, the seccomp filter (no new sockets) and, as root, the uid
    drop; the filesystem and process table stay visible, which is reported loudly.

A runner that does not use a local zygote at all (a Kubernetes pod under gVisor, say) implements
:class:`w4s.sandbox.runner.WorkflowRunner` instead.
"""

from __future__ import annotations

import compileall
import functools
import itertools
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from w4s.config import validate
from w4s.errors import SandboxUnavailable
from w4s.sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
SANDBOX_RUNTIME = "/w4s/runtime"
SANDBOX_CODE = "/w4s/code"
SANDBOX_SCRATCH = "/scratch"
_UID_BASE = 1_000_000
_PR_SET_DUMPABLE = 4
_UID_SPAN_PER_SANDBOX = 10_000
_uid_counter = itertools.count(os.getpid() * 7919)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
# What a root zygote keeps: give each job its own uid (and its scratch to that uid), clean up after
# it; CAP_SYS_ADMIN makes each job's private scratch (a job gives up every capability with its uid).
_ROOT_CAPS = (
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_KILL",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_CHOWN",
    "CAP_SYS_ADMIN",
)


@dataclass
class Launch:
    """Everything needed to start one sandbox process; ``cleanup`` removes host-side leftovers."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    pass_fds: tuple[int, ...]
    host_dirs: list[str] = field(default_factory=list)
    backend: str = "bwrap"
    job_uids: range | None = None  # as root: the uids this sandbox gives its jobs, and no one else

    def cleanup(self) -> None:
        for path in self.host_dirs:
            shutil.rmtree(path, ignore_errors=True)


def _python_prefixes() -> list[str]:
    prefixes = {
        os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)
    }
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    # Drop nested duplicates and anything already under a system dir.
    kept = []
    for p in sorted(prefixes):
        if any(p == d or p.startswith(d + "/") for d in _SYSTEM_DIRS):
            continue
        if any(p.startswith(k + "/") for k in kept):
            continue
        kept.append(p)
    return kept


def _site_dirs() -> list[str]:
    dirs = []
    for path in site.getsitepackages():
        if os.path.isdir(path) and path not in dirs:
            dirs.append(path)
    return dirs


def _is_root() -> bool:
    return os.geteuid() == 0


def _tasks_of_uid(uid: int) -> int:
    """Threads and processes that already count against RLIMIT_NPROC for ``uid``."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return count


@functools.cache
def _bwrap_probe() -> tuple[bool, str, tuple[str, ...]]:
    """Can bubblewrap make namespaces here? Returns (works, detail, extra flags that work)."""
    path = shutil.which("bwrap")
    if path is None:
        return False, "bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'", ()
    base = [path, "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    base += _ro_system_args()
    if not _is_root():
        base.append("--unshare-user")
    tries: list[tuple[str, ...]] = [("--disable-userns",), ()] if not _is_root() else [()]
    last = ""
    for extra in tries:
        try:
            done = subprocess.run([*base, *extra, "--", "/bin/true"], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bwrap failed to run: {exc}", ()
        if done.returncode == 0:
            return True, path, extra
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        last = last[0]
    return False, f"bwrap cannot create namespaces here ({last})", ()


def _ro_system_args() -> list[str]:
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    files = [f for f in _SYSTEM_FILES if os.path.exists(f)]
    if files:
        args += ["--perms", "0755", "--dir", "/etc"]
    for f in files:
        args += ["--ro-bind", f, f]
    return args


def _world_accessible(path: str) -> bool:
    """Can a process of another, unprivileged uid traverse to ``path`` and read it?"""
    current = Path(path)
    if not current.exists() or not current.stat().st_mode & 0o004:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in current.parents)


def _parent_dirs(targets: list[str]) -> list[str]:
    """bwrap creates missing parents as 0700; make them traversable for the unprivileged uid."""
    args: list[str] = []
    made: set[str] = set()
    for target in targets:
        parts = Path(target).parts[1:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:depth])
            if parent not in made and not any(
                parent == d or parent.startswith(d + "/") for d in _SYSTEM_DIRS
            ):
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
    return args


DEGRADED_HINT = (
    "install bubblewrap and allow user namespaces, or pass --allow-degraded-sandbox (allow_degraded) to run "
    "anyway: workflow code could then read the host's files, the run folder and the hidden tests"
)


def backend(cfg: SandboxConfig) -> str:
    """The backend this configuration gets on this machine. Anything less than bubblewrap is refused
    unless ``cfg.allow_degraded``: a sandbox never falls back silently. A config made in Python is
    validated first, so that only ``True`` consents (``allow_degraded="no"`` is a ConfigError)."""
    validate(cfg)
    works, detail, _ = _bwrap_probe()
    if not cfg.seccomp and not cfg.allow_degraded:
        raise SandboxUnavailable(f"the seccomp filter was turned off (seccomp: false); {DEGRADED_HINT}")
    if cfg.isolation != "process" and works:
        return "bwrap"
    if cfg.isolation == "bwrap":
        raise SandboxUnavailable(f"isolation=bwrap was required but {detail}")
    reason = "process isolation was chosen" if cfg.isolation == "process" else detail
    if not cfg.allow_degraded:
        raise SandboxUnavailable(f"the sandbox cannot give full isolation ({reason}); {DEGRADED_HINT}")
    _warn_degraded(reason)
    return "process"


def degraded_layers(kind: str, applied: dict) -> list[str]:
    """The layers of full isolation that a started sandbox lacks (empty: full isolation)."""
    missing = []
    if kind != "bwrap":
        missing.append(f"namespaces (backend {kind})")
    if applied.get("seccomp") != "on":
        missing.append(f"seccomp filter ({applied.get('seccomp')})")
    if applied.get("private_scratch") != "on":
        missing.append(f"private scratch per job ({applied.get('private_scratch')})")
    return missing


@functools.cache
def _warn_degraded(detail: str) -> None:
    log.warning(
        "SANDBOX DEGRADED: %s. Workflow code runs with rlimits, seccomp and an empty environment, "
        "but can see the host's files and processes. Install bubblewrap or allow user namespaces.",
        detail,
    )


@functools.cache
def _shield_host() -> None:
    """Process isolation without root: jobs run under this process's own uid and see its PID, so
    while this process is dumpable they could read its environment (the API keys) or write its
    memory through /proc. Made non-dumpable (for good: no core dumps, no same-user debugger)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise SandboxUnavailable(
            "process isolation without root needs this process to be non-dumpable, and prctl refused"
        )
    log.info("process isolation without root: this process is now non-dumpable (its /proc is private)")


@dataclass
class Placement:
    """Where an isolation puts the zygote: the command before the Python interpreter, the paths the
    zygote sees for its runtime, code and scratch, its working directory, and host folders to remove."""

    argv: list[str]
    runtime: str
    code: str
    scratch: str
    cwd: str
    host_dirs: list[str] = field(default_factory=list)


class Isolation(Protocol):
    """How a sandbox zygote is started; :class:`Bubblewrap` and :class:`ProcessIsolation` are the two
    kinds. Everything else of the sandbox (the zygote, its jobs, the protocol) is the same for both."""

    name: str
    private_scratch: bool  # jobs can get a private tmpfs scratch (a mount namespace each)

    def place(self, cfg: SandboxConfig, code_dir: str, env: dict[str, str]) -> Placement: ...


class Bubblewrap:
    """New network, PID, IPC, UTS (and, without root, user) namespaces; a root filesystem of the system
    libraries, the Python installation, the runtime and the code, all read-only."""

    name = "bwrap"
    private_scratch = True

    def place(self, cfg: SandboxConfig, code_dir: str, env: dict[str, str]) -> Placement:
        _, bwrap, extra = _bwrap_probe()
        argv = [
            bwrap,
            "--die-with-parent",
            "--new-session",
            "--unshare-net",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--as-pid-1",
        ]
        if _is_root():
            argv += ["--cap-drop", "ALL"]
            for cap in _ROOT_CAPS:
                argv += ["--cap-add", cap]
        else:
            # In its user namespace only; each job drops it after making its private scratch.
            argv += ["--unshare-user", *extra, "--cap-add", "CAP_SYS_ADMIN"]
        argv += _ro_system_args()
        prefixes = _python_prefixes()
        hidden = [
            p for p in prefixes if any(p == d or p.startswith(d + "/") for d in ("/tmp", SANDBOX_SCRATCH))
        ]
        if hidden:
            raise SandboxUnavailable(
                f"the Python installation {hidden[0]} lies under /tmp, which every sample's private /tmp hides; "
                "install it (or the virtualenv) elsewhere, e.g. under /var/tmp or /opt"
            )
        binds = [(prefix, prefix) for prefix in prefixes]
        binds += [(str(RUNTIME_DIR), SANDBOX_RUNTIME), (code_dir, SANDBOX_CODE)]
        argv += _parent_dirs([target for _, target in binds])
        for source, target in binds:
            argv += ["--ro-bind", source, target]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", str(cfg.scratch_mb * 1024 * 1024), "--tmpfs", SANDBOX_SCRATCH]
        argv += ["--perms", "1777", "--size", str(16 * 1024 * 1024), "--tmpfs", "/tmp"]
        argv += ["--chdir", SANDBOX_SCRATCH, "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["--", os.path.realpath(sys.executable)]
        return Placement(argv, SANDBOX_RUNTIME, SANDBOX_CODE, SANDBOX_SCRATCH, "/")


class ProcessIsolation:
    """A plain child process (degraded): rlimits, seccomp, an empty environment and, as root, a uid
    per job; the host's files and processes stay visible."""

    name = "process"
    private_scratch = False

    def place(self, cfg: SandboxConfig, code_dir: str, env: dict[str, str]) -> Placement:
        if _is_root():
            hidden = [p for p in [*_python_prefixes(), str(RUNTIME_DIR)] if not _world_accessible(p)]
            if hidden:
                raise SandboxUnavailable(
                    f"process isolation as root runs jobs as an unprivileged uid, which cannot read {hidden[0]}; "
                    "install bubblewrap, or use a Python installation readable by all users"
                )
        else:
            _shield_host()
        scratch = tempfile.mkdtemp(prefix="w4s-scratch-")
        os.chmod(scratch, 0o1777)
        env["HOME"] = scratch
        return Placement([sys.executable], str(RUNTIME_DIR), code_dir, scratch, scratch, [scratch])


ISOLATIONS: dict[str, Isolation] = {"bwrap": Bubblewrap(), "process": ProcessIsolation()}


def prepare(cfg: SandboxConfig, ctrl_fd: int, files: dict[str, str] | None = None) -> Launch:
    """Build the launch of one sandbox zygote with ``files`` as its read-only code.

    ``ctrl_fd`` is the child's end of the control socket (SOCK_SEQPACKET); it is passed through.
    """
    isolation = ISOLATIONS[backend(cfg)]
    code_dir = tempfile.mkdtemp(prefix="w4s-code-")
    os.chmod(code_dir, 0o755)
    for name, text in (files or {}).items():
        path = os.path.join(code_dir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
    limits = cfg.worker_limits()
    uid_base = None
    if _is_root():
        uid_base = _UID_BASE + (next(_uid_counter) % 1000) * _UID_SPAN_PER_SANDBOX
        limits["max_processes_shared"] = cfg.max_processes
    else:
        limits["max_processes_shared"] = _tasks_of_uid(os.getuid()) + cfg.max_processes
    env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "2", "HOME": SANDBOX_SCRATCH}
    try:
        placed = isolation.place(cfg, code_dir, env)
    except SandboxUnavailable:
        shutil.rmtree(code_dir, ignore_errors=True)
        raise
    settings = {
        "ctrl_fd": ctrl_fd,
        "code_dir": placed.code,
        "scratch": placed.scratch,
        "limits": limits,
        "seccomp": cfg.seccomp,
        "warm_jobs": cfg.warm_jobs or 0,
        "sys_path": _site_dirs(),
        "private_scratch": isolation.private_scratch,
    }
    if uid_base is not None:
        settings.update(uid_base=uid_base, uid_span=_UID_SPAN_PER_SANDBOX - 1)
    _compile_runtime()
    # The worker is imported, not run as a script, so its byte code comes from the cache as well.
    entry = f"import sys; sys.path.insert(0, {placed.runtime!r}); import worker; worker.main()"
    argv = [*placed.argv, "-I", "-S", "-B", "-c", entry, json.dumps(settings)]
    job_uids = None if uid_base is None else range(uid_base + 1, uid_base + _UID_SPAN_PER_SANDBOX)
    host_dirs = [code_dir, *placed.host_dirs]
    return Launch(argv, env, placed.cwd, (ctrl_fd,), host_dirs, backend=isolation.name, job_uids=job_uids)


@functools.cache
def _compile_runtime() -> None:
    """Byte-compile the runtime beside its sources once per process, so that a sandbox does not
    compile it at every start (skipped where the package is read-only: installers compile it)."""
    if not compileall.compile_dir(str(RUNTIME_DIR), maxlevels=0, quiet=2):
        log.debug(
            "could not byte-compile the sandbox runtime in %s; sandboxes compile it at start", RUNTIME_DIR
        )


def spawn(launch: Launch) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            pass_fds=launch.pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        launch.cleanup()
        raise SandboxUnavailable(
            f"could not start the sandbox ({exc}); check the bwrap and Python installation"
        ) from None
