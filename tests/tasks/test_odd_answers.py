"""Whatever a workflow returns, every task's scorer gives a score in [0, 1] and never raises.

An explicit list of odd returns (huge and non-finite numbers, deep and shared nesting, bytes,
complex, sets, odd dict keys, hostile subclasses of builtins, 16 MiB strings, pathological number
text, many DROP spans) and property-based ones (hypothesis) go through the scorer of every task,
code tasks included (real sandbox scorer). The honest reference answer must still score 1, also
when wrapped in a hostile subclass, so no test here can pass by scoring everything 0.
"""

from __future__ import annotations

import enum
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from w4s.sandbox.code_scoring import CodeScorer
from w4s.tasks import get_task
from w4s.tasks.base import Score

MATH = ("gsm8k", "gsm_hard", "mgsm", "svamp")
TEXT = (*MATH, "drop")
CODE = ("humaneval", "mbpp")
MIB16 = 16 * 1024 * 1024


def _boom(*args, **kwargs):
    raise RuntimeError("a scorer called a method the answer overrides")


def hostile(base: type, names: tuple[str, ...]) -> type:
    """A subclass of ``base`` whose listed methods all raise."""
    return type(f"Hostile{base.__name__.title()}", (base,), {name: _boom for name in names})


_COMMON = ("__eq__", "__ne__", "__lt__", "__gt__", "__le__", "__ge__", "__hash__", "__bool__")
_COMMON += ("__str__", "__repr__", "__format__", "__len__", "__iter__", "__getitem__", "__contains__")
_COMMON += ("__add__", "__radd__", "__mul__", "__rmul__", "__mod__", "__float__", "__int__", "__index__")
HostileStr = hostile(
    str,
    _COMMON
    + ("strip", "rstrip", "lstrip", "replace", "split", "rsplit", "find", "rfind", "lower", "encode")
    + ("isascii", "isspace", "startswith", "endswith", "removesuffix", "splitlines", "join", "__reversed__"),
)
HostileInt = hostile(
    int,
    _COMMON
    + ("__abs__", "__neg__", "__truediv__", "__rtruediv__", "__round__", "bit_length", "__reversed__"),
)
HostileFloat = hostile(float, _COMMON + ("__abs__", "__neg__", "__truediv__", "is_integer", "__round__"))
HostileList = hostile(list, _COMMON + ("copy", "__reversed__", "index", "count"))
HostileTuple = hostile(tuple, _COMMON + ("index", "count"))
HostileDict = hostile(dict, _COMMON + ("get", "items", "keys", "values", "copy", "setdefault"))


class KeyStr(str):  # usable as a dict key (hash intact), lies about everything else
    __eq__ = _boom
    __str__ = _boom
    __hash__ = str.__hash__


class LiesAboutItsClass:
    """``isinstance(x, str)`` is True for this object; it is not a string."""

    @property
    def __class__(self):
        return str


class Color(enum.IntEnum):
    RED = 18


def nested(depth: int, leaf) -> list:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def cyclic() -> list:
    value: list = ["18"]
    value.append(value)
    return value


def shared(levels: int) -> list:
    """2**levels leaves by reference, a few objects in memory."""
    value: list = ["18"]
    for _ in range(levels):
        value = [value, value]
    return value


def gen():
    yield 18


