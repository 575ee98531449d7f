"""What every benchmark task provides: samples per split, the text a workflow sees, and scoring."""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import random
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w4s.errors import ConfigError, InfrastructureError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "W4S_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark folder: ``data_dir``, else ``$W4S_DATA_DIR``; it must exist."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise ConfigError(f"no benchmark data: pass --data-dir or set {DATA_DIR_ENV} to the datasets folder")
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"benchmark data folder {path} does not exist; pass --data-dir or set {DATA_DIR_ENV}"
        )
    return path


SPLITS = ("validation", "test")
MAX_ANSWER_DEPTH = 64
MAX_ANSWER_ITEMS = 100_000
_FETCH_AGAIN = (
    "the file is truncated or corrupt: fetch it again with `w4s data pull` or point --data-dir at a good copy"
)


@dataclass(frozen=True)
class Sample:
    """One benchmark item. ``prompt`` is what the workflow's ``solver(agent, task)`` receives as
    ``task``; ``expected`` never enters the sandbox."""

    id: str
    prompt: str
    expected: Any
    extra: dict = field(default_factory=dict, compare=False)


@dataclass
class Score:
    value: float
    error: str | None = None


class Task(ABC):
    """A benchmark: ``name``, ``family`` (math, reading or code), a description for the meta-agent.

    A task implements ``_load`` and ``_score``; ``score`` hands ``_score`` the answer only as bounded
    JSON data (:func:`plain_answer`), and any other value scores 0 with the reason, without reaching
    the task's own scoring code.
    """

    name: str
    family: str
    description: str
    data_dir: Path | None = None  # where load() reads when it is not told (w4s.load_task sets it)

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Sample]:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self._load(split, resolve_data_dir(data_dir or self.data_dir))

    @abstractmethod
    def _load(self, split: str, data_dir: Path) -> list[Sample]: ...

    def score(self, sample: Sample, answer: Any, *, scorer: Any = None) -> Score:
        """Score one answer (whatever a workflow returned) in 0..1. Never raises for an answer: one
        that cannot be scored scores 0 and the run goes on (only infrastructure failures, such as a
        code scorer's sandbox that cannot start, propagate).

        ``scorer``: for code tasks, the :class:`~w4s.sandbox.code_scoring.CodeScorer` to run the hidden
        tests in (an evaluation passes its own); without one, a scorer is started for this answer
        and closed. Other tasks take none."""
        plain, problem = plain_answer(answer)
        if problem is not None:
            return Score(0.0, problem)
        try:
            scored = self._score(sample, plain) if scorer is None else self._score(sample, plain, scorer)
        except InfrastructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - one answer never ends a run; the kind is logged, not the value
            log.warning(
                "scoring a %s answer of %s raised %s: scored 0", self.name, sample.id, type(exc).__name__
            )
            return Score(0.0, f"the answer could not be scored ({type(exc).__name__})")
        if not 0.0 <= scored.value <= 1.0:  # NaN fails this too
            log.warning("the %s scorer gave %r for %s: scored 0", self.name, scored.value, sample.id)
            return Score(0.0, "the answer could not be scored")
        return scored

    @abstractmethod
    def _score(self, sample: Sample, answer: Any) -> Score:
        """Score an answer that :func:`plain_answer` made bounded JSON data."""

    def public_tests(self, sample: Sample) -> list[str]:
        """Visible tests a workflow may run (``assert candidate(...) == ...``); code tasks only."""
        raise LookupError(f"{self.name} has no public tests")


# --- answers: whatever a workflow returns becomes bounded JSON data, or a reason it scores 0 ----------


class _NotPlain(Exception):
    pass


def plain_answer(answer: Any) -> tuple[Any, str | None]:
    """``(value, None)`` with ``answer`` as exact JSON-like builtins (None, bool, int, float, str,
    list, dict with str keys; tuples become lists), or ``(None, reason)`` when it is anything else:
    sets, bytes, complex numbers, other objects, non-string keys, text with lone surrogates, nesting
    deeper than ``MAX_ANSWER_DEPTH`` or more than ``MAX_ANSWER_ITEMS`` items. Subclasses of builtins
    are read through the base type's own methods, so overridden ``__eq__``, ``__str__``,
    ``__iter__``... never run. Linear in the size of the answer; never raises."""
    try:
        return _plain(answer, 0, [MAX_ANSWER_ITEMS]), None
    except _NotPlain as exc:
        return None, (
            f"the answer holds {exc}; return a number, a string, a list or an object with string keys"
        )
    except (RecursionError, MemoryError):
        return None, "the answer is too large or too deep to score"


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if issubclass(kind, str):
        return _text(value if kind is str else str.__str__(value))
    if issubclass(kind, int):  # bool is final, so this is int or a subclass of it
        return value if kind is int else int.__int__(value)
    if issubclass(kind, float):
        return value if kind is float else float.__float__(value)
    if issubclass(kind, list | tuple | dict):
        if depth >= MAX_ANSWER_DEPTH:
            raise _NotPlain(f"containers nested deeper than {MAX_ANSWER_DEPTH} levels")
        if issubclass(kind, dict):
            budget[0] -= dict.__len__(value)
            _check_budget(budget)
            plain = {}
            for key, item in dict.items(value):
                if not issubclass(type(key), str):
                    raise _NotPlain("an object key that is not a string")
                plain[_text(str.__str__(key))] = _plain(item, depth + 1, budget)
            return plain
        items = list.copy(value) if issubclass(kind, list) else list(tuple.__iter__(value))
        budget[0] -= len(items)
        _check_budget(budget)
        return [_plain(item, depth + 1, budget) for item in items]
    names = [name for base, name in _KIND_NAMES if issubclass(kind, base)]
    raise _NotPlain(names[0] if names else "a value that is not JSON data")


