"""Real trajectory records, as `w4s optimize` writes them: the scripted meta-agent and executor, gsm8k,
2 turns x 2 candidates. Their prompts are ~6k characters (~2k tokens: system prompt, task, example
workflows, feedback), as every real meta-agent prompt is. Used by the memory tests and perf/train_memory.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ScriptedServer
from tests.optimizer.scenario import script


def optimize_records(out: Path, data_dir: Path) -> Path:
    """Run `w4s optimize` into ``out/run``; the path of its trajectories.jsonl (4 records)."""
    server = ScriptedServer(script(data_dir, 4))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "w4s.cli", "optimize", "--task", "gsm8k", "--out", str(out / "run")]
            + ["--data-dir", str(data_dir), "--turns", "2", "--candidates", "2"]
            + ["--validation-limit", "4", "--test-limit", "4", "--sandbox-timeout-s", "1.5"]
            + ["--meta-base-url", server.url, "--executor-base-url", server.url, "--no-tracking"]
            + ["--meta-cache-path", "off", "--executor-cache-path", "off"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    if done.returncode != 0:
        raise RuntimeError(f"w4s optimize failed: {done.stderr[-2000:]}")
    return out / "run" / "trajectories.jsonl"