# label -> a factory, so the big values exist one at a time
ODD = {
    "10**400": lambda: 10**400,
    "-10**5000": lambda: -(10**5000),
    "2**1024": lambda: 2**1024,
    "2**63": lambda: 2**63,
    "nan": lambda: float("nan"),
    "inf": lambda: float("inf"),
    "-inf": lambda: float("-inf"),
    "max float": lambda: sys.float_info.max,
    "min subnormal": lambda: 5e-324,
    "-0.0": lambda: -0.0,
    "'1e999'": lambda: "1e999",
    "'-1e999'": lambda: "-1e999",
    "'nan'": lambda: "nan",
    "'inf'": lambda: "inf",
    "'1e-999'": lambda: "1e-999",
    "5000 nines": lambda: "9" * 5000,
    "huge fraction": lambda: "1" * 5000 + "/1",
    "fraction over zero": lambda: "3/0",
    "zero over zero": lambda: "0/0",
    "inf fraction": lambda: "1" * 400 + "/" + "1" * 400,
    "answer is 1e999": lambda: "The answer is 1e999.",
    "boxed nothing": lambda: "\\boxed{",
    "unicode digits": lambda: "١٨",
    "fullwidth digits": lambda: "１８",
    "superscript digits": lambda: "¹⁸",
    "lone surrogate": lambda: "18\ud800",
    "NUL": lambda: "18\x00",
    "empty": lambda: "",
    "True": lambda: True,
    "False": lambda: False,
    "None": lambda: None,
    "bytes": lambda: b"18",
    "bytearray": lambda: bytearray(b"18"),
    "memoryview": lambda: memoryview(b"18"),
    "complex": lambda: 18 + 0j,
    "set": lambda: {18},
    "frozenset": lambda: frozenset({"18"}),
    "tuple": lambda: (18,),
    "tuple of spans": lambda: ("a", "b"),
    "empty list": lambda: [],
    "empty dict": lambda: {},
    "dict answer": lambda: {"answer": 18},
    "dict int keys": lambda: {1: 2},
    "dict tuple keys": lambda: {(1, 2): "18"},
    "dict frozenset keys": lambda: {frozenset(): "18"},
    "dict None key": lambda: {None: "18"},
    "dict code not str": lambda: {"code": 18},
    "dict code bytes": lambda: {"code": b"return 1"},
    "object": lambda: object(),
    "Ellipsis": lambda: ...,
    "type": lambda: int,
    "function": lambda: lambda: 18,
    "generator": gen,
    "range": lambda: range(18),
    "exception": lambda: ValueError("18"),
    "IntEnum": lambda: Color.RED,
    "nested 200": lambda: nested(200, "18"),
    "nested 5000": lambda: nested(5000, 18),
    "cyclic": cyclic,
    "shared 2**60": lambda: shared(60),
    "hostile str": lambda: HostileStr("18"),
    "hostile int": lambda: HostileInt(18),
    "hostile huge int": lambda: HostileInt(10**400),
    "hostile float": lambda: HostileFloat(18.0),
    "hostile nan": lambda: HostileFloat("nan"),
    "hostile list": lambda: HostileList(["18"]),
    "hostile tuple": lambda: HostileTuple(("18",)),
    "hostile dict": lambda: HostileDict({"code": "    return 1\n", "answer": "18"}),
    "hostile key": lambda: {KeyStr("code"): "    return 1\n"},
    "hostile inside": lambda: [HostileList([HostileStr("7"), HostileInt(7)])],
    "lies about class": LiesAboutItsClass,
    "16 MiB x": lambda: "x" * MIB16,
    "16 MiB digits": lambda: "7" * MIB16,
    "16 MiB commas": lambda: "," * MIB16,
    "16 MiB minus": lambda: "-" * MIB16,
    "16 MiB minus space": lambda: "- " * (MIB16 // 2),
    "16 MiB 1,": lambda: "1," * (MIB16 // 2),
    "16 MiB 1.": lambda: "1." * (MIB16 // 2),
    "16 MiB 1e": lambda: "1e" * (MIB16 // 2),
    "16 MiB space digit": lambda: "1 " * (MIB16 // 2),
    "16 MiB braces": lambda: "\\boxed{" + "{" * MIB16,
    "16 MiB frac": lambda: "\\frac{1}{" * (MIB16 // 9),
    "16 MiB markers": lambda: "#### answer is " * (MIB16 // 15),
    "16 MiB unicode digits": lambda: "١" * MIB16,
    "16 MiB line separators": lambda: "\u2028" * MIB16,
    "16 MiB fences": lambda: "```\n" * (MIB16 // 4),
    "millions of digits and commas": lambda: ("1" * 1000 + ",") * 3000,
    "10**5 spans": lambda: ["7"] * 10**5,
    "10**5 empty spans": lambda: [""] * 10**5,
    "10**6 items": lambda: [0] * 10**6,
    "8 spans (greedy)": lambda: [str(i) for i in range(8)],
    "7 spans (exhaustive)": lambda: ["a", "b", "c", "d", "e", "f", "7"],
    "spans with many tokens": lambda: ["a b 7 " * 15000] * 7,
    "spans of lists": lambda: [["7"], ["8"]],
    "spans with None": lambda: ["7", None],
    "huge int span": lambda: ["7", 10**5000],
    "float spans": lambda: [7.0, float("nan"), float("inf")],
}


@pytest.fixture(scope="module")
def text_samples(data_dir):
    return {name: (get_task(name), get_task(name).load("validation", data_dir)[:2]) for name in TEXT}


class WithScorer:
    """A code task that scores with the module's one scorer (as an evaluation passes its own)."""

    def __init__(self, task, scorer):
        self.task, self.scorer, self.name = task, scorer, task.name

    def score(self, sample, answer):
        return self.task.score(sample, answer, scorer=self.scorer)


@pytest.fixture(scope="module")
def code_samples(data_dir):
    with CodeScorer() as scorer:
        loaded = {}
        for name in CODE:
            task = get_task(name)
            loaded[name] = (WithScorer(task, scorer), task.load("validation", data_dir)[:1])
        yield loaded


def honest(task, sample):
    if task.name == "drop":
        return sample.expected.split("|")[0]
    return sample.expected


def assert_scores(task, sample, answer) -> Score:
    score = task.score(sample, answer)
    assert isinstance(score, Score) and type(score.value) is float, (task.name, score)
    assert 0.0 <= score.value <= 1.0, (task.name, score)
    assert score.error is None or isinstance(score.error, str)
    return score


@pytest.mark.parametrize("label", list(ODD))
def test_odd_answers_score_in_text_tasks(label, text_samples):
    answer = ODD[label]()
    for task, samples in text_samples.values():
        for sample in samples:
            assert_scores(task, sample, answer)


@pytest.mark.parametrize("label", list(ODD))
def test_odd_answers_score_in_code_tasks(label, code_samples):
    answer = ODD[label]()
    for task, samples in code_samples.values():
        for sample in samples:
            assert_scores(task, sample, answer)


def test_odd_answers_that_are_wrong_score_zero(text_samples):
    for label in ("10**400", "-10**5000", "nan", "'1e999'", "fraction over zero", "huge fraction", "set"):
        for task, samples in text_samples.values():
            assert task.score(samples[0], ODD[label]()).value == 0.0, (label, task.name)


def test_honest_answers_score_one_in_text_tasks(text_samples):
    for task, samples in text_samples.values():
        for sample in samples:
            right = honest(task, sample)
            text = right if isinstance(right, str) else repr(right)
            forms = [right, text, [right], (right,), HostileStr(text), HostileList([HostileStr(text)])]
            if isinstance(right, float):
                forms += [HostileFloat(right), f"The answer is {text}.", f"#### {text}"]
                if right.is_integer():
                    forms += [int(right), HostileInt(int(right))]
            for form in forms:
                score = assert_scores(task, sample, form)
                assert score.value == 1.0, (task.name, sample.id, type(form).__name__, score)


def test_honest_answers_score_one_in_code_tasks(code_samples):
    for task, samples in code_samples.values():
        for sample in samples:
            right = honest(task, sample)
            for form in (right, {"code": right}, HostileStr(right), HostileDict({"code": HostileStr(right)})):
                score = assert_scores(task, sample, form)
                assert score.value == 1.0, (task.name, sample.id, type(form).__name__, score)


# --- property-based -----------------------------------------------------------------------------------

number_text = st.text(alphabet="0123456789١٢-+,.eE/ %$€{}#\\boxedfracAnswer:is\n", max_size=60)
surrogate_text = st.sampled_from(["\ud800", "7\udfff", "\udc80\ud83d"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(300, 6000).map(lambda digits: 10**digits)  # beyond float, beyond int->str limits
    | st.integers(300, 6000).map(lambda digits: -(10**digits) - 1)
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=30)
    | number_text
    | surrogate_text
    | st.binary(max_size=8)
    | st.complex_numbers()
    | st.builds(HostileStr, number_text)
    | st.builds(HostileInt, st.integers())
    | st.builds(HostileFloat, st.floats())
)
hashable = (
    st.integers() | st.text(max_size=4) | st.tuples(st.integers()) | st.frozensets(st.integers(), max_size=3)
)
answers = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=8)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
        | st.dictionaries(hashable, children, max_size=3)
        | st.frozensets(hashable, max_size=4)
        | st.sets(hashable, max_size=4)
        | st.builds(HostileList, st.lists(children, max_size=4))
        | st.builds(HostileTuple, st.lists(children, max_size=4))
        | st.builds(HostileDict, st.dictionaries(st.text(max_size=6), children, max_size=3))
    ),
    max_leaves=30,
)
PROPERTY = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=300, **PROPERTY)
@given(answer=answers)
def test_any_answer_scores_in_text_tasks(text_samples, answer):
    for task, samples in text_samples.values():
        assert_scores(task, samples[0], answer)


@settings(max_examples=40, **PROPERTY)
@given(answer=answers | number_text | st.dictionaries(st.just("code"), scalars, max_size=1))
def test_any_answer_scores_in_code_tasks(code_samples, answer):
    for task, samples in code_samples.values():
        assert_scores(task, samples[0], answer)