_KIND_NAMES = (
    (set | frozenset, "a set"),
    (bytes | bytearray | memoryview, "bytes"),
    (complex, "a complex number"),
)


def _check_budget(budget: list[int]) -> None:
    if budget[0] < 0:
        raise _NotPlain(f"more than {MAX_ANSWER_ITEMS} items")


def _text(text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _NotPlain("text that is not valid Unicode (a lone surrogate)") from None
    return text


# --- data files: one reader per format; a damaged file is a one-line ConfigError with the line ------


def require(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing; point --data-dir (or W4S_DATA_DIR) at the benchmark folder, "
            "or fetch it with `w4s data pull`"
        )
    return path


def corrupt(path: Path, problem: str, at: str | None = None) -> ConfigError:
    """The error for a damaged benchmark file: names it (and where in it: ``line 17``, ``entry 3``)
    and says what to do."""
    where = f"{path} {at}" if at else str(path)
    return ConfigError(f"{where} {problem}; {_FETCH_AGAIN}")


def read_data(path: Path) -> bytes:
    try:
        return require(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path} cannot be read ({type(exc).__name__}: {exc.strerror or exc}); fix its permissions "
            "or point --data-dir at a readable copy"
        ) from None


def read_text(path: Path, data: bytes | None = None) -> str:
    """The UTF-8 text of a benchmark file (``data``: its bytes, when already read and unpacked)."""
    raw = read_data(path) if data is None else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise corrupt(path, "is not valid UTF-8", f"line {line}") from None
    if not text or text.isspace():
        raise corrupt(path, "is empty")
    return text


def read_gzip_text(path: Path) -> str:
    raw = read_data(path)
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise corrupt(path, f"is not a complete gzip file ({exc})") from None
    return read_text(path, data)


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise corrupt(path, f"is not valid JSON ({exc.msg})", f"line {exc.lineno}") from None
    except RecursionError:
        raise corrupt(path, "is not valid JSON (it nests too deeply)") from None


Fields = dict[str, type | tuple[type, ...]]


def read_jsonl(
    path: Path, fields: Fields, optional: Fields | None = None, text: str | None = None
) -> list[tuple[int, dict]]:
    """``(line number, row)`` for each non-blank line of a JSON-lines benchmark file (``text``: its
    content, when already read); every row must be an object with ``fields`` (name: type) and, where
    present, ``optional`` fields of their types."""
    rows = []
    for number, line in enumerate((read_text(path) if text is None else text).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise corrupt(path, "is not valid JSON", f"line {number}") from None
        rows.append((number, check_row(row, path, f"line {number}", fields, optional)))
    if not rows:
        raise corrupt(path, "holds no rows")
    return rows


def check_row(row: Any, path: Path, at: str, fields: Fields, optional: Fields | None = None) -> dict:
    """``row`` if it is an object with the required ``fields`` and the types that both name."""
    if not isinstance(row, dict):
        raise corrupt(path, f"holds {_json_kind(row)} where an object belongs", at)
    for name in fields:
        if name not in row:
            raise corrupt(path, f"lacks the field {name!r}", at)
    for name, kinds in {**fields, **(optional or {})}.items():
        value = row.get(name)
        if name in row and (type(value) is bool or not isinstance(value, kinds)):
            wanted = " or ".join(_JSON_NAMES[k] for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
            raise corrupt(path, f"has {_json_kind(value)} in {name!r} where {wanted} belongs", at)
    return row


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in _JSON_NAMES.items():
        if isinstance(value, kind):
            return name
    return "a value"


def data_number(value: Any, path: Path, at: str | None, what: str) -> float:
    """A finite number from a data file: a JSON number, or a string holding one (commas allowed)."""
    number = math.nan
    if type(value) is not bool and isinstance(value, int | float):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str):
        try:
            number = float(value.replace(",", "").strip())
        except ValueError:
            pass
    if not math.isfinite(number):
        shown = (
            repr(value[:40]) + ("..." if len(value) > 40 else "")
            if isinstance(value, str)
            else repr(value)
            if isinstance(value, float)
            else _json_kind(value)
        )
        raise corrupt(path, f"has {what} {shown}, which is not a finite number", at)
    return number


def protocol_split(items: list, split: str, validation: int = 128, test: int = 800, seed: int = 0) -> list:
    """The ADAS/W4S protocol: shuffle once with a fixed seed, the first ``validation`` items are the
    validation split and the next ``test`` items the test split (disjoint, never clock-seeded)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen = order[:validation] if split == "validation" else order[validation : validation + test]
    return [items[i] for i in chosen]
