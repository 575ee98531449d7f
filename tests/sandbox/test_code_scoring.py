"""Code answers scored by hidden tests: tampering must fail, honest answers must pass."""

from __future__ import annotations

import textwrap

import pytest

from w4s.sandbox.code_scoring import CodeProblem, CodeScorer
from w4s.sandbox.fidelity import humaneval_fidelity

TEST = """
def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0
    assert abs(candidate([0.5, 0.25]) - 0.75) < 1e-9
"""
PROMPT = 'def total(xs):\n    """Sum of xs."""\n'


@pytest.fixture(scope="module")
def scorer():
    from w4s.sandbox.config import SandboxConfig

    with CodeScorer(SandboxConfig(code_score_timeout_s=3.0, memory_mb=512)) as instance:
        yield instance


def score(scorer, body: str, test: str = TEST, prefix: str = ""):
    program = prefix + PROMPT + textwrap.indent(textwrap.dedent(body), "    ")
    return scorer.check(CodeProblem(program=program, test=test, entry_point="total", setup=PROMPT, id="t"))


def test_honest_answer_passes(scorer):
    result = score(scorer, "return sum(xs)")
    assert result.passed and result.error is None


def test_wrong_answer_fails_with_the_assertion(scorer):
    result = score(scorer, "return sum(xs) + 1")
    assert not result.passed and result.error.startswith("AssertionError")


HOSTILE = {
    "always_equal_object": """
        class Always:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __sub__(self, other): return 0
            def __abs__(self): return 0
        return Always()
    """,
    "lying_int_subclass": """
        class Liar(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        return Liar(0)
    """,
    "peek_at_caller_frame": """
        import sys
        frame = sys._getframe(1)
        for f in (frame, frame.f_back, getattr(frame.f_back, 'f_back', None)):
            if f is not None:
                for value in list(f.f_locals.values()) + list(f.f_globals.values()):
                    if isinstance(value, int) and value not in (0, 1):
                        return value
        return -1
    """,
    "scan_gc_for_expected": """
        import gc
        ints = [o for o in gc.get_objects() if isinstance(o, (list, tuple)) and 6 in o]
        return 6 if ints else -1
    """,
    "read_test_source": """
        import inspect, sys
        try:
            src = inspect.getsource(sys._getframe(1))
        except Exception:
            src = ''
        return 6 if 'candidate([1, 2, 3]) == 6' in src else -1
    """,
    "os_exit_zero": "import os\nos._exit(0)",
    "sys_exit_zero": "import sys\nsys.exit(0)",
    "raise_system_exit": "raise SystemExit(0)",
    "kill_self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "print_fake_markers": "print('passed'); print('__ok__'); print('All tests passed'); return None",
    "install_trace_hook": """
        import sys
        sys.settrace(lambda *a: None)
        sys.setprofile(lambda *a: None)
        return None
    """,
    "tamper_with_builtins": """
        import builtins
        builtins.AssertionError = type('Nothing', (Exception,), {})
        builtins.abs = lambda x: 0
        return None
    """,
    "monkeypatch_the_worker": """
        import sys
        proto = sys.modules.get('protocol')
        if proto is not None:
            proto.encode = lambda value, _depth=0: 6
        return None
    """,
    "return_a_function": "return lambda: 6",
    "return_a_generator": "return (x for x in xs)",
    "infinite_loop": "while True:\n    pass",
    "memory_bomb": "return len(bytearray(16 * 1024 ** 3))",
    "fork_and_exit_parent": "import os\nif os.fork():\n    os._exit(0)\nreturn sum(xs) + 1",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_tampering_fails(scorer, name):
    result = score(scorer, HOSTILE[name])
    assert not result.passed, f"{name} passed the hidden tests"
    assert result.error


def test_module_level_exit_fails(scorer):
    result = score(scorer, "return sum(xs)", prefix="import os\nos._exit(0)\n")
    assert not result.passed and "failed to load" in result.error


def test_missing_entry_point_fails(scorer):
    problem = CodeProblem(
        program="def other(xs):\n    return sum(xs)\n", test=TEST, entry_point="total", id="t"
    )
    result = scorer.check(problem)
    assert not result.passed and "defines no function 'total'" in result.error


def test_helpers_from_the_trusted_prompt_are_used_not_the_candidates(scorer):
    prompt = "def helper(x):\n    return x * 2\n\ndef f(x):\n    pass\n"
    test = "def check(candidate):\n    assert helper(candidate(3)) == 12\n"
    lying = "def helper(x):\n    return 12\n\ndef f(x):\n    return 0\n"
    honest = "def helper(x):\n    return x * 2\n\ndef f(x):\n    return x * 2\n"
    assert not scorer.check(
        CodeProblem(program=lying, test=test, entry_point="f", setup=prompt, id="h")
    ).passed
    assert scorer.check(CodeProblem(program=honest, test=test, entry_point="f", setup=prompt, id="h")).passed


def test_mbpp_style_tests_call_the_function_by_name(scorer):
    test = "def check():\n    assert count_rotation([3,2,1]) == 1\n    assert count_rotation([1,2,3]) == 0\n"
    good = (
        "def count_rotation(arr):\n    for i in range(1, len(arr)):\n        if arr[i] < arr[i-1]:\n"
        "            return i\n    return 0\n"
    )
    ok = scorer.check(CodeProblem(program=good, test=test, entry_point="count_rotation", id="m"))
    bad = scorer.check(
        CodeProblem(
            program=good.replace("return 0", "return 5"), test=test, entry_point="count_rotation", id="m"
        )
    )
    assert ok.passed and not bad.passed


def test_timeout_is_enforced_per_answer(scorer):
    result = score(scorer, "import time\ntime.sleep(60)")
    assert not result.passed and "TimeoutError" in result.error and result.seconds < 5


def test_humaneval_fidelity(data_dir):
    report = humaneval_fidelity(data_dir)
    assert report["problems"] == 164
    assert report["canonical"]["passed"] == 164, report["canonical"]["unexpected"]
    assert report["wrong_body"]["passed"] == 0, report["wrong_body"]["unexpected"]
    assert report["ok"]
