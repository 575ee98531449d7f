"""A scripted meta-agent and executor for optimizer tests (both served by the scripted server)."""

from __future__ import annotations

import re

from w4s.tasks import get_task


def block(code: str) -> str:
    return f"Analysis: let me try this.\n```python\n{code.strip()}\n```\n"


GOOD = "def solver(agent, task):\n    return agent.extract_answer_str(agent.call_llm(task)[0])\n"
HALF = (
    "def solver(agent, task):\n    # HALF\n    if len(task) % 2:\n        return 'none'\n"
    "    return agent.extract_answer_str(agent.call_llm(task)[0])\n"
)
SYNTAX = "def solver(agent, task)\n    return 'SYNTAX_MARKER'\n"
RUNTIME = "def solver(agent, task):\n    return undefined_name_RUNTIME_MARKER\n"
LOOP = "def solver(agent, task):\n    # LOOP_MARKER\n    while True:\n        pass\n"
WRONG = "def solver(agent, task):\n    return '0'\n"

TURN_1 = [block(HALF), block(SYNTAX), "I would rather not write code today.", block(LOOP), block(WRONG)]
TURN_2 = [block(GOOD), block(WRONG), block(HALF), block(WRONG), block(RUNTIME)]


def script(data_dir, limit: int) -> dict:
    """Meta rules keyed on the prompt kinds; executor answers only the bare question correctly."""
    from w4s.evaluation import select

    task = get_task("gsm8k")
    samples = select(task.load("validation", data_dir), limit, 0) + select(
        task.load("test", data_dir), limit, 0
    )
    table = {s.prompt: f"So the answer is {s.expected:g}." for s in samples}
    rules = [
        {"match": re.escape("# Result of your last workflow"), "replies": TURN_2},
        {"match": re.escape("# Example workflows"), "replies": TURN_1},
        {"match": "SYNTAX_MARKER", "reply": block(RUNTIME)},
        {"match": "RUNTIME_MARKER", "reply": block(HALF)},
        {"match": "LOOP_MARKER", "reply": block(LOOP)},
        {"match": "no ```python block", "reply": "Still no code, sorry."},
    ]
    return {"table": table, "rules": rules, "default": "I am not sure."}
