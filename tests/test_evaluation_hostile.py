"""Evaluations a hostile or careless workflow must not bend: budgets, answers, hidden tests, settings.

Each test runs a real evaluation (the CLI a user runs, or the library) against the scripted
executor, and checks that the score, the usage and the JSON say exactly what happened.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from tests.test_evaluation import evaluate_args, run_evaluation, w4s
from w4s.feedback import build_feedback
from w4s.sandbox.config import SandboxConfig
from w4s.tasks import get_task


def workflow_file(tmp_path, body: str, name: str = "workflow.py"):
    path = tmp_path / name
    path.write_text(
        "import threading, time\n\ndef solver(agent, task):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )
    return str(path)


def result_json(tmp_path) -> dict:
    return json.loads((tmp_path / "result.json").read_text())


# --- budgets ---------------------------------------------------------------------------------------


def test_a_workflow_flooding_the_executor_gets_no_more_than_the_budget(executor_server, tmp_path, data_dir):
    executor_server.script(latency_ms=50)
    flood = workflow_file(
        tmp_path,
        """
        def ask():
            try:
                agent.call_llm(task, num_of_response=32, max_completion_tokens=10 ** 9)
            except Exception:
                pass
        threads = [threading.Thread(target=ask) for _ in range(60)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return '0'
        """,
    )
    done = w4s(
        "evaluate",
        flood,
        "--task",
        "gsm8k",
        "--limit",
        "3",
        "--concurrency",
        "1",
        "--budget-calls",
        "1",
        "--sandbox-max-processes",
        "128",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path, "--executor-cache-path", "off"),
    )
    assert done.returncode == 0, done.stderr
    result = result_json(tmp_path)
    stats = executor_server.stats()
    assert stats["requests"] == 1 and result["usage"]["llm_calls"] == 1
    assert stats["max_n_seen"] == 32 and stats["max_tokens_seen"] == 2048  # the executor's caps, not 1e9
    assert result["budget_exhausted"] == "the call budget (1) is spent" and result["complete"] is False
    assert [s["not_run"] for s in result["samples"]] == [True, True, True]


def test_a_sample_stopped_by_the_budget_is_not_run_rather_than_wrong(executor_server, tmp_path, data_dir):
    """The workflow swallows the refusal and answers anyway: that answer is not its result."""
    task = get_task("gsm8k")
    samples = task.load("validation", data_dir)[:4]
    executor_server.script(default="The answer is 1.")
    source = textwrap.dedent(
        """
        def solver(agent, task):
            try:
                agent.call_llm(task)
                return agent.extract_answer_str(agent.call_llm(task)[0])
            except Exception:
                return '0'
        """
    )
    result = asyncio.run(
        run_evaluation(source, task, executor_server, samples, concurrency=1, budget_calls=3)
    )
    assert [o.not_run for o in result.samples] == [False, True, True, True]
    assert result.samples[1].error.startswith("not run: stopped while it ran, the call budget (3) is spent")
    assert not result.complete and result.score == result.samples[0].score
    assert executor_server.stats()["requests"] == 3


# --- what comes back from the executor and the workflow ----------------------------------------------


def test_an_executor_reply_larger_than_a_frame_is_an_error_for_that_call(executor_server, tmp_path, data_dir):
    task = get_task("gsm8k")
    executor_server.script(reply_size=17 * 1024 * 1024)
    source = textwrap.dedent(
        """
        def solver(agent, task):
            try:
                agent.call_llm(task)
            except Exception as exc:
                return str(exc)[:200]
            return 'delivered'
        """
    )
    samples = task.load("validation", data_dir)[:1]
    result = asyncio.run(
        run_evaluation(source, task, executor_server, samples, sandbox=SandboxConfig(timeout_s=120))
    )
    assert result.samples[0].error is None and result.samples[0].answer.startswith("ReplyTooLarge")
    assert result.usage.llm_calls == 1  # billed, and reported to the workflow at once


ODD_ANSWERS = {
    "huge int": "10 ** 400",
    "huge negative": "-(10 ** 5000)",
    "nan": "float('nan')",
    "inf string": "'1e999'",
    "digits": "'9' * 100_000",
    "nested": "[[[[[[[[[[1]]]]]]]]]]",
    "bytes": "b'42'",
    "complex": "complex(1, 2)",
    "big string": "'x' * (8 * 1024 * 1024)",
    "dict": "{(1, 2): {3}}",
}


def test_odd_answers_score_zero_and_the_run_goes_on(executor_server, tmp_path, data_dir):
    odd = list(ODD_ANSWERS.values())
    source = workflow_file(
        tmp_path,
        f"""
        answers = [{", ".join(odd)}]
        return answers[len(task) % {len(odd)}]
        """,
    )
    for name in ("gsm8k", "drop"):
        done = w4s(
            "evaluate",
            source,
            "--task",
            name,
            "--limit",
            "40",
            "--data-dir",
            str(data_dir),
            *evaluate_args(executor_server, tmp_path),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = result_json(tmp_path)
        assert result["samples_run"] == 40 and all(0 <= s["score"] <= 1 for s in result["samples"])
        assert result["score"] <= 0.1  # none of these is a right answer (a DROP span may overlap by chance)


# --- hidden tests --------------------------------------------------------------------------------------

LEAKY_CODE = """
def {entry}(*args, **kwargs):
    name = 'Le' + 'ak_' + ''.join(c if c.isalnum() else '_' for c in repr(args))[:300]
    raise type(name, (Exception,), {{}})(repr(args))
"""


def test_hidden_test_inputs_reach_neither_results_nor_feedback(executor_server, tmp_path, data_dir):
    task = get_task("mbpp")
    samples = task.load("validation", data_dir)[:6]
    codes = {s.prompt: LEAKY_CODE.format(entry=s.extra["entry_point"]) for s in samples}
    source = f"CODES = {codes!r}\n\ndef solver(agent, task):\n    return CODES[task]\n"
    result = asyncio.run(run_evaluation(source, task, executor_server, samples))
    assert result.score == 0 and all(o.error in ("error", "failed") for o in result.samples)
    published = json.dumps(result.to_dict()) + build_feedback(result, samples)
    assert "Leak_" not in published
    for sample in samples:  # not one literal argument of a hidden assertion
        hidden = sample.extra["test"].split("assert ", 2)[1].split("==")[0]
        arguments = hidden[hidden.index("(") + 1 : hidden.rindex(")")]
        assert len(arguments) < 4 or arguments not in published, arguments


# --- the sandbox it ran in, and settings that must take effect -----------------------------------


def test_the_isolation_applied_is_recorded_and_degraded_isolation_needs_consent(
    executor_server, tmp_path, data_dir
):
    base = ["evaluate", "cot", "--task", "gsm8k", "--limit", "1", "--data-dir", str(data_dir)]
    done = w4s(*base, *evaluate_args(executor_server, tmp_path))
    assert done.returncode == 0, done.stderr
    assert result_json(tmp_path)["sandbox"]["backend"] == "bwrap"
    assert result_json(tmp_path)["sandbox"]["degraded"] == []
    refused = w4s(*base, "--sandbox-isolation", "process", *evaluate_args(executor_server, tmp_path))
    assert refused.returncode == 3 and len(refused.stderr.strip().splitlines()) == 1
    assert "--allow-degraded-sandbox" in refused.stderr and "Traceback" not in refused.stderr
    refused = w4s(*base, "--sandbox-seccomp", "false", *evaluate_args(executor_server, tmp_path))
    assert refused.returncode == 3 and "--allow-degraded-sandbox" in refused.stderr
    allowed = w4s(
        *base,
        "--sandbox-seccomp",
        "false",
        "--allow-degraded-sandbox",
        *evaluate_args(executor_server, tmp_path),
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "SANDBOX DEGRADED" in allowed.stderr
    assert result_json(tmp_path)["sandbox"]["degraded"] == ["seccomp filter (off)"]


def test_the_sample_time_limit_is_the_sandbox_timeout(executor_server, tmp_path, data_dir):
    sleeper = workflow_file(tmp_path, "time.sleep(3)\nreturn '1'\n")
    base = ["evaluate", sleeper, "--task", "gsm8k", "--limit", "1", "--data-dir", str(data_dir)]
    done = w4s(*base, "--sandbox-timeout-s", "1", *evaluate_args(executor_server, tmp_path))
    assert done.returncode == 0, done.stderr
    assert result_json(tmp_path)["samples"][0]["error"].startswith("TimeoutError")
    for bad in (["--sandbox-timeout-s", "inf"], ["--sandbox-timeout-s", "nan"], ["--timeout", "5"]):
        refused = w4s(*base, *bad, *evaluate_args(executor_server, tmp_path))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr


def test_an_unwritable_json_path_fails_before_anything_runs(executor_server, tmp_path, data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "2",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path)[:-2],
        "--json",
        str(blocker / "result.json"),
    )
    assert done.returncode == 2 and "cannot write --json" in done.stderr and "Traceback" not in done.stderr
    assert executor_server.stats()["requests"] == 0


def test_the_code_scoring_time_limit_takes_effect(executor_server, tmp_path, data_dir):
    task = get_task("mbpp")
    sample = task.load("validation", data_dir)[0]
    entry = sample.extra["entry_point"]
    slow = f"{sample.expected}\n_inner = {entry}\ndef {entry}(*args):\n    import time\n    time.sleep(1.5)\n    return _inner(*args)\n"
    source = f"def solver(agent, task):\n    return {slow!r}\n"
    default = asyncio.run(run_evaluation(source, task, executor_server, [sample]))
    tight = asyncio.run(
        run_evaluation(
            source, task, executor_server, [sample], sandbox=SandboxConfig(code_score_timeout_s=0.5)
        )
    )
    assert default.score == 1.0  # MBPP's own 10 s
    assert tight.score == 0.0 and tight.samples[0].error == "timeout"


@pytest.fixture(autouse=True)
def _quiet_executor(executor_server):
    executor_server.script(default="The answer is 0.")
