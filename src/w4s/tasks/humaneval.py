"""HumanEval: the AFlow/W4S split (33 validation, 131 test problems), scored by hidden tests."""

from __future__ import annotations

import json
from pathlib import Path

from w4s.errors import ConfigError
from w4s.sandbox.code_scoring import CodeProblem
from w4s.tasks import resolve_data_dir

SPLIT_FILES = {"validation": "validate.jsonl", "test": "test.jsonl"}


def load(split: str, data_dir: str | Path | None = None) -> list[dict]:
    """Rows with ``task_id, prompt, entry_point, canonical_solution, test``, in file order."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown HumanEval split {split!r}; use one of {', '.join(SPLIT_FILES)}")
    path = resolve_data_dir(data_dir) / "humaneval" / SPLIT_FILES[split]
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing; point --data-dir at a folder with humaneval/{SPLIT_FILES[split]}"
        )
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def problem(row: dict, completion: str) -> CodeProblem:
    """The scoring problem for ``completion`` (a function body following the prompt)."""
    return CodeProblem(
        program=row["prompt"] + completion,
        test=row["test"],
        entry_point=row["entry_point"],
        setup=row["prompt"],  # trusted: defines the helpers some tests call (poly, encode_cyclic, ...)
        id=row["task_id"],
    )
