"""The README's main job itself: the command it gives (after setup) runs the rlao-training pipeline
with kfp.local on the embedded defaults, SmolLM2-135M as meta-agent and executor, and ends with a
registered meta-agent and workflow in the embedded MLflow."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO
from w4s.tracking import registry as reg
from w4s.tracking.registry import Registry

pytestmark = pytest.mark.slow


def readme_job() -> list[str]:
    """The `w4s pipeline run ...` part of the README's first command, as arguments."""
    line = next(
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if "w4s pipeline run rlao-training" in line
    )
    words = shlex.split(line[line.index(".venv/bin/w4s pipeline run") :])
    return words[1:]  # after the w4s executable


def test_the_readme_main_job(model_cache, data_dir, tmp_path):
    args = readme_job()
    assert args[:4] == ["pipeline", "run", "rlao-training", "--local"]
    root, summary = tmp_path / "rlao-training", tmp_path / "rlao-training.json"
    args[args.index("--root") + 1] = str(root)  # the README's relative paths, under this test's folder
    args[args.index("--json") + 1] = str(summary)
    env = {**os.environ, "W4S_HOME": str(tmp_path / "home"), "W4S_DATA_DIR": str(data_dir)}
    if model_cache:
        env["W4S_CACHE_DIR"] = model_cache
    done = subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(summary.read_text())
    registry = Registry(result["mlflow"]["tracking_uri"])
    meta = registry.version(f"{reg.META_AGENT}@1")
    workflow = registry.version("w4s-workflow-gsm8k@1")
    assert workflow.tags[reg.TAG_META_VERSION] == str(meta.version)
    assert (
        "MLflow:" in done.stdout and "w4s-meta-agent" in done.stdout and "w4s-workflow-gsm8k" in done.stdout
    )
    # progress in plain lines: the stages and the local model's tokens/s
    logs = done.stdout + done.stderr
    assert "collect gsm8k episode 0" in logs and "tokens/s" in logs and "compute_rewards:" in logs
