import pytest

from w4s.sandbox.code_scoring import CodeScorer
from w4s.tasks import get_task
from w4s.tasks.code import docstring_tests


@pytest.fixture(scope="module")
def scorer():
    with CodeScorer() as instance:
        yield instance


def test_humaneval_answers_as_full_function_or_body(data_dir, scorer):
    task = get_task("humaneval")
    sample = task.load("validation", data_dir)[0]
    body = sample.expected
    entry = sample.extra["entry_point"]
    full = f"```python\ndef {entry}(arr):\n" + body + "\n```"
    assert task.score(sample, body, scorer=scorer).value == 1.0
    assert task.score(sample, full, scorer=scorer).value == 1.0
    assert task.score(sample, {"code": body}, scorer=scorer).value == 1.0
    assert task.score(sample, "    return 12345\n", scorer=scorer).value == 0.0
    assert task.score(sample, None, scorer=scorer).error == "the answer holds no code"
    # Called without one, a code task starts a scorer for that answer and closes it.
    assert task.score(sample, body).value == 1.0


def test_mbpp_canonical_solutions_pass(data_dir, scorer):
    task = get_task("mbpp")
    samples = task.load("validation", data_dir) + task.load("test", data_dir)
    results = list(scorer.check_many(task.problem(s, s.expected) for s in samples))
    failed = sorted(r.id for r in results if not r.passed)
    assert failed == ["mbpp/630"]  # its reference solution reads an undefined name: a dataset defect


def test_mbpp_public_tests_line_up(data_dir):
    task = get_task("mbpp")
    sample = next(s for s in task.load("validation", data_dir) if s.extra["entry_point"] == "count_rotation")
    assert task.public_tests(sample) and all("candidate(" in t for t in task.public_tests(sample))


def test_docstring_tests_keep_only_literal_examples():
    prompt = '''def add(a, b):
    """Add.
    >>> add(2, 3)
    5
    add(1, 1) == 2
    add(x, y) -> x + y
    >>> add(
    """
'''
    assert docstring_tests(prompt, "add") == ["assert candidate(2, 3) == 5", "assert candidate(1, 1) == 2"]


def test_humaneval_public_tests_never_use_hidden_tests(data_dir):
    task = get_task("humaneval")
    for sample in task.load("validation", data_dir) + task.load("test", data_dir):
        for test in task.public_tests(sample):
            assert (
                test.replace("candidate", sample.extra["entry_point"]).split("==")[0].strip()[7:]
                in sample.prompt
            )


def test_finding_the_entry_point_is_linear_in_the_answer():
    """`defines` once let `\\s*` cross newlines: a million of them took minutes (pytest's timeout
    fails this test if that comes back); now it is one pass."""
    from w4s.tasks.code import defines

    assert not defines("\n" * 1_000_000 + "x", "f")
    assert defines("import os\n\n  def f (x):\n    pass\n", "f") and not defines("def fx(x):\n", "f")
