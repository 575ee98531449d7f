"""Code generation: HumanEval and MBPP, scored by their hidden tests through the sandbox scorer.

Splits follow AFlow/W4S: the dataset files ``validate.jsonl`` and ``test.jsonl`` (HumanEval 33/131,
MBPP 86/341). The workflow receives the prompt (signature and docstring for HumanEval, description
and signature for MBPP) and returns the code: a whole function definition, or just its body.
Visible tests for ``agent.test_on_public_test`` come from MBPP's ``public_test.jsonl`` and, for
HumanEval, from the examples in the prompt's docstring, never from the hidden tests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from w4s.sandbox.code_scoring import CodeProblem, CodeScorer, expected_names
from w4s.tasks.base import Fields, Sample, Score, Task, corrupt, read_jsonl

SPLIT_FILES = {"validation": "validate.jsonl", "test": "test.jsonl"}
_CODE_DESCRIPTION = (
    "{what} The workflow receives the prompt as `task` and must return {{'answer': code}} where code is the "
    "complete Python function `{{entry_point}}` (helpers and imports included), or only its body. "
    "`agent.test_on_public_test(task, code, entry_point)` checks it on the visible examples. Scoring runs "
    "the hidden tests: pass@1."
)


_HUMANEVAL_FIELDS = {
    "task_id": str,
    "prompt": str,
    "canonical_solution": str,
    "entry_point": str,
    "test": str,
}
_MBPP_FIELDS = {"task_id": (int, str), "prompt": str, "code": str, "entry_point": str, "test": str}


def _read_jsonl(path: Path, fields: Fields, optional: Fields | None = None) -> list[tuple[int, dict]]:
    """(line, row) of a code benchmark file; a damaged file is a one-line ConfigError naming the line."""
    rows = read_jsonl(path, fields, optional)
    for line, row in rows:
        if not row["entry_point"].isidentifier():
            raise corrupt(
                path, f"has entry_point {row['entry_point'][:40]!r}, not a Python name", f"line {line}"
            )
    return rows


def _code_text(answer: Any) -> str | None:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, dict) and isinstance(answer.get("code"), str):
        return answer["code"]
    return None


def strip_fences(code: str) -> str:
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", code, re.DOTALL)
    return blocks[-1] if blocks else code


def defines(code: str, name: str) -> bool:
    # [ \t], not \s: a pattern that may cross newlines backtracks quadratically on long runs of them
    return re.search(rf"^[ \t]*def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


class _CodeTask(Task):
    family = "code"
    score_timeout_s: float = 3.0

    def __init__(self) -> None:
        self._expected: dict[str, tuple[tuple[str, ...], str]] = {}

    def program(self, sample: Sample, code: str) -> str:
        raise NotImplementedError

    def problem(self, sample: Sample, answer: Any) -> CodeProblem | None:
        code = _code_text(answer)
        if code is None or not code.strip():
            return None
        provided, imports = self._expectations(sample)
        setup = sample.extra.get("setup", "")
        return CodeProblem(
            program=self.program(sample, strip_fences(code)),
            test=sample.extra["test"],
            entry_point=sample.extra["entry_point"],
            setup=f"{setup}\n{imports}" if imports else setup,
            id=sample.id,
            timeout_s=self.score_timeout_s,
            provided=provided,
        )

    def _expectations(self, sample: Sample) -> tuple[tuple[str, ...], str]:
        """What the hidden test takes from a program, from the reference solution (trusted data)."""
        if sample.id not in self._expected:
            self._expected[sample.id] = expected_names(
                sample.extra["test"],
                sample.extra.get("setup", ""),
                self.program(sample, sample.expected),
                sample.extra["entry_point"],
            )
        return self._expected[sample.id]

    def _score(self, sample: Sample, answer: Any, scorer: CodeScorer | None = None) -> Score:
        problem = self.problem(sample, answer)
        if problem is None:
            return Score(0.0, "the answer holds no code")
        if scorer is None:  # called directly: a scorer for this answer alone, closed after it
            with CodeScorer() as own:
                result = own.check(problem)
        else:
            result = scorer.check(problem)
        return Score(1.0 if result.passed else 0.0, result.error)


class HumanEval(_CodeTask):
    name = "humaneval"
    description = _CODE_DESCRIPTION.format(
        what="HumanEval: write a Python function from its signature and docstring."
    )

    def _load(self, split: str, data_dir: Path) -> list[Sample]:
        rows = _read_jsonl(data_dir / "humaneval" / SPLIT_FILES[split], _HUMANEVAL_FIELDS)
        return [
            Sample(
                row["task_id"],
                row["prompt"],
                row["canonical_solution"],
                {
                    "entry_point": row["entry_point"],
                    "test": row["test"],
                    "setup": row["prompt"],
                    "prompt": row["prompt"],
                },
            )
            for _, row in rows
        ]

    def program(self, sample: Sample, code: str) -> str:
        # The trusted prompt comes first (imports, helpers); a full definition then replaces its stub.
        if defines(code, sample.extra["entry_point"]):
            return sample.extra["prompt"] + "\n    pass\n\n" + code
        return sample.extra["prompt"] + code

    def public_tests(self, sample: Sample) -> list[str]:
        return docstring_tests(sample.extra["prompt"], sample.extra["entry_point"])


class MBPP(_CodeTask):
    name = "mbpp"
    score_timeout_s = 10.0  # a few reference solutions need several seconds
    description = _CODE_DESCRIPTION.format(
        what="MBPP: write a short Python function from a one-line description."
    )

    def _load(self, split: str, data_dir: Path) -> list[Sample]:
        folder = data_dir / "mbpp"
        optional: Fields = {"test_imports": list}
        loaded = {
            name: _read_jsonl(folder / name, _MBPP_FIELDS, optional)
            for name in ("test.jsonl", "validate.jsonl")
        }
        for name, named_rows in loaded.items():
            for line, row in named_rows:
                if not all(isinstance(item, str) for item in row.get("test_imports") or []):
                    raise corrupt(
                        folder / name, "has a test_imports entry that is not a string", f"line {line}"
                    )
        rows = loaded[SPLIT_FILES[split]]
        # public_test.jsonl is line-aligned with test.jsonl followed by validate.jsonl.
        aligned = [row for _, row in loaded["test.jsonl"] + loaded["validate.jsonl"]]
        public_path = folder / "public_test.jsonl"
        public_rows = _read_jsonl(public_path, {"entry_point": str, "test": list})
        if len(public_rows) != len(aligned):
            raise corrupt(
                public_path,
                f"has {len(public_rows)} rows, not one per row of test.jsonl + validate.jsonl ({len(aligned)})",
            )
        for (line, p), r in zip(public_rows, aligned, strict=True):
            if p["entry_point"] != r["entry_point"]:
                raise corrupt(
                    public_path,
                    f"is for {p['entry_point']!r}, but that row of test.jsonl + validate.jsonl is for "
                    f"{r['entry_point']!r}: the files do not line up",
                    f"line {line}",
                )
            if not all(isinstance(test, str) for test in p["test"]):
                raise corrupt(public_path, "has a test that is not a string", f"line {line}")
        public = {r["task_id"]: p["test"] for (_, p), r in zip(public_rows, aligned, strict=True)}
        return [
            Sample(
                f"mbpp/{row['task_id']}",
                row["prompt"],
                row["code"],
                {
                    "entry_point": row["entry_point"],
                    "test": row["test"],
                    "setup": "\n".join(row.get("test_imports") or []),
                    "prompt": row["prompt"],
                    "public": list(public[row["task_id"]]),
                },
            )
            for _, row in rows
        ]

    def program(self, sample: Sample, code: str) -> str:
        if defines(code, sample.extra["entry_point"]):
            return sample.extra["setup"] + "\n" + code
        signature = sample.extra["prompt"].rsplit("\n", 1)[-1].rstrip()
        return sample.extra["setup"] + "\n" + signature + "\n" + code

    def public_tests(self, sample: Sample) -> list[str]:
        return list(sample.extra["public"])


def docstring_tests(prompt: str, entry_point: str) -> list[str]:
    """Visible tests from a HumanEval docstring: ``>>> f(x)`` followed by its output, or lines of the
    form ``f(x) == y`` / ``f(x) ➞ y`` / ``f(x) => y``. Only lines that parse as Python are kept."""
    tests: list[str] = []
    lines = prompt.splitlines()
    call = re.compile(rf"{re.escape(entry_point)}\s*\(")
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(">>>") and call.search(text):
            expression = text[3:].strip()
            expected = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if expected and not expected.startswith(">>>"):
                tests.append(f"assert {expression} == {expected}")
            continue
        match = re.match(
            rf"^({re.escape(entry_point)}\s*\(.*\))\s*(?:==|➞|=>|->|should return)\s*(.+?)\.?$", text
        )
        if match:
            tests.append(f"assert {match.group(1)} == {match.group(2)}")
    valid = []
    for test in tests:
        test = call.sub("candidate(", test)
        if _literal_test(test) and test not in valid:
            valid.append(test)
    return valid


def _literal_test(test: str) -> bool:
    """``assert candidate(<literals>) == <literal>``: anything else is prose that looked like code."""
    try:
        node = ast.parse(test).body[0]
    except (SyntaxError, IndexError):
        return False
    if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
        return False
    call, expected = node.test.left, node.test.comparators[0]
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "candidate":
        return False
    try:
        for part in [*call.args, *(k.value for k in call.keywords), expected]:
            ast.literal_eval(part)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True
