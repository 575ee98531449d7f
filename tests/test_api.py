"""The public API, driven as a user's script would: no CLI, only `import w4s`."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import w4s
from tests.test_evaluation import REVIEW, math_rules
from w4s.llm.gateway import Gateway


class Recorder(w4s.Callback):
    """Every event, in order, with what it carried."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def on_run_start(self, run):
        self.events.append(("on_run_start", run))

    def on_evaluation_start(self, info):
        self.events.append(("on_evaluation_start", info))

    def on_sample_end(self, outcome, progress):
        self.events.append(("on_sample_end", (outcome, progress)))

    def on_evaluation_end(self, result):
        self.events.append(("on_evaluation_end", result))

    def on_candidate_end(self, record):
        self.events.append(("on_candidate_end", record))

    def on_turn_end(self, turn):
        self.events.append(("on_turn_end", turn))

    def on_log(self, metrics):
        self.events.append(("on_log", metrics))

    def on_run_end(self, result):
        self.events.append(("on_run_end", result))

    def on_close(self):
        self.events.append(("on_close", None))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


class Broken(w4s.Callback):
    def on_sample_end(self, outcome, progress):
        raise RuntimeError("this callback is broken")


class Exits(w4s.Callback):
    def on_evaluation_start(self, info):
        raise SystemExit("this callback calls sys.exit")


@pytest.fixture
def gsm8k(data_dir):
    return w4s.load_task("gsm8k", data_dir)


def test_evaluate_with_callbacks(executor_server, gsm8k):
    samples = gsm8k.load("validation")
    executor_server.script(rules=math_rules(samples[:40]))
    recorder = Recorder()
    result = w4s.evaluate(
        "cot",
        gsm8k,
        w4s.EvaluationConfig(limit=6, concurrency=3),
        w4s.ExecutorConfig(base_url=executor_server.url, cache_path="off"),
        callbacks=[recorder],
    )
    assert isinstance(result, w4s.EvaluationResult) and result.complete and len(result.samples) == 6
    kinds = recorder.kinds()
    assert kinds[:2] == ["on_run_start", "on_evaluation_start"] and kinds[-3:] == [
        "on_evaluation_end",
        "on_run_end",
        "on_close",
    ]
    progress = [value[1] for kind, value in recorder.events if kind == "on_sample_end"]
    assert [p.done for p in progress] == [1, 2, 3, 4, 5, 6] and progress[-1].total == 6
    assert recorder.events[-2][1] is result
    # The result as JSON and back.
    again = w4s.EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == result.to_dict()


def evaluate_beside(bad_callback, executor_server, gsm8k, caplog, limit: int):
    """Evaluate ``cot`` on ``limit`` samples with ``bad_callback`` first and a Recorder after it;
    the result and the recorder (callback warnings are captured by ``caplog``)."""
    executor_server.script(rules=math_rules(gsm8k.load("validation")[:40]))
    recorder = Recorder()
    with caplog.at_level(logging.WARNING, logger="w4s.callbacks"):
        result = w4s.evaluate(
            "cot",
            gsm8k,
            w4s.EvaluationConfig(limit=limit),
            w4s.ExecutorConfig(base_url=executor_server.url, cache_path="off"),
            callbacks=[bad_callback, recorder],
        )
    return result, recorder


def test_a_failing_callback_is_reported_and_the_run_goes_on(executor_server, gsm8k, caplog):
    result, recorder = evaluate_beside(Broken(), executor_server, gsm8k, caplog, limit=4)
    assert result.complete and len(result.samples) == 4
    assert recorder.kinds().count("on_sample_end") == 4  # the callback after the broken one heard all
    reports = [r for r in caplog.records if "Broken.on_sample_end failed" in r.getMessage()]
    assert len(reports) == 1 and "this callback is broken" in reports[0].getMessage()  # once, not per sample


def test_a_callback_that_exits_is_reported_and_the_others_still_hear_every_event(
    executor_server, gsm8k, caplog
):
    """SystemExit is no Exception: unchecked, it ended the delivery thread, and every later event
    (MLflow's on_run_end among them) was silently lost for every callback."""
    result, recorder = evaluate_beside(Exits(), executor_server, gsm8k, caplog, limit=2)
    assert result.complete
    kinds = recorder.kinds()
    assert kinds[-2:] == ["on_run_end", "on_close"] and kinds.count("on_sample_end") == 2
    assert any("Exits.on_evaluation_start failed" in r.getMessage() for r in caplog.records)


def test_two_evaluations_in_one_loop_keep_their_own_budgets(executor_server, gsm8k):
    """Concurrent evaluations on one shared gateway: each is held to its budget and reports its usage."""
    executor_server.script(rules=[REVIEW], default="The answer is 1.", latency_ms=20)
    one_call = w4s.Workflow.from_source(
        "def solver(agent, task):\n    return agent.call_llm(task)[0]\n", "one"
    )

    async def both():
        async with Gateway(w4s.ExecutorConfig(base_url=executor_server.url, cache_path="off")) as gateway:
            return await asyncio.gather(
                w4s.aevaluate(
                    one_call,
                    gsm8k,
                    w4s.EvaluationConfig(limit=8, concurrency=2, budget_calls=3),
                    gateway=gateway,
                ),
                w4s.aevaluate(
                    one_call,
                    gsm8k,
                    w4s.EvaluationConfig(limit=8, concurrency=2, budget_calls=6),
                    gateway=gateway,
                ),
            )

    small, large = asyncio.run(both())
    assert (small.usage.llm_calls, large.usage.llm_calls) == (3, 6)
    assert sum(not s.not_run for s in small.samples) == 3 and sum(not s.not_run for s in large.samples) == 6
    assert executor_server.stats()["requests"] == 9


