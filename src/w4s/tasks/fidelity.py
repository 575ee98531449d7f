"""Scorer fidelity on HumanEval: every canonical solution passes, every wrong body fails."""

from __future__ import annotations

import time
from pathlib import Path

from w4s.sandbox.code_scoring import CodeScorer
from w4s.sandbox.config import SandboxConfig
from w4s.tasks.code import HumanEval

WRONG_BODY = "    return None\n"


def humaneval_fidelity(
    data_dir: str | Path | None = None,
    cfg: SandboxConfig | None = None,
    concurrency: int | None = None,
    progress=None,
) -> dict:
    """Score all 164 canonical solutions and the same problems with a wrong body.

    Returns a JSON-ready report; ``ok`` is true only if all canonical pass and all wrong fail.
    """
    task = HumanEval()
    rows = task.load("validation", data_dir) + task.load("test", data_dir)
    report: dict = {"problems": len(rows)}
    with CodeScorer(cfg) as scorer:
        for label, body in (("canonical", None), ("wrong_body", WRONG_BODY)):
            problems = [task.problem(row, row.expected if body is None else body) for row in rows]
            started = time.perf_counter()
            scores = []
            for score in scorer.check_many(problems, concurrency):
                scores.append(score)
                if progress is not None:
                    progress(label)
            report[label] = {
                "passed": sum(s.passed for s in scores),
                "seconds": round(time.perf_counter() - started, 3),
                "unexpected": [{"id": s.id, "error": s.error} for s in scores if s.passed != (body is None)],
            }
    report["ok"] = report["canonical"]["passed"] == len(rows) and report["wrong_body"]["passed"] == 0
    return report
