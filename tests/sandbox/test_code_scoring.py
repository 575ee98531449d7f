"""Code answers scored by hidden tests: tampering must fail, honest answers must pass."""

from __future__ import annotations

import textwrap

import pytest

from w4s.sandbox.code_scoring import CodeProblem, CodeScorer, expected_names

TEST = """
def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0
    assert abs(candidate([0.5, 0.25]) - 0.75) < 1e-9
"""
PROMPT = 'def total(xs):\n    """Sum of xs."""\n'
OUTCOMES = ("failed", "error", "timeout", "crashed")


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


def test_wrong_answer_fails_in_the_fixed_vocabulary(scorer):
    result = score(scorer, "return sum(xs) + 1")
    assert not result.passed and result.error == "failed"


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
    assert result.error in OUTCOMES or result.error.startswith("error (")


def test_module_level_exit_fails(scorer):
    result = score(scorer, "return sum(xs)", prefix="import os\nos._exit(0)\n")
    assert not result.passed and result.error in ("crashed", "error (SystemExit)")


def test_missing_entry_point_fails(scorer):
    problem = CodeProblem(
        program="def other(xs):\n    return sum(xs)\n", test=TEST, entry_point="total", id="t"
    )
    result = scorer.check(problem)
    assert not result.passed and result.error == "error (NameError)"


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
    assert not result.passed and result.error == "timeout"


# --- the host boundary: shadowed builtins, names chosen by the sandbox, hidden data in results -----

SHADOW_TEST = """
def check(candidate):
    assert abs(candidate([0.5, 0.25]) - 0.75) < 1e-9
    assert set(candidate([1, 2])) == set([3])
    assert sorted(candidate([4])) == sorted([4])
    assert tuple(candidate([5])) == tuple([5])
    assert len(candidate([6, 7])) == len([13])
    assert isinstance(candidate([1]), int) and max(candidate([1]), 0) == 1
"""


def test_a_program_cannot_replace_the_builtins_of_the_trusted_test(scorer):
    shadows = "".join(
        f"def {name}(*args, **kwargs):\n    return {value}\n\n"
        for name, value in (
            ("abs", 0),
            ("set", 1),
            ("sorted", 1),
            ("tuple", 1),
            ("len", 1),
            ("isinstance", True),
            ("max", 1),
        )
    )
    wrong = scorer.check(
        CodeProblem(
            program=shadows + "def total(xs):\n    return -1\n", test=SHADOW_TEST, entry_point="total"
        )
    )
    assert not wrong.passed and wrong.error == "failed"


def _shadowing_attack(problem: CodeProblem) -> CodeProblem:
    """A wrong solution that redefines every builtin the problem's test uses, returning constants."""
    import builtins

    from w4s.sandbox.code_scoring import _names_used

    used = _names_used(compile(problem.setup + "\n" + problem.test, "<t>", "exec"))
    shadows = "".join(
        f"def {name}(*args, **kwargs):\n    return 0\n\n"
        for name in sorted(used)
        if hasattr(builtins, name) and name.isidentifier() and not name.startswith("_") and name != "print"
    )
    wrong = f"{shadows}def {problem.entry_point}(*args, **kwargs):\n    return 0\n"
    return CodeProblem(
        program=wrong,
        test=problem.test,
        entry_point=problem.entry_point,
        setup=problem.setup,
        id=problem.id,
        timeout_s=problem.timeout_s,
        provided=problem.provided,
    )


@pytest.mark.parametrize("task_name", ["humaneval", "mbpp"])
def test_shadowed_builtins_pass_no_problem_of_the_benchmark(scorer, data_dir, task_name):
    from w4s.tasks import get_task

    task = get_task(task_name)
    samples = task.load("validation", data_dir) + task.load("test", data_dir)
    attacks = [_shadowing_attack(task.problem(s, "pass")) for s in samples]
    passed = [result.id for result in scorer.check_many(attacks) if result.passed]
    assert passed == []


def test_names_the_test_takes_from_the_program_come_from_the_reference():
    # MBPP 596: the test calls sys.getsizeof, relying on the reference solution's `import sys`.
    test = "def check():\n    assert tuple_size((1,)) == sys.getsizeof((1,))\n"
    reference = "import sys\ndef tuple_size(t):\n    return sys.getsizeof(t)\n"
    assert expected_names(test, "", reference, "tuple_size") == ((), "import sys")
    helper_test = "def check():\n    assert Pair(1, 2).a == 1 and make(3) == 3\n"
    reference = (
        "class Pair:\n    def __init__(self, a, b):\n        self.a = a\n\ndef make(x):\n    return x\n"
    )
    assert expected_names(helper_test, "", reference, "make") == (("Pair",), "")
    # Builtins and names the test defines itself are never the program's.
    assert expected_names(
        "def check():\n    assert abs(f(1)) == 1\n", "", "def abs(x):\n    return x\n", "f"
    ) == (
        (),
        "",
    )


