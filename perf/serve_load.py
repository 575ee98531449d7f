"""Load test of `w4s serve`: the latency it adds over the executor's own.

The executor is the scripted OpenAI-compatible server with a fixed latency (200 ms); the served
workflow makes one executor call per request. ``--clients`` concurrent clients (64) send ``--requests``
chat completions (2,000) through one keep-alive connection each, after ``--warmup`` requests (2 per
client) sent by the same clients on the same connections and not measured. The first of those is
every client at once; then the clients fall out of step, as independent users are: client k waits
k/clients of ``--stagger-ms`` (default: the executor's latency) once, so that their requests spread
over one executor round trip instead of arriving together in every round. Reported: throughput,
p50/p99 of the request latency and of its overhead over the executor's latency (the nominal one, and
the p99 the same load gets from the executor directly on this machine), failed requests, the overhead
of the warm-up's first wave (every client at once on a new connection: a burst, reported apart), and
the CPU time per measured request of the server process, its sandboxes (zygotes and jobs), the
executor and the load generator, with how busy that kept the machine's CPUs; and, apart, the same
load with the clients kept in step (``lockstep``: every round of 64 requests one burst, whose last
request waits for the CPU of the 63 before it).
Goal: p99 overhead <= 50 ms, no failed request.

With ``--kill-one``, a second run of the same load SIGKILLs one sandbox job of the server from outside
once that run is under way (a child of a sandbox zygote, found among the server's own descendants),
and reports how many requests failed: the goal is that only that one request is lost.

Usage: python perf/serve_load.py [--requests 2000] [--clients 64] [--latency-ms 200] [--warmup N]
                                [--stagger-ms MS] [--kill-one] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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


class Run:
    """What one load run measured: latencies of the measured requests, and of the warm-up's first wave."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.first_wave: list[float] = []
        self.failed = 0
        self.wall = 0.0
        self.cpu: dict[str, float] = {}


