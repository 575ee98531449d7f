"""Load test of `w4s serve`: the latency it adds over the executor's own.

The executor is the scripted OpenAI-compatible server with a fixed latency (200 ms); the served
workflow makes one executor call per request. ``--clients`` concurrent clients (64) send ``--requests``
chat completions (2,000) through one keep-alive connection each. Reported: throughput, p50/p99 of the
request latency and of its overhead over the executor's latency (the nominal one, and the p99 the
same load gets from the executor directly on this machine), and failed requests.
Goal: p99 overhead <= 50 ms, no failed request.

With ``--kill-one``, a second run of the same load SIGKILLs one sandbox job of the server from outside
once that run is under way (a child of a sandbox zygote, found among the server's own descendants),
and reports how many requests failed: the goal is that only that one request is lost.

Usage: python perf/serve_load.py [--requests 2000] [--clients 64] [--latency-ms 200] [--kill-one] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ScriptedServer  # noqa: E402

WORKFLOW = """
def solver(agent, task):
    return agent.call_llm([{"role": "user", "content": task}], temperature=0.0)[0]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(executor_url: str, workflow: Path, clients: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [
        sys.executable, "-m", "w4s.cli", "serve", "--port", str(port), "--no-tracking",
        "--workflow", f"gsm8k={workflow}", "--executor-base-url", executor_url,
        "--executor-concurrency", str(2 * clients), "--max-concurrency", str(2 * clients),
        "--sandbox-warm-jobs", str(min(clients, 64)),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, env={**os.environ, "OPENAI_API_KEY": "sk-load"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"w4s serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"w4s serve was not ready:\n{log.read_text()}")


async def load(
    base: str, requests: int, clients: int, model: str = "w4s/gsm8k"
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    failed = 0
    queue = iter(range(requests))

    async def client() -> None:
        nonlocal failed
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(base_url=base, connector=connector) as http:
            for i in queue:
                body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
                started = time.perf_counter()
                try:
                    async with http.post("/v1/chat/completions", json=body) as reply:
                        data = await reply.json()
                        ok = reply.status == 200 and bool(data["choices"][0]["message"]["content"])
                except (aiohttp.ClientError, ValueError, KeyError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, failed, time.perf_counter() - started


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def sandbox_jobs(server_pid: int) -> list[int]:
    """The server's sandbox jobs: children of a zygote (``import worker``, whose parent is not one),
    among the descendants of the server this script started."""
    jobs, stack = [], [(server_pid, False)]
    while stack:
        pid, parent_is_worker = stack.pop()
        is_worker = "import worker" in _cmdline(pid)
        if is_worker and parent_is_worker:
            jobs.append(pid)
        stack += [(child, is_worker) for child in _children(pid)]
    return jobs


async def kill_one_job(server_pid: int, after_s: float) -> int | None:
    """SIGKILL the newest sandbox job once ``after_s`` has passed; the PID killed, or None if none ran."""
    await asyncio.sleep(after_s)
    jobs = sandbox_jobs(server_pid)
    if not jobs:
        return None
    victim = max(jobs)
    os.kill(victim, signal.SIGKILL)
    return victim


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--kill-one", action="store_true", help="also a run with one sandbox job killed")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    executor = ScriptedServer({"latency_ms": args.latency_ms, "default": "The answer is 4."})
    with tempfile.TemporaryDirectory(prefix="w4s-serve-load-") as tmp:
        workflow = Path(tmp) / "one_call.py"
        workflow.write_text(WORKFLOW)
        proc, base = start_server(executor.url, workflow, args.clients, Path(tmp) / "serve.log")
        try:
            # The executor alone, the same load straight at it: its latency as this machine delivers it.
            direct, _, _ = asyncio.run(load(executor.base, args.requests, args.clients, "executor"))
            asyncio.run(load(base, min(args.clients * 2, args.requests), args.clients))  # warm-up
            latencies, failed, wall = asyncio.run(load(base, args.requests, args.clients))
            killed = None
            if args.kill_one:

                async def killed_run():
                    return await asyncio.gather(
                        load(base, args.requests, args.clients), kill_one_job(proc.pid, after_s=2.0)
                    )

                (_, killed_failed, _), victim = asyncio.run(killed_run())
                killed = {
                    "job_killed": victim is not None,
                    "failed": killed_failed,
                    "requests": args.requests,
                }
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            executor.stop()
    floor = args.latency_ms / 1000
    overhead = [latency - floor for latency in latencies]
    figures = {
        "requests": args.requests,
        "clients": args.clients,
        "executor_latency_ms": args.latency_ms,
        "failed": failed,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 1),
        "ideal_rps": round(args.clients / floor, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "overhead_p50_ms": round(1000 * percentile(overhead, 0.5), 1),
        "overhead_p99_ms": round(1000 * percentile(overhead, 0.99), 1),
        "overhead_mean_ms": round(1000 * statistics.fmean(overhead), 1),
        "executor_direct_p50_ms": round(1000 * percentile(direct, 0.5), 1),
        "executor_direct_p99_ms": round(1000 * percentile(direct, 0.99), 1),
        "overhead_p99_over_direct_p99_ms": round(
            1000 * (percentile(latencies, 0.99) - percentile(direct, 0.99)), 1
        ),
        "goal_met": failed == 0 and percentile(overhead, 0.99) <= 0.050,
        "kill_one": killed,
        "cpus": os.cpu_count(),
    }
    sys.stdout.write(json.dumps(figures, indent=1) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
