"""kill -9 `w4s optimize` at several points, then --resume: no record lost, none duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ScriptedServer
from tests.optimizer.scenario import script

LIMIT = 4


def lines(run) -> int:
    total = 0
    for name in ("trajectories.jsonl", ".turn-staging.jsonl"):
        path = run / name
        if path.exists():
            total += path.read_bytes().count(b"\n")
    return total


def command(server, tmp_path, resume):
    args = [
        sys.executable,
        "-m",
        "w4s.cli",
        "optimize",
        "--task",
        "gsm8k",
        "--turns",
        "2",
        "--candidates",
        "5",
        "--validation-limit",
        str(LIMIT),
        "--test-limit",
        str(LIMIT),
        "--sandbox-timeout-s",
        "1.5",
        "--out",
        str(tmp_path / "run"),
        "--meta-base-url",
        server.url,
        "--executor-base-url",
        server.url,
        "--meta-cache-path",
        str(tmp_path / "meta.sqlite"),
        "--executor-cache-path",
        str(tmp_path / "executor.sqlite"),
    ]
    return args + (["--resume"] if resume else [])


def test_kill_and_resume_loses_nothing_and_duplicates_nothing(tmp_path, data_dir):
    server = ScriptedServer(script(data_dir, LIMIT))
    env = {**os.environ, "W4S_DATA_DIR": str(data_dir)}
    run = tmp_path / "run"
    kills = 0
    try:
        for target in (1, 4, 6, 9):
            proc = subprocess.Popen(
                command(server, tmp_path, resume=run.exists()),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            while lines(run) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        done = subprocess.run(
            command(server, tmp_path, resume=True), env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        server.stop()
    assert kills >= 3
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    keys = [(r["turn"], r["candidate"]) for r in records]
    assert keys == [(t, c) for t in (1, 2) for c in range(5)]  # no gap, no duplicate, in order
    assert [r["selected"] for r in records].count(True) == 2
    assert [r["valid_score"] for r in records] == [0.5, 0.5, None, None, 0.0, 1.0, 0.0, 0.5, 0.0, 0.5]
    assert [r["reward"] for r in records] == [1.0, 1.0, -0.1, -0.1, -0.1, 1.0, -0.1, 0.0, -0.1, 0.0]
    report = json.loads((run / "report.json").read_text())
    assert report["best"]["valid_score"] == 1.0 and report["best"]["test_score"] == 1.0
