"""Turn a validation evaluation into the meta-agent's feedback text.

Only the validation split may be shown to the meta-agent; a test-split result is refused. For code
tasks the hidden tests are never quoted: a failure is reported as "failed the hidden tests" with
the code scorer's fixed outcome word (failed, error (kind), timeout, crashed).
"""

from __future__ import annotations

import random

from w4s.evaluation import EvaluationResult, to_json
from w4s.sandbox.code_scoring import FAILED
from w4s.tasks.base import Sample

MAX_CASES = 10
_CLIP = 1200


def _clip(text: str, limit: int = _CLIP) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more characters]"


def build_feedback(
    result: EvaluationResult, samples: list[Sample], max_cases: int = MAX_CASES, seed: int = 0
) -> str:
    """Accuracy, then up to ``max_cases`` wrong or failed cases drawn with ``seed``."""
    if result.split != "validation":
        raise ValueError(
            "feedback is built from the validation split only; test results never reach the meta-agent"
        )
    by_id = {s.id: s for s in samples}
    run = [o for o in result.samples if not o.not_run]
    correct = sum(o.score for o in run)
    lines = [
        f"Accuracy on the validation set: {100 * result.score:.1f}% ({correct:g} of {len(result.samples)} samples)."
    ]
    if len(run) < len(result.samples):
        lines.append(f"{len(result.samples) - len(run)} samples were not run: {result.budget_exhausted}.")
    wrong = [o for o in run if o.score < 1.0]
    if not wrong:
        lines.append("Every sample was answered correctly.")
        return "\n".join(lines)
    cases = random.Random(seed).sample(wrong, min(max_cases, len(wrong)))
    cases.sort(key=lambda o: result.samples.index(o))
    lines.append(f"Here are {len(cases)} of the {len(wrong)} samples it got wrong or failed:")
    for number, outcome in enumerate(cases, 1):
        sample = by_id.get(outcome.id)
        lines.append(f"\n### Case {number}")
        if sample is not None:
            lines.append(f"Input:\n{_clip(sample.prompt)}")
        if outcome.error and outcome.answer is None:
            lines.append(f"The workflow failed: {_clip(outcome.error, 600)}")
            if outcome.error_line:
                lines.append(f"Failing line of the workflow: `{outcome.error_line}`")
            continue
        lines.append(f"Workflow answer: {_clip(repr(to_json(outcome.answer)), 600)}")
        if sample is None:
            continue
        if "test" in sample.extra:  # code: the hidden tests stay hidden; the scorer's words only
            lines.append(f"The code failed the hidden tests ({outcome.error or FAILED}).")
        else:
            lines.append(f"Expected answer: {_clip(str(sample.expected), 300)}")
            if outcome.score > 0:
                lines.append(f"Partial credit: {outcome.score:.2f}")
    return "\n".join(lines)
