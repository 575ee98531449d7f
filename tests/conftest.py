"""Shared fixtures: benchmark data, sandbox configs and a helper to run workflows for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.runner import CallableHost
from w4s.sandbox.workflow import WorkflowSandbox

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def w4s_home(tmp_path_factory):
    """Every run the tests make (in process and through the CLI) is recorded in an embedded MLflow store
    of their own, never the user's ~/.w4s or whatever MLFLOW_TRACKING_URI names."""
    home = tmp_path_factory.mktemp("w4s-home")
    saved = {key: os.environ.get(key) for key in ("W4S_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    os.environ["W4S_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$W4S_DATA_DIR`` or the ``shared/datasets`` folder beside the checkout."""
    chosen = Path(os.environ.get("W4S_DATA_DIR") or REPO.parent / "shared" / "datasets")
    if not (chosen / "humaneval" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found at {chosen}; set W4S_DATA_DIR to the datasets folder")
    return chosen


@pytest.fixture
def cfg() -> SandboxConfig:
    """Tight limits so hostile tests finish fast; two jobs forked ahead, as in evaluations."""
    return SandboxConfig(
        timeout_s=3.0, cpu_seconds=10, memory_mb=512, max_processes=32, code_timeout_s=3.0, warm_jobs=2
    )


def echo_host(prefix: str = "echo:") -> CallableHost:
    return CallableHost(lambda request: [prefix + request["messages"][-1]["content"]] * request["n"])


def run(source: str, tasks, cfg: SandboxConfig, host=None, concurrency: int = 4):
    """Run ``source`` on ``tasks`` in a real sandbox; returns the SampleResults in order."""

    async def main():
        async with WorkflowSandbox(source, host or echo_host(), cfg) as box:
            return await box.run_many(tasks, concurrency=concurrency)

    return asyncio.run(main())


def run_one(source: str, cfg: SandboxConfig, task="task", host=None):
    return run(source, [task], cfg, host)[0]


class ScriptedServer:
    """The scripted OpenAI-compatible server (tests/servers/openai_scripted.py) in its own process."""

    def __init__(self, script: dict | None = None, port: int = 0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.openai_scripted", "--port", str(port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError("the scripted server did not start")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1"
        self.script(**(script or {}))

    def script(self, **script) -> None:
        request = urllib.request.Request(
            f"{self.base}/_script", data=json.dumps(script).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=10).read()

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(f"{self.base}/_stats", timeout=10).read())

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def executor_server():
    server = ScriptedServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """The pulled SmolLM2-135M (for the slow tests): the user's cache when it is there, else a fresh pull into a temp cache."""
    from w4s.llm import models

    if (models.model_dir("smollm2-135m") / "config.json").is_file():
        return os.environ.get("W4S_CACHE_DIR")
    cache = str(tmp_path_factory.mktemp("w4s-cache"))
    done = subprocess.run(
        [sys.executable, "-m", "w4s.cli", "models", "pull", "smollm2-135m"],
        env={**os.environ, "W4S_CACHE_DIR": cache},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return cache
