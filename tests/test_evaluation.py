"""`w4s evaluate` and the evaluation library against the scripted executor, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from w4s import workflows
from w4s.evaluation import EvaluationConfig, evaluate, select
from w4s.feedback import build_feedback
from w4s.llm.config import EndpointConfig
from w4s.llm.gateway import Gateway
from w4s.sandbox.config import SandboxConfig
from w4s.tasks import get_task

REVIEW = {
    "match": "Check every step|Look for bugs|Reviewer|Review:",
    "reply": '{"feedback": "fine", "correct": true}',
}


def math_rules(samples, correct=True):
    """Reply 'The answer is X' to each question (X right or wrong), keyed on the question text."""
    rules = [REVIEW]
    for s in samples:
        value = s.expected if correct else s.expected + 7
        reply = f"```python\ndef solution():\n    return {value!r}\n```\nSo the answer is {value:g}."
        rules.append({"match": re.escape(s.prompt[:200]), "reply": reply})
    return rules


def w4s(*args, timeout=300, env=None):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def evaluate_args(server, tmp_path, *more):
    return [
        "--executor-base-url",
        server.url,
        "--executor-cache-path",
        str(tmp_path / "cache.sqlite"),
        "--executor-backoff-s",
        "0.01",
        "--json",
        str(tmp_path / "result.json"),
        *more,
    ]


@pytest.fixture
def gsm8k_validation(data_dir):
    return get_task("gsm8k").load("validation", data_dir)


def test_json_contract_and_scores(executor_server, tmp_path, data_dir, gsm8k_validation):
    executor_server.script(rules=math_rules(gsm8k_validation))
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "12",
        "--seed",
        "3",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert {"task", "split", "score", "samples", "usage", "wall_seconds"} <= set(result)
    assert (result["task"], result["split"], result["score"]) == ("gsm8k", "validation", 1.0)
    assert len(result["samples"]) == 12
    assert {"id", "score", "answer", "error"} <= set(result["samples"][0])
    assert set(result["usage"]) >= {"llm_calls", "prompt_tokens", "completion_tokens", "cost_usd"}
    assert result["usage"]["llm_calls"] == 12 and result["usage"]["cost_usd"] > 0
    chosen = [s.id for s in select(gsm8k_validation, 12, 3)]
    assert [s["id"] for s in result["samples"]] == chosen


def test_wrong_executor_scores_zero(executor_server, tmp_path, data_dir, gsm8k_validation):
    executor_server.script(rules=math_rules(gsm8k_validation, correct=False))
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "8",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "result.json").read_text())["score"] == 0.0


def test_second_identical_evaluation_makes_no_calls(executor_server, tmp_path, data_dir, gsm8k_validation):
    executor_server.script(rules=math_rules(gsm8k_validation))
    args = [
        "evaluate",
        "cot_sc",
        "--task",
        "gsm8k",
        "--limit",
        "6",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path),
    ]
    assert w4s(*args).returncode == 0
    first = json.loads((tmp_path / "result.json").read_text())
    requests = executor_server.stats()["requests"]
    assert w4s(*args).returncode == 0
    second = json.loads((tmp_path / "result.json").read_text())
    assert executor_server.stats()["requests"] == requests
    assert second["usage"]["llm_calls"] == 0 and second["usage"]["cached_calls"] == 6
    assert [s["answer"] for s in second["samples"]] == [s["answer"] for s in first["samples"]]


def test_a_429_storm_finishes_with_every_sample_scored(executor_server, tmp_path, data_dir, gsm8k_validation):
    executor_server.script(
        rules=math_rules(gsm8k_validation), faults=[{"kind": "429", "count": 30, "retry_after": 0.05}]
    )
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "16",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path, "--executor-cache-path", "off"),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["score"] == 1.0 and result["samples_run"] == 16
    assert result["usage"]["retries"] == 30 and executor_server.stats()["requests"] == 46


def test_dead_endpoint_fails_fast_with_one_line(tmp_path, data_dir):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "20",
        "--data-dir",
        str(data_dir),
        "--executor-base-url",
        f"http://127.0.0.1:{port}/v1",
        "--executor-cache-path",
        "off",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert done.returncode == 3  # the run stopped: samples were not each marked failed after retries
    errors = [line for line in done.stderr.splitlines() if line.startswith("w4s: error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}/v1 is unreachable" in errors[0]
    assert not (tmp_path / "r.json").exists()


def test_budget_exhaustion_stops_with_partial_results_marked(
    executor_server, tmp_path, data_dir, gsm8k_validation
):
    executor_server.script(rules=math_rules(gsm8k_validation))
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "10",
        "--concurrency",
        "1",
        "--budget-calls",
        "4",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path, "--executor-cache-path", "off"),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["samples_run"] == 4 and result["budget_exhausted"] == "the call budget (4) is spent"
    assert [s["not_run"] for s in result["samples"]] == [False] * 4 + [True] * 6
    assert all(s["error"].startswith("not run: the call budget") for s in result["samples"][4:])
    # The score is over the samples that ran; the result says it is incomplete.
    assert result["score"] == 1.0 and result["complete"] is False
    assert executor_server.stats()["requests"] == 4


def test_a_dollar_budget_over_a_model_without_a_price_is_refused(executor_server, tmp_path, data_dir):
    """Calls to a model with no known price count as $0: a dollar budget over it would never stop
    them, so it is refused before any call; with a price table it holds."""
    executor_server.script(default="The answer is 4.")
    args = ["evaluate", "cot", "--task", "gsm8k", "--limit", "3", "--data-dir", str(data_dir)]
    more = ["--executor-model", "my-vllm-model", "--budget-usd", "0.001", "--executor-cache-path", "off"]
    done = w4s(*args, *evaluate_args(executor_server, tmp_path, *more))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("w4s: error: a dollar budget ($0.001) cannot hold")
    assert "'my-vllm-model'" in done.stderr and "--executor-prices-path" in done.stderr
    assert executor_server.stats()["requests"] == 0
    prices = tmp_path / "prices.yaml"
    prices.write_text("my-vllm-model: {input: 1000, output: 1000}\n")
    done = w4s(*args, *evaluate_args(executor_server, tmp_path, *more, "--executor-prices-path", str(prices)))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["budget_exhausted"] and result["samples_run"] < 3


def test_bad_arguments_give_one_clear_line(tmp_path, data_dir):
    cases = [
        (
            ["evaluate", "nope.py", "--task", "gsm8k", "--data-dir", str(data_dir)],
            "neither a file nor a shipped",
        ),
        (
            ["evaluate", "cot", "--task", "gsm8k", "--split", "train", "--data-dir", str(data_dir)],
            "use validation or test",
        ),
        (["evaluate", "cot", "--task", "gsm8k", "--data-dir", str(tmp_path)], "gsm8k/test.jsonl is missing"),
        (
            ["evaluate", "cot", "--task", "gsm8k", "--limit", "0", "--data-dir", str(data_dir)],
            "limit=0 is invalid",
        ),
    ]
    for args, message in cases:
        done = w4s(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines()[-1].startswith("w4s: error:") and message in done.stderr, (
            done.stderr
        )
    unknown = w4s("evaluate", "cot", "--task", "gsm9k")
    assert unknown.returncode == 2 and "invalid choice: 'gsm9k'" in unknown.stderr


async def run_evaluation(source, task, server, samples, sandbox=None, executor=None, **cfg):
    """``evaluate`` in-process against the scripted server; ``executor``: EndpointConfig overrides."""
    gateway = Gateway(EndpointConfig(base_url=server.url, cache_path="off", **(executor or {})))
    try:
        return await evaluate(
            source,
            task,
            gateway,
            EvaluationConfig(**cfg),
            samples=samples,
            sandbox=sandbox or SandboxConfig(timeout_s=20),
        )
    finally:
        await gateway.aclose()


@pytest.mark.parametrize("name", sorted(workflows.examples("math")))
def test_math_examples_run(name, executor_server, tmp_path, gsm8k_validation):
    task = get_task("gsm8k")
    samples = gsm8k_validation[:3]
    executor_server.script(rules=math_rules(samples))
    result = asyncio.run(run_evaluation(workflows.examples("math")[name], task, executor_server, samples))
    assert [s.error for s in result.samples] == [None] * 3
    assert result.score == 1.0


@pytest.mark.parametrize("name", sorted(workflows.examples("code")))
def test_code_examples_run(name, executor_server, tmp_path, data_dir):
    task = get_task("humaneval")
    samples = task.load("validation", data_dir)[:3]
    rules = [REVIEW] + [
        {"match": re.escape(s.prompt[:300]), "reply": f"```python\n{s.prompt}{s.expected}\n```"}
        for s in samples
    ]
    executor_server.script(rules=rules)
    result = asyncio.run(run_evaluation(workflows.examples("code")[name], task, executor_server, samples))
    assert [s.error for s in result.samples] == [None] * 3 and result.score == 1.0


@pytest.mark.parametrize("name", sorted(workflows.examples("reading")))
def test_reading_examples_run(name, executor_server, tmp_path, data_dir):
    task = get_task("drop")
    samples = task.load("validation", data_dir)[:3]
    rules = [REVIEW] + [
        {"match": re.escape(s.prompt[-200:]), "reply": f"Reasoning...\nAnswer: {s.expected.split('|')[0]}"}
        for s in samples
    ]
    executor_server.script(rules=rules)
    result = asyncio.run(run_evaluation(workflows.examples("reading")[name], task, executor_server, samples))
    assert [s.error for s in result.samples] == [None] * 3 and result.score == 1.0


def test_feedback_text(executor_server, tmp_path, gsm8k_validation):
    task = get_task("gsm8k")
    samples = gsm8k_validation[:12]
    rules = math_rules(samples[:4]) + math_rules(samples[4:8], correct=False)[1:]
    executor_server.script(rules=rules, default="I do not know")
    source = (
        'def solver(agent, task):\n    reply = agent.call_llm(task)[0]\n    if "know" in reply:\n'
        '        raise ValueError("no answer found")\n    return agent.extract_answer_str(reply)\n'
    )
    result = asyncio.run(run_evaluation(source, task, executor_server, samples))
    text = build_feedback(result, samples)
    assert text.startswith("Accuracy on the validation set: 33.3% (4 of 12 samples).")
    assert "Here are 8 of the 8 samples it got wrong or failed:" in text
    assert text.count("### Case") == 8
    assert f"Expected answer: {samples[4].expected}" in text
    assert "The workflow failed: ValueError: no answer found" in text
    assert 'Failing line of the workflow: `raise ValueError("no answer found")`' in text
    assert len(build_feedback(result, samples, max_cases=3).split("### Case")) == 4
    result.split = "test"
    with pytest.raises(ValueError, match="validation split only"):
        build_feedback(result, samples)


def test_code_feedback_never_quotes_hidden_tests(executor_server, tmp_path, data_dir):
    task = get_task("humaneval")
    samples = task.load("validation", data_dir)[:2]
    executor_server.script(default="```python\ndef wrong():\n    return 0\n```")
    source = "def solver(agent, task):\n    return agent.extract_code_block(agent.call_llm(task)[0])\n"
    result = asyncio.run(run_evaluation(source, task, executor_server, samples))
    text = build_feedback(result, samples)
    assert result.score == 0 and "failed the hidden tests" in text
    for sample in samples:
        assert sample.extra["test"].strip().splitlines()[-1].strip() not in text
