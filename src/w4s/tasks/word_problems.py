"""Math word problems scored by numeric match: GSM8K, GSM-Hard, MGSM (11 languages), SVAMP."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

from w4s.tasks.base import (
    Sample,
    Score,
    Task,
    check_row,
    corrupt,
    data_number,
    plain_answer,
    protocol_split,
    read_json,
    read_jsonl,
    read_text,
)

MGSM_LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_FRACTION = re.compile(r"^\s*(-?\d+)\s*/\s*(\d+)\s*$")
MAX_ANSWER_CHARS = 100_000  # a stated number, or reasoning that ends with one; longer scores 0
_NO_NUMBER = "no number in the answer"
_NOT_FINITE = "the answer is not a finite number"


def _strip_latex(text: str) -> str:
    boxed = text.rfind("\\boxed{")
    if boxed >= 0:
        depth, start = 0, boxed + len("\\boxed{")
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                if depth == 0:
                    return text[start:i]
                depth -= 1
    return text


def parse_number(answer: Any) -> float | None:
    """The number an answer states: plain numbers, '$1,234.00', '18 dollars', '\\boxed{3/4}',
    '#### 42', 'The answer is 7.'; the last number in free text. None when it states no finite
    number (or is not an answer at all); never raises."""
    return _stated_number(answer)[0]


def _stated_number(answer: Any) -> tuple[float | None, str | None]:
    """(the number, None), or (None, why there is none)."""
    value, problem = plain_answer(answer)
    if problem is not None:
        return None, problem
    while type(value) is list and len(value) == 1:  # depth bounded by plain_answer
        value = value[0]
    if type(value) is int:
        try:
            return _finite(float(value))
        except OverflowError:
            return None, _NOT_FINITE
    if type(value) is float:
        return _finite(value)
    if type(value) is not str:
        return None, _NO_NUMBER
    if len(value) > MAX_ANSWER_CHARS:
        return None, f"the answer is over {MAX_ANSWER_CHARS} characters; return the number"
    return _number_in_text(value)


def _number_in_text(answer: str) -> tuple[float | None, str | None]:
    # Linear time in the answer's length: string operations, and regular expressions without nested
    # quantifiers (findall resumes after each match; _FRACTION is anchored at the start).
    text = _strip_latex(answer).replace("\\frac{", "").replace("}{", "/").replace("\\!", "")
    text = text.replace("{", "").replace("}", "")
    for marker in ("####", "answer is", "Answer:", "answer:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    text = text.replace("$", "").replace("€", "").replace("£", "").replace("%", "")
    fraction = _FRACTION.match(text.strip().rstrip("."))
    if fraction:
        try:
            numerator, denominator = float(fraction.group(1)), float(fraction.group(2))
        except ValueError:
            return None, _NO_NUMBER
        if denominator == 0:
            return None, "the answer divides by zero"
        return _finite(numerator / denominator)
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None, _NO_NUMBER
    try:
        return _finite(float(numbers[-1].replace(",", "")))
    except ValueError:
        return None, _NO_NUMBER


def _finite(value: float) -> tuple[float | None, str | None]:
    return (value, None) if math.isfinite(value) else (None, _NOT_FINITE)


def numbers_match(answer: Any, expected: float) -> Score:
    value, problem = _stated_number(answer)
    if value is None:
        return Score(0.0, problem)
    ok = math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-4)  # float noise only, never rounding
    return Score(1.0 if ok else 0.0)


class _MathTask(Task):
    family = "math"

    def _score(self, sample: Sample, answer: Any) -> Score:
        return numbers_match(answer, float(sample.expected))

    def _load(self, split: str, data_dir: Path) -> list[Sample]:
        return protocol_split(self._all(data_dir), split)

    def _all(self, data_dir: Path) -> list[Sample]:
        raise NotImplementedError


_MATH_DESCRIPTION = (
    "{what} The workflow receives the problem as `task` and must return {{'answer': X}} where X is the "
    "final numeric answer (a number, or a string holding only the number). Scoring is numeric match."
)


class GSM8K(_MathTask):
    name = "gsm8k"
    description = _MATH_DESCRIPTION.format(what="Grade-school math word problems (GSM8K), 2 to 8 steps each.")

    def _all(self, data_dir: Path) -> list[Sample]:
        path = data_dir / "gsm8k" / "test.jsonl"
        samples = []
        for i, (line, row) in enumerate(read_jsonl(path, {"question": str, "answer": str})):
            if "####" not in row["answer"]:
                raise corrupt(path, "has an answer without its final '#### <number>'", f"line {line}")
            expected = data_number(
                row["answer"].rsplit("####", 1)[1].strip(), path, f"line {line}", "final answer"
            )
            samples.append(Sample(f"gsm8k/{i}", row["question"], expected))
        return samples


class GSMHard(_MathTask):
    name = "gsm_hard"
    description = _MATH_DESCRIPTION.format(
        what="GSM-Hard: GSM8K problems with large, unusual numbers; exact arithmetic matters."
    )

    def _all(self, data_dir: Path) -> list[Sample]:
        path = data_dir / "gsm_hard" / "gsmhardv2.jsonl"
        rows = read_jsonl(path, {"input": str, "target": (int, float, str)})
        return [
            Sample(f"gsm_hard/{i}", row["input"], data_number(row["target"], path, f"line {line}", "target"))
            for i, (line, row) in enumerate(rows)
        ]


class MGSM(_MathTask):
    name = "mgsm"
    description = _MATH_DESCRIPTION.format(
        what="MGSM: GSM8K problems translated into 11 languages (bn, de, en, es, fr, ja, ru, sw, te, th, zh)."
    )

    def _all(self, data_dir: Path) -> list[Sample]:
        samples = []
        for lang in MGSM_LANGUAGES:
            path = data_dir / "mgsm" / f"mgsm_{lang}.tsv"
            reader = csv.reader(
                io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE
            )
            try:
                rows = [(reader.line_num, row) for row in reader if row]
            except csv.Error as exc:
                raise corrupt(path, f"is not valid TSV ({exc})", f"line {reader.line_num}") from None
            for i, (line, row) in enumerate(rows):
                if len(row) < 2:
                    raise corrupt(path, "has no answer column (question TAB answer)", f"line {line}")
                expected = data_number(row[1], path, f"line {line}", "answer")
                samples.append(Sample(f"mgsm/{lang}/{i}", row[0], expected, {"lang": lang}))
        return samples


class SVAMP(_MathTask):
    name = "svamp"
    description = _MATH_DESCRIPTION.format(
        what="SVAMP: one-step arithmetic word problems with distracting variations."
    )

    def _all(self, data_dir: Path) -> list[Sample]:
        path = data_dir / "svamp" / "SVAMP.json"
        rows = read_json(path)
        if not isinstance(rows, list) or not rows:
            raise corrupt(path, "does not hold a JSON list of problems")
        fields = {"ID": (str, int), "Body": str, "Question": str, "Answer": (int, float, str)}
        samples = []
        for i, row in enumerate(rows):
            at = f"entry {i + 1}"
            check_row(row, path, at, fields)
            samples.append(
                Sample(
                    f"svamp/{row['ID']}",
                    f"{row['Body'].strip()} {row['Question'].strip()}",
                    data_number(row["Answer"], path, at, "Answer"),
                )
            )
        return samples
