"""DROP: reading comprehension with discrete reasoning, scored by token F1 with number normalisation.

The metric follows the official DROP evaluation as used by OpenAI simple-evals (``drop_eval.py``):
answers are normalised (lower case, no punctuation or articles, numbers as floats), split into
bags of tokens per span, spans are aligned one-to-one to maximise F1, and a span whose gold side
holds numbers scores only if a number matches. A reference may list alternatives separated by
``|``; the best one counts.

An answer is a string, a number, or a list of them (one per span); anything else, or an answer over
``MAX_ANSWER_CHARS`` characters (a DROP answer is a short span), scores 0. Scoring is linear in the
answer's size: alignment is exhaustive only for a few spans, greedy beyond.
"""

from __future__ import annotations

import itertools
import re
import string
from pathlib import Path
from typing import Any

from w4s.tasks.base import Sample, Score, Task, plain_answer, protocol_split, read_gzip_text, read_jsonl

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
MAX_ANSWER_CHARS = 100_000  # characters over all spans, plus one per span


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalise_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):
        token = str(float(token))
    token = _ARTICLES.sub(" ", token)
    return " ".join(token.split())


def normalise(text: str) -> str:
    done: dict[str, str] = {}  # a repeated token is normalised once
    parts = []
    for token in re.split(" |-", text):
        part = done.get(token)
        if part is None:
            part = done[token] = _normalise_token(token)
        if part.strip():
            parts.append(part)
    return " ".join(parts).strip()


def _bags(answer: str | list | tuple) -> tuple[list[str], list[set[str]]]:
    spans = list(answer) if isinstance(answer, list | tuple) else [answer]
    normalised = [normalise(str(span)) for span in spans]
    return normalised, [set(span.split()) for span in normalised]


def answer_spans(answer: Any) -> tuple[list[str] | None, str | None]:
    """(the spans of an answer as text, None), or (None, why it is not a DROP answer)."""
    value, problem = plain_answer(answer)
    if problem is not None:
        return None, problem
    if value is None:
        return None, "no answer"
    spans = []
    for item in value if type(value) is list else [value]:
        if type(item) is str:
            spans.append(item)
        elif type(item) is float or (type(item) is int and item.bit_length() < 10_000):
            spans.append(str(item))
        else:
            return None, "a DROP answer is a string, a number, or a list of them (one per span)"
    if sum(len(span) + 1 for span in spans) > MAX_ANSWER_CHARS:
        return None, f"the answer is over {MAX_ANSWER_CHARS} characters; a DROP answer is a short span"
    return spans, None


def _f1(predicted: set[str], gold: set[str]) -> float:
    common = len(gold & predicted)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    if precision == 0 and recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted_numbers: set[str]) -> bool:
    gold_numbers = {word for word in gold if _is_number(word)}
    return not gold_numbers or bool(gold_numbers & predicted_numbers)


def _align(predicted: list[set[str]], gold: list[set[str]]) -> list[float]:
    """Best one-to-one assignment of predicted spans to gold spans, as the official script's
    ``linear_sum_assignment``; the result has one entry per span of the longer side (exhaustive
    search: answers have few spans; beyond 7 a greedy match per gold span is used)."""
    predicted_numbers = [{word for word in p if _is_number(word)} for p in predicted]
    scores = [
        [
            _f1(p, g) if _numbers_agree(g, numbers) else 0.0
            for p, numbers in zip(predicted, predicted_numbers, strict=True)
        ]
        for g in gold
    ]
    size = max(len(gold), len(predicted))
    if len(predicted) > 7 or len(gold) > 7:
        per_gold = [max(row, default=0.0) for row in scores]
        return per_gold + [0.0] * (size - len(per_gold))
    best: list[float] = [0.0] * size
    best_total = -1.0
    if len(gold) >= len(predicted):
        pairings = (
            [(g, p) for p, g in enumerate(perm)]
            for perm in itertools.permutations(range(len(gold)), len(predicted))
        )
    else:
        pairings = (
            [(g, p) for g, p in enumerate(perm)]
            for perm in itertools.permutations(range(len(predicted)), len(gold))
        )
    for pairing in pairings:
        total = sum(scores[g][p] for g, p in pairing)
        if total > best_total:
            best_total = total
            best = [0.0] * size
            for g, p in pairing:
                best[g] = scores[g][p]
    return best


def drop_metrics(predicted: str | list, gold: str | list) -> tuple[float, float]:
    """(exact match, F1) of one prediction against one reference, as in the official script."""
    predicted_spans, predicted_bags = _bags(predicted)
    gold_spans, gold_bags = _bags(gold)
    exact = float(set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans))
    per_span = _align(predicted_bags, gold_bags)
    f1 = round(sum(per_span) / len(per_span), 2) if per_span else 0.0
    return exact, f1


def drop_f1(answer: Any, references: str) -> float:
    """The best F1 of ``answer`` over the ``|``-separated references; 0 for anything that is not a
    DROP answer. Never raises."""
    return _drop_score(answer, references).value


def _drop_score(answer: Any, references: str) -> Score:
    spans, problem = answer_spans(answer)
    if spans is None:
        return Score(0.0, problem)
    return Score(max(drop_metrics(spans, reference)[1] for reference in references.split("|")))


class DROP(Task):
    name = "drop"
    family = "reading"
    description = (
        "DROP: reading comprehension that needs discrete reasoning over a passage (counting, sorting, "
        "arithmetic, dates). The workflow receives the passage and the question as `task` and must return "
        "{'answer': X} with X a short answer string (a number, a date, or a span of the passage). "
        "Scoring is token F1 with number normalisation."
    )

    def _load(self, split: str, data_dir: Path) -> list[Sample]:
        path = data_dir / "drop" / "drop_v0_dev.jsonl.gz"
        rows = read_jsonl(path, {"context": str, "ref_text": str}, text=read_gzip_text(path))
        samples = [
            Sample(f"drop/{i}", row["context"].removesuffix("Answer:").rstrip(), row["ref_text"])
            for i, (_, row) in enumerate(rows)
        ]
        return protocol_split(samples, split)

    def _score(self, sample: Sample, answer: Any) -> Score:
        return _drop_score(answer, sample.expected)