async def load(
    base: str,
    requests: int,
    clients: int,
    model: str = "w4s/gsm8k",
    warmup: int = 0,
    cpu_of=None,
    stagger_s: float = 0.0,
) -> Run:
    """``clients`` keep-alive clients take requests from one queue: the first ``warmup`` are not
    measured (the first ``clients`` of them, sent at once on fresh connections, are kept apart as the
    first wave), the next ``requests`` are. After its first-wave request, client ``k`` waits
    ``k / clients * stagger_s`` once, so that the clients' requests spread over that time instead of
    staying in one burst (0: they stay synchronized). ``cpu_of()``: CPU seconds per process group,
    read when the measured requests start and end."""
    run = Run()
    queue = iter(range(warmup + requests))
    marks: dict[str, float] = {}
    cpu_start: dict[str, float] = {}

    def mark_start() -> None:
        if "start" not in marks:
            marks["start"] = time.perf_counter()
            cpu_start.update(cpu_of() if cpu_of else {})

    async def client(k: int) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(base_url=base, connector=connector) as http:
            for sent, i in enumerate(queue):
                if sent == 1 and stagger_s:
                    await asyncio.sleep(k / clients * stagger_s)
                if i == warmup:
                    mark_start()
                body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
                started = time.perf_counter()
                try:
                    async with http.post("/v1/chat/completions", json=body) as reply:
                        data = await reply.json()
                        ok = reply.status == 200 and bool(data["choices"][0]["message"]["content"])
                except (aiohttp.ClientError, ValueError, KeyError):
                    ok = False
                latency = time.perf_counter() - started
                if i < warmup:
                    if i < clients and ok:
                        run.first_wave.append(latency)
                elif ok:
                    run.latencies.append(latency)
                else:
                    run.failed += 1

    if warmup == 0:
        mark_start()
    await asyncio.gather(*(client(k) for k in range(clients)))
    run.wall = time.perf_counter() - marks["start"]
    if cpu_of:
        run.cpu = {k: v - cpu_start.get(k, 0.0) for k, v in cpu_of().items()}
    return run


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` itself, and of its children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def cpu_by_part(server_pid: int, executor_pid: int) -> dict[str, float]:
    """CPU seconds so far of the server process, its sandboxes (every descendant, and the jobs they
    reaped), the scripted executor, and this load generator."""
    sandbox = 0.0
    stack = list(_children(server_pid))
    while stack:
        pid = stack.pop()
        own, reaped = _cpu_seconds(pid)
        sandbox += own + reaped
        stack += _children(pid)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "server": _cpu_seconds(server_pid)[0],
        "sandbox": sandbox,
        "executor": sum(_cpu_seconds(executor_pid)),
        "load_generator": usage.ru_utime + usage.ru_stime,
    }


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
    parser.add_argument(
        "--warmup", type=int, help="requests sent first and not measured (default: 2 per client)"
    )
    parser.add_argument(
        "--stagger-ms",
        type=float,
        help="after the first wave, client k waits k/clients of this once, spreading the clients' requests "
        "over it (default: the executor latency; 0: every client stays in step, one burst per round)",
    )
    parser.add_argument("--kill-one", action="store_true", help="also a run with one sandbox job killed")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    executor = ScriptedServer({"latency_ms": args.latency_ms, "default": "The answer is 4."})
    warmup = args.warmup if args.warmup is not None else 2 * args.clients
    stagger = (args.latency_ms if args.stagger_ms is None else args.stagger_ms) / 1000
    with tempfile.TemporaryDirectory(prefix="w4s-serve-load-") as tmp:
        workflow = Path(tmp) / "one_call.py"
        workflow.write_text(WORKFLOW)
        proc, base = start_server(executor.url, workflow, args.clients, Path(tmp) / "serve.log")
        try:
            # The executor alone, the same load straight at it: its latency as this machine delivers it.
            direct = asyncio.run(
                load(executor.base, args.requests, args.clients, "executor", warmup, stagger_s=stagger)
            )
            run = asyncio.run(
                load(base, args.requests, args.clients, warmup=warmup, stagger_s=stagger,
                     cpu_of=lambda: cpu_by_part(proc.pid, executor.proc.pid))
            )  # fmt: skip
            # The same load with every client in step (each round of requests one burst): reported apart.
            lockstep = None
            if stagger:
                lockstep = asyncio.run(load(base, args.requests, args.clients, warmup=warmup))
            killed = None
            if args.kill_one:

                async def killed_run():
                    return await asyncio.gather(
                        load(base, args.requests, args.clients, warmup=warmup, stagger_s=stagger),
                        kill_one_job(proc.pid, after_s=2.0),
                    )

                killed_load, victim = asyncio.run(killed_run())
                killed = {
                    "job_killed": victim is not None,
                    "failed": killed_load.failed,
                    "requests": args.requests,
                }
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            executor.stop()
    floor = args.latency_ms / 1000
    latencies = run.latencies
    overhead = [latency - floor for latency in latencies]
    first_wave = [latency - floor for latency in run.first_wave]
    served = max(1, len(latencies))
    figures = {
        "requests": args.requests,
        "clients": args.clients,
        "warmup_requests": warmup,
        "stagger_ms": round(1000 * stagger, 1),
        "executor_latency_ms": args.latency_ms,
        "failed": run.failed,
        "wall_s": round(run.wall, 3),
        "throughput_rps": round(len(latencies) / run.wall, 1),
        "ideal_rps": round(args.clients / floor, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "overhead_p50_ms": round(1000 * percentile(overhead, 0.5), 1),
        "overhead_p99_ms": round(1000 * percentile(overhead, 0.99), 1),
        "overhead_max_ms": round(1000 * max(overhead), 1),
        "overhead_mean_ms": round(1000 * statistics.fmean(overhead), 1),
        "executor_direct_p50_ms": round(1000 * percentile(direct.latencies, 0.5), 1),
        "executor_direct_p99_ms": round(1000 * percentile(direct.latencies, 0.99), 1),
        "overhead_p99_over_direct_p99_ms": round(
            1000 * (percentile(latencies, 0.99) - percentile(direct.latencies, 0.99)), 1
        ),
        # The warm-up's first requests: every client at once, each on a new connection (not measured).
        "first_wave_overhead_p50_ms": round(1000 * percentile(first_wave, 0.5), 1) if first_wave else None,
        "first_wave_overhead_max_ms": round(1000 * max(first_wave), 1) if first_wave else None,
        "lockstep": None
        if lockstep is None
        else {
            "failed": lockstep.failed,
            "overhead_p50_ms": round(1000 * percentile([x - floor for x in lockstep.latencies], 0.5), 1),
            "overhead_p99_ms": round(1000 * percentile([x - floor for x in lockstep.latencies], 0.99), 1),
            "overhead_max_ms": round(1000 * (max(lockstep.latencies) - floor), 1),
        },
        "cpu_ms_per_request": {part: round(1000 * value / served, 2) for part, value in run.cpu.items()},
        "cpu_busy_fraction": round(sum(run.cpu.values()) / run.wall / (os.cpu_count() or 1), 2),
        "goal_met": run.failed == 0 and percentile(overhead, 0.99) <= 0.050,
        "kill_one": killed,
        "cpus": os.cpu_count(),
    }
    sys.stdout.write(json.dumps(figures, indent=1) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
