"""Shared fixtures: benchmark data, sandbox configs and a helper to run workflows for real."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.workflow import CallableHost, WorkflowSandbox

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$W4S_DATA_DIR`` or the ``shared/datasets`` folder beside the checkout."""
    chosen = Path(os.environ.get("W4S_DATA_DIR") or REPO.parent / "shared" / "datasets")
    if not (chosen / "humaneval" / "test.jsonl").is_file():
        pytest.fail(f"benchmark data not found at {chosen}; set W4S_DATA_DIR to the datasets folder")
    return chosen


@pytest.fixture
def cfg() -> SandboxConfig:
    """Tight limits so hostile tests finish fast."""
    return SandboxConfig(timeout_s=3.0, cpu_seconds=10, memory_mb=512, max_processes=32, code_timeout_s=3.0)


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
