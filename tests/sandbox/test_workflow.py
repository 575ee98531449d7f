"""The agent API and the per-sample machinery, through real sandboxes."""

import asyncio
import json

import pytest

from tests.conftest import echo_host, run, run_one
from w4s.sandbox.runner import CallableHost
from w4s.sandbox.workflow import WorkflowSandbox


def test_call_llm_sends_the_request_and_returns_replies(cfg):
    seen = []

    def answer(request):
        seen.append(request)
        return [f"r{i}" for i in range(request["n"])]

    source = """
def solver(agent, task):
    return agent.call_llm(task, temperature=0.3, num_of_response=3, agent_role="a solver",
                          instructions="be brief", max_completion_tokens=50)
"""
    result = run_one(source, cfg, "2+2?", CallableHost(answer))
    assert result.error is None and result.answer == ["r0", "r1", "r2"]
    assert result.llm_calls == 1
    assert seen == [
        {
            "messages": [{"role": "user", "content": "2+2?"}],
            "temperature": 0.3,
            "n": 3,
            "response_format": "text",
            "agent_role": "a solver",
            "instructions": "be brief",
            "max_completion_tokens": 50,
        }
    ]


def test_json_calls_parse_and_fill_keys(cfg):
    host = CallableHost(lambda request: ['Sure: {"thinking": "t", "answer": 4} done'])
    source = """
def solver(agent, task):
    a = agent.call_llm([{"role": "user", "content": task}], response_format="json")
    b = agent.call_json_format_llm(task, 0.0, 1, "role", ["thinking", "answer", "extra"], "go")
    return {"answer": [a, b]}
"""
    result = run_one(source, cfg, host=host)
    assert result.answer == [[{"thinking": "t", "answer": 4}], [{"thinking": "t", "answer": 4, "extra": ""}]]


def test_host_errors_reach_the_workflow_as_agent_errors(cfg):
    def refuse(request):
        raise RuntimeError("budget spent")

    source = """
def solver(agent, task):
    try:
        agent.call_llm(task)
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)
"""
    assert run_one(source, cfg, host=CallableHost(refuse)).answer == "AgentError: RuntimeError: budget spent"


def test_execute_code_forms(cfg):
    source = """
def solver(agent, task):
    return [
        agent.execute_code("def solution():\\n    return 6 * 7"),
        agent.execute_code("x = 5\\nx * 2"),
        agent.execute_code("print('hi')"),
        agent.execute_code("1/0"),
        agent.execute_code("while True: pass", timeout=1),
        agent.execute_code("import os\\nos._exit(3)"),
    ]
"""
    result = run_one(source, cfg)
    assert result.error is None, result.error
    assert result.answer[:4] == ["42", "10", "hi\n", "Error: ZeroDivisionError: division by zero"]
    assert result.answer[4] == "Error: TimeoutError: the code ran longer than 1 s"
    assert result.answer[5] == "Error: the code exited early (status 3)"


def test_test_on_public_test_passes_and_repairs(cfg):
    fixed = "```python\ndef add(a, b):\n    return a + b\n```"
    host = CallableHost(lambda request: [fixed], lambda task, entry: ["assert candidate(1, 2) == 3"])
    source = """
def solver(agent, task):
    good = agent.test_on_public_test(task, "def add(a, b):\\n    return a + b", "add")
    bad = agent.test_on_public_test(task, "def add(a, b):\\n    return a - b", "add", test_loop=2)
    worse = agent.test_on_public_test(task, "def add(a, b):\\n    return 0", "add", test_loop=1)
    return [good["result"], bad["result"], bad["solution"], worse["result"], worse["feedback"][:40]]
"""
    result = run_one(source, cfg, host=host)
    assert result.error is None, result.error
    assert result.answer[:4] == [True, True, "def add(a, b):\n    return a + b", False]
    assert "AssertionError" in result.answer[4]


def test_text_helpers(cfg):
    source = r"""
def solver(agent, task):
    return [
        agent.extract_answer_str("so \\boxed{\\frac{1}{2}} it is"),
        agent.extract_answer_str("work\n#### 1,234"),
        agent.extract_answer_str("The answer is 17."),
        agent.extract_answer_str("about 3 or 4,000 apples"),
        agent.extract_code_block("x\n```python\ndef g():\n  pass\n```\n```python\ndef f(a):\n  return a\n```", "g"),
        agent.extract_code_block("```\nprint(1)\n```"),
    ]
"""
    result = run_one(source, cfg)
    assert result.answer == ["\\frac{1}{2}", "1,234", "17", "4000", "def g():\n  pass", "print(1)"]


def test_failures_are_contained_per_sample_with_the_failing_line(cfg):
    source = """
import os

def solver(agent, task):
    if task == "raise":
        value = {}["missing"]
    if task == "exit":
        os._exit(0)
    if task == "hang":
        while True:
            pass
    return task.upper()
"""
    results = run(source, ["ok", "raise", "exit", "hang", "fine"], cfg)
    assert [r.answer for r in results] == ["OK", None, None, None, "FINE"]
    assert results[1].error["type"] == "KeyError"
    assert results[1].error["line"] == 'value = {}["missing"]' and results[1].error["lineno"] == 6
    assert results[2].error["type"] == "EarlyExit"
    assert results[3].error["type"] == "TimeoutError"


def test_load_errors_are_feedback_not_crashes(cfg):
    broken = run_one("def solver(agent, task)\n    return 1\n", cfg)
    assert broken.error["type"] == "SyntaxError" and broken.error["lineno"] == 1
    missing = run_one("def solve(agent, task):\n    return 1\n", cfg)
    assert missing.error["type"] == "NameError" and "solver" in missing.error["message"]
    top_level = run_one("x = 1 / 0\ndef solver(agent, task):\n    return 1\n", cfg)
    assert top_level.error["type"] == "ZeroDivisionError" and top_level.error["line"] == "x = 1 / 0"


