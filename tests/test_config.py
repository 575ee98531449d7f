import pytest

from w4s import config
from w4s.errors import ConfigError
from w4s.sandbox.config import SandboxConfig


def test_defaults_validate():
    cfg = config.load(SandboxConfig)
    assert cfg.isolation == "auto" and cfg.timeout_s == 60.0


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("timeout_s: 5\nmemory_mb: 256\n")
    cfg = config.load(SandboxConfig, path, {"memory_mb": 300, "cpu_seconds": None})
    assert cfg.timeout_s == 5.0 and isinstance(cfg.timeout_s, float)
    assert cfg.memory_mb == 300 and cfg.cpu_seconds == 60


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"isolation": "docker"}, "use auto, bwrap or process"),
        ({"memory_mb": 5}, "at least 128 MiB"),
        ({"timeout_s": -1}, "timeout_s=-1.0 is invalid: must be a finite number greater than 0"),
        ({"timeout_s": "soon"}, "timeout_s must be float"),
        ({"seccomp": 1}, "seccomp must be bool"),
        ({"memroy_mb": 5}, "unknown SandboxConfig field(s) memroy_mb"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load(SandboxConfig, None, overrides)


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(SandboxConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config.load(SandboxConfig, bad)