def test_load_task_and_workflow(data_dir, tmp_path):
    task = w4s.load_task("mbpp", data_dir)
    assert task.family == "code" and len(task.load("validation")) == 86  # data_dir is remembered
    elsewhere = w4s.load_task(task, tmp_path)  # a Task given with a folder: a copy reads there
    assert elsewhere.data_dir == tmp_path and task.data_dir == Path(data_dir).resolve()
    assert w4s.load_workflow("cot", task).name == "code/cot"
    path = tmp_path / "mine.py"
    path.write_text("def solver(agent, task):\n    return 1\n")
    assert w4s.load_workflow(path).source.startswith("def solver")
    with pytest.raises(w4s.ConfigError, match="name the task to use a shipped example"):
        w4s.load_workflow("cot")
    # Without a task, a shipped example by the name it is reported under (family/name).
    assert w4s.load_workflow("math/cot") == w4s.load_workflow("cot", "gsm8k")
    assert w4s.load_workflow("code/cot", task).name == "code/cot"
    with pytest.raises(w4s.ConfigError, match="shipped math example"):
        w4s.load_workflow("math/nope")
    with pytest.raises(w4s.ConfigError, match="unknown task 'gsm9k'"):
        w4s.load_task("gsm9k")


def test_configs_round_trip_and_refuse_what_they_cannot_read():
    for cfg in (
        w4s.EvaluationConfig(limit=3, budget_usd=0.5),
        w4s.OptimizeConfig(turns=2, reward="continuous"),
        w4s.ExecutorConfig(model="gpt-4o-mini", seed=None),
        w4s.SandboxConfig(timeout_s=5.0, allow_degraded=True),
        w4s.TrainConfig(turns=[1, 2], lora=False),
    ):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert data["version"] == 1 and type(cfg).from_dict(data) == cfg
    with pytest.raises(w4s.ConfigError, match="not one this w4s reads"):
        w4s.EvaluationConfig.from_dict({"version": 99})
    with pytest.raises(w4s.ConfigError, match="unknown EvaluationConfig field"):
        w4s.EvaluationConfig.from_dict({"version": 1, "limti": 3})
    with pytest.raises(w4s.ConfigError, match="limit=0 is invalid"):
        w4s.EvaluationConfig.from_dict({"limit": 0})


def test_the_public_names_are_the_exported_ones():
    assert set(w4s.__all__) - {"__version__"} == set(w4s._EXPORTS)
    for name in w4s._EXPORTS:
        assert getattr(w4s, name) is not None


def test_importing_w4s_is_light():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, w4s; print(sorted(m for m in ('openai', 'torch', 'rich') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_the_script_of_docs_api_md(executor_server, data_dir, tmp_path):
    """The three stages through the API only, as docs/api.md shows them: evaluate, optimize, train."""
    from tests.optimizer.scenario import script
    from tests.training import tiny

    executor_server.script(**script(data_dir, 4))
    endpoint = w4s.ExecutorConfig(base_url=executor_server.url, cache_path="off")

    task = w4s.load_task("gsm8k", data_dir)
    result = w4s.evaluate("cot", task, w4s.EvaluationConfig(limit=4), endpoint)
    optimizing, training = Recorder(), Recorder()
    run = w4s.optimize(
        task,
        w4s.OptimizeConfig(turns=1, candidates=3, validation_limit=4, test_limit=4),
        out_dir=tmp_path / "run",
        meta=w4s.MetaAgentConfig(base_url=executor_server.url),
        executor=endpoint,
        sandbox=w4s.SandboxConfig(timeout_s=1.5),
        callbacks=[optimizing],
    )
    trained = w4s.train(
        run.paths.trajectories,
        w4s.TrainConfig(
            base_model=str(tiny.save_base(tmp_path / "base")), output=str(tmp_path / "ckpt"), max_steps=2
        ),
        callbacks=[training],
    )

    assert result.complete and len(result.samples) == 4
    assert run.stopped is None and run.best is not None and len(run.turns) == 1
    assert [c.reward for c in run.turns[0].candidates] == [1.0, 1.0, -0.1]
    assert w4s.OptimizeResult.load(tmp_path / "run") == run
    assert trained.steps == 2 and trained.examples == 3 and w4s.TrainResult.load(tmp_path / "ckpt") == trained

    # The callbacks heard each stage in order: the run's start, its work, its result, the close.
    kinds = optimizing.kinds()
    assert kinds[0] == "on_run_start" and kinds[-2:] == ["on_run_end", "on_close"]
    assert optimizing.events[0][1].kind == "optimize" and optimizing.events[-2][1] is run
    assert kinds.count("on_evaluation_start") == kinds.count("on_evaluation_end") > 0
    turn = kinds.index("on_turn_end")
    assert kinds.count("on_turn_end") == 1 and kinds[:turn].count("on_candidate_end") == 3
    assert optimizing.events[turn][1].turn == 1
    kinds = training.kinds()
    assert kinds[0] == "on_run_start" and kinds[-2:] == ["on_run_end", "on_close"]
    assert training.events[0][1].kind == "train" and training.events[-2][1] is trained
    steps = [metrics["step"] for kind, metrics in training.events if kind == "on_log"]
    assert steps and steps == sorted(steps) and steps[-1] <= 2


def test_a_sync_call_inside_a_running_loop_names_the_async_form():
    """In a notebook or an async app an event loop is already running: the sync forms say which
    async form to await, before they start anything."""

    async def inside():
        for sync, name in ((w4s.evaluate, "aevaluate"), (w4s.optimize, "aoptimize"), (w4s.run, "arun")):
            with pytest.raises(
                w4s.ConfigError, match=rf"running event loop .* `await w4s\.{name}\(\.\.\.\)`"
            ):
                sync("cot", "gsm8k")

    asyncio.run(inside())