def test_check_runs_the_module_but_never_the_solver(cfg):
    """``check()`` finds what compiling misses (an exception when the module runs, no ``solver``, a
    module that never finishes) in a job of its own, and never calls the solver or the host."""

    def no_calls(request):
        raise AssertionError("check() must not call the executor")

    async def check(source, **kwargs):
        async with WorkflowSandbox(source, CallableHost(no_calls), cfg) as box:
            return await box.check(**kwargs)

    solver = "def solver(agent, task):\n    return agent.call_llm('hi')[0]\n"
    assert asyncio.run(check(solver)) is None
    error = asyncio.run(check("raise KeyError('W4S_SECRET')\n" + solver))
    assert error["type"] == "KeyError" and error["lineno"] == 1
    assert asyncio.run(check("def solve(agent, task):\n    return 1\n"))["type"] == "NameError"
    assert asyncio.run(check("def solver(agent, task)\n    return 1\n"))["type"] == "SyntaxError"
    slow = "import time\ntime.sleep(60)\n" + solver
    assert asyncio.run(check(slow, timeout_s=0.5))["type"] == "TimeoutError"


def test_samples_do_not_share_state(cfg):
    source = """
COUNT = []
def solver(agent, task):
    COUNT.append(task)
    open("mine.txt", "a").write(task)
    return [len(COUNT), open("mine.txt").read()]
"""
    assert [r.answer for r in run(source, ["a", "b", "c"], cfg)] == [[1, "a"], [1, "b"], [1, "c"]]


def test_samples_run_concurrently_while_waiting_on_the_executor(cfg):
    """Calls of different samples are in flight together: each call waits (up to a deadline) until
    six are, which only happens when more than one sample (three threads each) runs at a time."""
    state = {"in_flight": 0, "peak": 0}
    enough = asyncio.Event()

    async def slow(request):
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        if state["in_flight"] >= 6:
            enough.set()
        try:
            await asyncio.wait_for(enough.wait(), 10)
        except TimeoutError:
            pass
        finally:
            state["in_flight"] -= 1
        return ["x"]

    source = """
from concurrent.futures import ThreadPoolExecutor
def solver(agent, task):
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda i: agent.call_llm(f"q{i}")[0], range(3)))
    return "".join(replies)
"""
    cfg.timeout_s = 30
    results = run(source, list(range(8)), cfg, CallableHost(slow), concurrency=8)
    assert [r.answer for r in results] == ["xxx"] * 8
    assert sum(r.llm_calls for r in results) == 24
    assert state["peak"] >= 6


def test_output_is_captured_and_truncated(cfg):
    cfg.output_bytes = 1000
    source = """
import sys
def solver(agent, task):
    print("start")
    for _ in range(2000):
        sys.stdout.write("y" * 1000)
    print("error text", file=sys.stderr)
    return "done"
"""
    result = run_one(source, cfg)
    assert result.answer == "done"
    assert result.output.startswith("start\nyyy")
    assert result.output.endswith("[output truncated at 1000 bytes]")
    assert len(result.output) < 1100


def test_answers_cross_as_plain_data(cfg):
    source = """
def solver(agent, task):
    return {"answer": {"t": (1, 2), "s": {3}, 4: b"x", "big": 10 ** 30}}
"""
    assert run_one(source, cfg).answer == {"t": (1, 2), "s": {3}, 4: b"x", "big": 10**30}


def test_infrastructure_errors_from_the_host_stop_the_run(cfg):
    from w4s.errors import InfrastructureError

    def down(request):
        raise InfrastructureError("executor unreachable at http://127.0.0.1:1")

    with pytest.raises(InfrastructureError, match="executor unreachable"):
        run_one("def solver(agent, task):\n    return agent.call_llm(task)\n", cfg, host=CallableHost(down))


def test_sample_result_is_json_friendly(cfg):
    result = run_one("def solver(agent, task):\n    return 1\n", cfg)
    assert json.loads(json.dumps(result.error)) is None and result.ok


def test_sandbox_restarts_if_it_dies(cfg):
    async def main():
        async with WorkflowSandbox("def solver(agent, task):\n    return task\n", echo_host(), cfg) as box:
            first = await box.run("a")
            box._box._proc.kill()
            box._box._proc.wait()
            await asyncio.sleep(0.2)
            second = await box.run("b")
            return first, second

    first, second = asyncio.run(main())
    assert (first.answer, second.answer) == ("a", "b")


def test_concurrent_calls_from_threads_get_their_own_replies(cfg):
    """Replies arrive in the reverse order of the requests; each thread still gets its own."""

    async def reverse(request):
        index = int(request["messages"][-1]["content"][1:])
        await asyncio.sleep(0.05 * (6 - index))
        return [f"reply to q{index}"]

    source = """
import threading
def solver(agent, task):
    out = [None] * 6
    def ask(i):
        out[i] = agent.call_llm(f"q{i}")[0]
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out
"""
    result = run_one(source, cfg, host=CallableHost(reverse))
    assert result.answer == [f"reply to q{i}" for i in range(6)]


def test_tasks_larger_than_the_socket_buffer_arrive_whole(cfg):
    task = "x" * 3_000_000 + "end"
    result = run_one("def solver(agent, task):\n    return [len(task), task[-3:]]\n", cfg, task=task)
    assert result.answer == [len(task), "end"]
