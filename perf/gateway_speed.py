"""Perf suite for the executor path: sandboxed workflow + gateway + real HTTP, against the ideal.

1. Fixed 200 ms executor latency, a workflow making 3 sequential calls per sample, 128 samples at
   concurrency 32: wall time against the ideal ceil(128/32) x 3 x 0.2 s = 2.4 s (target <= 1.15x).
2. Zero latency, a one-call workflow: samples per second (target >= 150).

The executor is the scripted OpenAI-compatible server in its own process; the cache is off.
Usage: python perf/gateway_speed.py [--samples 128] [--concurrency 32] [--repeats 3]
Writes perf/results/gateway_speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.conftest import ScriptedServer  # noqa: E402

from w4s.cli import settle_heap  # noqa: E402
from w4s.evaluation import EvaluationConfig, evaluate  # noqa: E402
from w4s.llm.config import EndpointConfig  # noqa: E402
from w4s.llm.gateway import Gateway  # noqa: E402
from w4s.sandbox.config import SandboxConfig  # noqa: E402
from w4s.tasks import get_task  # noqa: E402

THREE_CALLS = """
def solver(agent, task):
    a = agent.call_llm(task)[0]
    b = agent.call_llm(a)[0]
    return agent.call_llm(b)[0]
"""
ONE_CALL = "def solver(agent, task):\n    return agent.call_llm(task)[0]\n"


async def timed(source: str, server: ScriptedServer, samples, concurrency: int) -> float:
    gateway = Gateway(EndpointConfig(base_url=server.url, cache_path="off", concurrency=max(32, concurrency)))
    try:
        started = time.perf_counter()
        result = await evaluate(
            source,
            get_task("gsm8k"),
            gateway,
            EvaluationConfig(concurrency=concurrency),
            samples=samples,
            sandbox=SandboxConfig(),
        )
        elapsed = time.perf_counter() - started
        assert all(s.error is None or s.error == "no number in the answer" for s in result.samples)
        return elapsed
    finally:
        await gateway.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("W4S_DATA_DIR") or str(HERE.parent.parent / "shared" / "datasets"),
    )
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-samples", type=int, default=800)
    args = parser.parse_args()
    task = get_task("gsm8k")
    pool = task.load("test", args.data_dir) + task.load("validation", args.data_dir)
    server = ScriptedServer({"latency_ms": 200, "default": "echo"})
    try:
        latency_runs = []
        for _ in range(args.repeats):
            settle_heap()  # as `w4s evaluate` does before its run
            latency_runs.append(
                asyncio.run(timed(THREE_CALLS, server, pool[: args.samples], args.concurrency))
            )
        server.script(latency_ms=0, default="echo")
        throughput_runs = []
        for _ in range(args.repeats):
            settle_heap()
            seconds = asyncio.run(timed(ONE_CALL, server, pool[: args.throughput_samples], 32))
            throughput_runs.append(args.throughput_samples / seconds)
    finally:
        server.stop()
    ideal = math.ceil(args.samples / args.concurrency) * 3 * 0.2
    latency = statistics.median(latency_runs)
    throughput = statistics.median(throughput_runs)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "three_calls_200ms": {
            "samples": args.samples,
            "concurrency": args.concurrency,
            "ideal_seconds": ideal,
            "seconds": [round(x, 3) for x in latency_runs],
            "ratio_to_ideal": round(latency / ideal, 3),
            "target": "<= 1.15",
        },
        "one_call_zero_latency": {
            "samples": args.throughput_samples,
            "samples_per_second": [round(x, 1) for x in throughput_runs],
            "median": round(throughput, 1),
            "target": ">= 150",
        },
    }
    out = HERE / "results" / "gateway_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"3 sequential calls x {args.samples} samples, 200 ms latency, concurrency {args.concurrency}: "
        f"{latency:.3f} s vs ideal {ideal:.2f} s -> {latency / ideal:.3f}x (target <= 1.15)"
    )
    print(f"1 call per sample, zero latency: {throughput:.1f} samples/s (target >= 150)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
