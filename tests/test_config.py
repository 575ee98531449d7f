import ast
import dataclasses
import importlib
import json
from pathlib import Path

import pytest

import w4s
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


def test_every_config_round_trips_with_its_schema_version():
    """``to_dict`` writes ``version`` for the schema: a field of that name would overwrite it, and
    ``from_dict`` would read the field's value as the schema version (PromotionConfig had one)."""
    root = Path(w4s.__file__).parent
    for path in root.rglob("*.py"):  # every module that declares a Config, found in its source
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(
            isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "Config" for b in node.bases)
            for node in tree.body
        ):
            importlib.import_module(".".join(("w4s", *path.relative_to(root).with_suffix("").parts)))
    configs = set()
    pending = [config.Config]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            configs.add(sub)
    assert {"EvaluationConfig", "PromotionConfig", "TrackingConfig"} <= {c.__name__ for c in configs}
    for cls in configs:
        assert "version" not in {f.name for f in dataclasses.fields(cls)}, cls.__name__
        data = json.loads(json.dumps(cls().to_dict()))
        assert data["version"] == cls.VERSION and cls.from_dict(data) == cls(), cls.__name__
