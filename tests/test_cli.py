import json
import subprocess
import sys


def w4s(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_doctor_writes_json(tmp_path):
    done = w4s("sandbox", "doctor", "--json", str(tmp_path / "d.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    assert {c["layer"] for c in report["checks"]} >= {"network", "filesystem (read)", "seccomp", "rlimits"}


def test_verify_humaneval(tmp_path, data_dir):
    done = w4s("sandbox", "verify-humaneval", "--data-dir", str(data_dir), "--json", str(tmp_path / "v.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] and report["canonical"]["passed"] == 164 and report["wrong_body"]["passed"] == 0


def test_bad_input_gives_one_clear_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "W4S_DATA_DIR"}
    cases = [
        (("sandbox", "verify-humaneval"), "pass --data-dir or set W4S_DATA_DIR"),
        (("sandbox", "verify-humaneval", "--data-dir", str(tmp_path / "nope")), "does not exist"),
        (("sandbox", "doctor", "--sandbox-memory-mb", "5"), "memory_mb=5 is invalid: at least 128 MiB"),
        (("sandbox", "doctor", "--config", str(tmp_path / "missing.yaml")), "does not exist"),
    ]
    for args, message in cases:
        done = w4s(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("w4s: error: "), done.stderr


def test_one_config_file_per_command_with_a_section_per_configuration(tmp_path, data_dir):
    import os

    config = tmp_path / "evaluate.yaml"
    config.write_text("evaluation:\n  limit: 0\nsandbox:\n  memory_mb: 256\n")
    done = w4s("evaluate", "cot", "--task", "gsm8k", "--data-dir", str(data_dir), "--config", str(config))
    assert (
        done.returncode == 2 and "EvaluationConfig.limit=0 is invalid" in done.stderr
    )  # the section was read
    config.write_text("evaluation:\n  limit: 2\nsampling:\n  x: 1\n")
    done = w4s("evaluate", "cot", "--task", "gsm8k", "--data-dir", str(data_dir), "--config", str(config))
    assert (
        done.returncode == 2
        and "unknown section(s) sampling; this command reads evaluation, executor, sandbox" in (done.stderr)
    )
    config.write_text("sandbox:\n  memory_mb: 5\n")
    done = w4s("sandbox", "doctor", "--config", str(config), env={**os.environ})
    assert done.returncode == 2 and "memory_mb=5 is invalid" in done.stderr


def test_a_json_output_that_fails_at_the_end_is_one_line(tmp_path, monkeypatch):
    """--json is checked writable before the work; a disk that fills up meanwhile (ENOSPC) is still one
    line (exit 2), not a traceback."""
    import errno
    from pathlib import Path

    import pytest

    from w4s import cli
    from w4s.errors import ConfigError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(ConfigError, match=r"cannot write --json .*out\.json \(No space left on device\)"):
        cli._write_json(str(tmp_path / "out.json"), {"score": 1.0})
