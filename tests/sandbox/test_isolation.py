import os
import shutil
import subprocess
from pathlib import Path

import pytest

from w4s.sandbox import doctor, isolation
from w4s.sandbox.config import SandboxConfig


def test_every_layer_holds_with_bubblewrap():
    if isolation.backend(SandboxConfig()) != "bwrap":
        pytest.fail("bubblewrap is unusable here; .ci/run installs it (apt-get install bubblewrap)")
    checks = {check.layer: check for check in doctor.diagnose(SandboxConfig())}
    failing = {name: check.detail for name, check in checks.items() if not check.ok}
    if os.geteuid() != 0:
        failing.pop("job isolation", None)
    assert failing == {}


def test_required_bwrap_fails_clearly_when_missing(monkeypatch):
    from w4s.errors import SandboxUnavailable

    monkeypatch.setattr(isolation, "_bwrap_probe", lambda: (False, "bubblewrap (bwrap) is not installed", ()))
    with pytest.raises(SandboxUnavailable, match="isolation=bwrap was required but bubblewrap"):
        isolation.backend(SandboxConfig(isolation="bwrap"))


def test_degraded_isolation_is_refused_unless_allowed(monkeypatch, caplog):
    from w4s.errors import SandboxUnavailable

    monkeypatch.setattr(isolation, "_bwrap_probe", lambda: (False, "bwrap cannot create namespaces here", ()))
    isolation._warn_degraded.cache_clear()
    for cfg in (SandboxConfig(), SandboxConfig(isolation="process")):
        with pytest.raises(SandboxUnavailable, match="cannot give full isolation .*--allow-degraded-sandbox"):
            isolation.backend(cfg)
    assert isolation.backend(SandboxConfig(allow_degraded=True)) == "process"
    assert "SANDBOX DEGRADED: bwrap cannot create namespaces here" in caplog.text


@pytest.mark.parametrize(
    "fields",
    [
        {"allow_degraded": "no"},
        {"allow_degraded": "false", "isolation": "process"},
        {"allow_degraded": 1},
        {"seccomp": 0},
    ],
)
def test_only_a_real_true_consents_to_a_degraded_sandbox(monkeypatch, fields):
    """A config built in Python is not parsed from flags: ``allow_degraded="no"`` (a string, so
    truthy) must not read as consent, nor a falsy non-bool ``seccomp`` turn the filter off quietly."""
    from w4s.errors import ConfigError, SandboxUnavailable

    monkeypatch.setattr(isolation, "_bwrap_probe", lambda: (False, "bwrap cannot create namespaces here", ()))
    with pytest.raises((ConfigError, SandboxUnavailable)):
        isolation.backend(SandboxConfig(**fields))


def test_a_sandbox_that_starts_without_a_layer_is_refused_unless_allowed():
    from w4s.errors import SandboxUnavailable
    from w4s.sandbox.host import Sandbox

    with pytest.raises(SandboxUnavailable, match=r"seccomp filter was turned off.*--allow-degraded-sandbox"):
        Sandbox(SandboxConfig(seccomp=False))
    # Layers that fail only once the sandbox runs (the kernel refuses the filter or the mounts) are
    # found from what the zygote reports, and refused the same way.
    assert isolation.degraded_layers("bwrap", {"seccomp": "on", "private_scratch": "on"}) == []
    assert isolation.degraded_layers(
        "bwrap", {"seccomp": "failed: EINVAL", "private_scratch": "failed: EPERM"}
    ) == [
        "seccomp filter (failed: EINVAL)",
        "private scratch per job (failed: EPERM)",
    ]
    with Sandbox(SandboxConfig(seccomp=False, allow_degraded=True)) as box:
        assert box.isolation["degraded"] == ["seccomp filter (off)"]
    with Sandbox(SandboxConfig()) as box:
        assert box.isolation == {
            "backend": "bwrap",
            "seccomp": "on",
            "private_scratch": "on",
            "job_uids": os.geteuid() == 0,
            "degraded": [],
        }


PROBE = Path(__file__).with_name("nonroot_probe.py")


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user"
)
@pytest.mark.parametrize("isolation_mode", ["auto", "process"])
def test_works_as_an_unprivileged_user(isolation_mode):
    """As in a Kubernetes pod: no root, no capabilities."""
    import json
    import site

    import w4s

    python = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else None
    paths = [os.path.dirname(os.path.dirname(w4s.__file__)), *site.getsitepackages()]
    readable = all(isolation._world_accessible(p) for p in [*paths, str(PROBE)])
    if python is None or not readable:
        pytest.skip("no interpreter and source tree readable by an unprivileged user on this machine")
    done = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            python,
            "-I",
            str(PROBE),
            json.dumps(paths),
            isolation_mode,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    layers = report["layers"]
    assert report["results"] == [
        ["ok42", None],
        ["left", None],
        [None, "TimeoutError"],
        ["ok42", None],
        [[], None],  # no process it shares a uid with (host, zygote, waiting jobs) is open to it
    ] + (
        [
            ["marked", None],
            [[], None],  # a private scratch per job
            [[-1, 1, -1, 1, "0000000000000000", "0000000000000000"], None],  # and no capability left
        ]
        if isolation_mode == "auto"
        else []
    )
    assert report["left"] == []  # the daemon and the hung sample were killed with their jobs
    assert layers["network"] and layers["environment"] and layers["privileges"] and layers["seccomp"]
    if isolation_mode == "auto" and layers["backend"]:
        assert layers["processes"] and layers["filesystem (read)"] and layers["filesystem (write)"]
