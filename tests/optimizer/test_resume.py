"""kill -9 `w4s optimize` at several points, then --resume: no record lost, none duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

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


def optimize_cli(server, tmp_path, *more, env=None, resume=False):
    args = command(server, tmp_path, resume)
    if more:
        args += list(more)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def error_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("w4s: ")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


@pytest.fixture
def finished_run(tmp_path, data_dir):
    server = ScriptedServer(script(data_dir, LIMIT))
    env = {**os.environ, "W4S_DATA_DIR": str(data_dir)}
    done = optimize_cli(server, tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    yield server, env
    server.stop()


def test_one_damaged_line_is_set_aside_and_reported_never_deleted(finished_run, tmp_path):
    server, env = finished_run
    run = tmp_path / "run"
    path = run / "trajectories.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = lines[1].replace(b'"candidate"', b'"candid\xffte"', 1)  # one bad byte in record 2 of 10
    path.write_bytes(lines[0] + damaged + b"".join(lines[2:]))
    done = optimize_cli(server, tmp_path, env=env, resume=True)
    assert done.returncode == 2
    assert (
        "1 damaged line(s) (2), moved to" in error_line(done) and "trajectories.jsonl.damaged" in done.stderr
    )
    aside = [json.loads(line) for line in (run / "trajectories.jsonl.damaged").read_text().splitlines()]
    assert [entry["line"] for entry in aside] == [2] and "candid" in aside[0]["text"]
    assert path.read_bytes() == lines[0] + b"".join(lines[2:])  # the nine good records, untouched
    again = optimize_cli(server, tmp_path, env=env, resume=True)
    assert again.returncode == 0, again.stderr[-2000:]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 9  # the damaged candidate is kept aside, not invented again


def test_a_commit_cut_short_is_completed_from_the_staged_turn(finished_run, tmp_path, data_dir):
    """A kill while a turn is appended leaves a torn last line and the turn's staging file: the torn
    line is the only thing dropped, and the resume writes the turn's missing records unchanged."""
    server, env = finished_run
    run = tmp_path / "run"
    path = run / "trajectories.jsonl"
    whole = path.read_bytes()
    records = [json.loads(line) for line in whole.splitlines()]
    staged = [{k: v for k, v in r.items() if k != "best_after"} | {"selected": False} for r in records[5:]]
    (run / ".turn-staging.jsonl").write_text("".join(json.dumps(r) + "\n" for r in staged))
    lines = whole.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:8]) + lines[8][:40])  # record 9 torn, record 10 never written
    server.script(**script(data_dir, LIMIT))  # counters from zero
    done = optimize_cli(server, tmp_path, env=env, resume=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line) for line in path.read_bytes().splitlines()] == records
    assert server.stats()["requests"] == 0  # nothing was asked or evaluated again (the cache has the test)


@pytest.mark.parametrize(
    ("flags", "conflict"),
    [
        (["--task", "mbpp"], "task='gsm8k'"),
        (["--seed", "7"], "seed=0"),
        (["--executor-model", "another-model"], "executor=['gpt-4o-mini', None]"),
        (["--executor-model-revision", "v2"], "executor=['gpt-4o-mini', None]"),
    ],
)
def test_a_resume_that_asks_for_another_run_is_refused(finished_run, tmp_path, flags, conflict):
    server, env = finished_run
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    done = optimize_cli(server, tmp_path, *flags, env=env, resume=True)
    assert (
        done.returncode == 2
        and f"cannot resume {tmp_path / 'run'}: it is a run with {conflict}" in error_line(done)
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_the_meta_agent_is_asked_again_by_each_episode_and_seeded_per_turn(tmp_path, data_dir):
    """No meta-agent cache unless asked for: a second episode gets fresh candidates, and every turn
    (and repair) request carries its own seed."""
    server = ScriptedServer(script(data_dir, LIMIT))
    env = {**os.environ, "W4S_DATA_DIR": str(data_dir), "W4S_CACHE_DIR": str(tmp_path / "cache")}
    try:
        seeds = []
        for episode in ("0", "1"):
            args = [a for a in command(server, tmp_path / f"episode{episode}", False) if a]
            at = args.index("--meta-cache-path")
            del args[at : at + 2]  # the user names no meta-agent cache
            args += ["--episode", episode, "--meta-model", "meta", "--executor-model", "exec"]
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            stats = server.stats()
            assert stats["by_model"]["meta"] >= 2  # asked, not replayed from the first episode
            seeds.append([seed for model, seed in stats["seeds"] if model == "meta"])
            server.script(**script(data_dir, LIMIT))  # resets the counters
    finally:
        server.stop()
    assert all(len(set(episode)) == len(episode) for episode in seeds)  # a seed per turn and repair
    assert not set(seeds[0]) & set(seeds[1])  # and per episode


def test_damaged_baselines_and_an_unwritable_out_are_one_line(finished_run, tmp_path):
    server, env = finished_run
    (tmp_path / "run" / "baselines.json").write_text('{"cot": {"valid_score": "high"')
    done = optimize_cli(server, tmp_path, env=env, resume=True)
    assert done.returncode == 2 and "baselines.json is damaged" in error_line(done)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = command(server, tmp_path, False)
    args[args.index("--out") + 1] = str(blocker / "run")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "cannot write --out" in error_line(done)