def test_modules_the_test_needs_are_imported_from_trusted_data_only(scorer):
    test = "def check():\n    assert size(()) == sys.getsizeof(())\n"
    reference = "import sys\ndef size(t):\n    return sys.getsizeof(t)\n"
    provided, imports = expected_names(test, "", reference, "size")
    # The candidate binds `sys` to a fake module; the trusted side keeps its own import.
    program = "import types\nsys = types.ModuleType('antigravity')\ndef size(t):\n    return 24\n"
    problem = CodeProblem(program=reference, test=test, entry_point="size", setup=imports, provided=provided)
    assert scorer.check(problem).passed
    lying = CodeProblem(program=program, test=test, entry_point="size", setup=imports, provided=provided)
    assert __import__("sys").getsizeof(()) != 24 and not scorer.check(lying).passed


FORGED_READY = """
import socket, struct, json, types
for fd in range(3, 64):
    try:
        sock = socket.socket(fileno=fd)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            break
        sock.detach()
    except OSError:
        pass
fake = {'this': 'this', 'antigravity': 'antigravity', 'venv': 'venv.__main__', 'sys': 'this'}
for name, module in fake.items():
    globals()[name] = types.ModuleType(module)
body = json.dumps({'op': 'ready', 'missing': [], 'callables': ['total', *fake], 'modules': fake}).encode()
sock.sendall(struct.pack('>I', len(body)) + body)
def total(xs):
    return 0
"""


def test_the_host_never_imports_what_the_sandbox_names(scorer, capfd):
    import sys

    before = {name for name in ("this", "antigravity", "venv.__main__") if name in sys.modules}
    test = (
        "def check(candidate):\n    assert candidate([1]) == 1 and this.s and antigravity and venv and sys\n"
    )
    result = scorer.check(CodeProblem(program=FORGED_READY, test=test, entry_point="total", id="forged"))
    assert not result.passed
    assert {name for name in ("this", "antigravity", "venv.__main__") if name in sys.modules} == before
    assert "Zen of Python" not in capfd.readouterr().out


def test_results_built_to_collide_cannot_stall_the_trusted_test(scorer):
    """A trusted test that puts a result in a set (MBPP: ``set(f(x)) == set(...)``) hashes what the
    candidate chose on the host, holding the GIL: values that all hash alike took the host 10 s
    for 40,000 of them (quadratic, past every timeout). Such a result is refused as it crosses."""
    colliding = "def total(xs):\n    return [7 + i * ((1 << 61) - 1) for i in range(50_000)]\n"
    test = "def check(candidate):\n    assert set(candidate([1])) == {1}\n"
    result = scorer.check(CodeProblem(program=colliding, test=test, entry_point="total", id="c"))
    assert not result.passed and result.error == "crashed" and result.seconds < 3.0, result


TOLERANT_TEST = """
def check(candidate):
    for xs in ([1, 2], [3], []):
        try:
            got = candidate(xs)
        except Exception:  # inputs the function may refuse
            continue
        assert got == sum(xs)
"""


@pytest.mark.parametrize("body", ["import os\nos._exit(0)", "import time\ntime.sleep(60)"])
def test_a_candidate_that_died_never_passes_a_test_that_tolerates_errors(scorer, body):
    """A trusted test may catch what a call raises; a candidate that crashed or ran out of time
    then makes every call raise, and check() returns: that is no pass."""
    result = score(scorer, body, test=TOLERANT_TEST)
    assert not result.passed and result.error in ("crashed", "timeout"), result
    assert score(scorer, "return sum(xs)", test=TOLERANT_TEST).passed


SECRET_INPUT = [31337, 4242]
LEAK_TEST = f"""
def check(candidate):
    got = candidate({SECRET_INPUT!r})
    assert got == 'expected-9731', f'expected expected-9731 for {SECRET_INPUT!r}, got {{got!r}}'
"""


@pytest.mark.parametrize(
    "body",
    [
        # an exception class named after the hidden inputs
        "raise type('Leak_' + '_'.join(map(str, xs)), (Exception,), {})('31337 4242')",
        # a builtin kind with the inputs in its message
        "raise ValueError(repr(xs))",
        # a wrong answer that makes the trusted assertion message quote the expected value
        "return 'got ' + repr(xs)",
        # a value the trusted comparison cannot handle
        "return {'k': xs}",
        # a custom object crossing as an opaque stand-in
        "return type('Obj_' + str(xs[0]), (), {})()",
    ],
)
def test_nothing_derived_from_the_hidden_tests_leaves_the_scorer(scorer, body):
    result = score(scorer, body, test=LEAK_TEST)
    assert not result.passed
    assert result.error in ("failed", "error", "error (ValueError)")
    assert "31337" not in result.error and "9731" not in result.error
