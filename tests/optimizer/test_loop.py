"""The turn loop against a scripted meta-agent and executor: records, rewards, selection, repairs."""

from __future__ import annotations

import json

import pytest

import w4s
from tests.optimizer.scenario import HALF, LOOP, script
from w4s.errors import ConfigError
from w4s.llm.config import EndpointConfig
from w4s.llm.gateway import Gateway
from w4s.optimizer.loop import OptimizeConfig, Optimizer
from w4s.optimizer.rewards import reward
from w4s.sandbox.config import SandboxConfig
from w4s.tasks import get_task

LIMIT = 4


def optimize(server, out, data_dir, resume=False, max_tokens=None, **overrides) -> dict:
    """One episode through the public API (``w4s.optimize``); its result as the dict of report.json."""
    limits = {} if max_tokens is None else {"max_completion_tokens": max_tokens}
    settings = {"turns": 2, "candidates": 5, "validation_limit": LIMIT, "test_limit": LIMIT}
    result = w4s.optimize(
        "gsm8k",
        OptimizeConfig(**{**settings, **overrides}),
        out_dir=out / "run",
        meta=EndpointConfig(base_url=server.url, cache_path=str(out / "meta.sqlite")),
        executor=EndpointConfig(base_url=server.url, cache_path=str(out / "executor.sqlite"), **limits),
        sandbox=SandboxConfig(timeout_s=1.5),
        data_dir=data_dir,
        resume=resume,
    )
    assert result.to_dict() == json.loads((out / "run" / "report.json").read_text())
    return result.to_dict()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    from tests.conftest import ScriptedServer

    server = ScriptedServer(script(data_dir, LIMIT))
    out = tmp_path_factory.mktemp("optimize")
    try:
        report = optimize(server, out, data_dir)
        stats = {**server.stats(), "port": server.port}
    finally:
        server.stop()
    records = [json.loads(line) for line in (out / "run" / "trajectories.jsonl").read_text().splitlines()]
    return report, records, out / "run", stats


def test_every_candidate_is_recorded_once(finished):
    _, records, _, _ = finished
    assert [(r["turn"], r["candidate"]) for r in records] == [(t, c) for t in (1, 2) for c in range(5)]
    for r in records:
        assert {
            "episode",
            "turn",
            "candidate",
            "prompt_messages",
            "reply",
            "workflow",
            "valid_score",
            "reward",
            "selected",
            "error",
            "usage",
        } <= set(r)


def test_scores_repairs_and_errors(finished):
    _, records, _, _ = finished
    turn1 = {r["candidate"]: r for r in records if r["turn"] == 1}
    assert turn1[0]["valid_score"] == 0.5 and turn1[0]["workflow"].strip() == HALF.strip()
    # Two repairs: a syntax error, then a runtime NameError, then a working workflow.
    assert [step["error"].split(":")[0] for step in turn1[1]["repairs"]] == ["SyntaxError", "NameError"]
    assert turn1[1]["repairs"][1]["line"] == "return undefined_name_RUNTIME_MARKER"
    assert "SYNTAX_MARKER" in turn1[1]["reply"] and turn1[1]["valid_score"] == 0.5
    # No code block at all, three times.
    assert turn1[2]["workflow"] is None and len(turn1[2]["repairs"]) == 3
    assert turn1[2]["error"] == "no ```python block defining solver(agent, task)"
    # A workflow that loops forever is killed on time and repaired (it keeps looping).
    assert turn1[3]["workflow"] is None and turn1[3]["error"].startswith("TimeoutError")
    assert "LOOP_MARKER" in turn1[3]["final_reply"] and LOOP.strip() in turn1[3]["final_reply"]
    assert turn1[4]["valid_score"] == 0.0 and turn1[4]["repairs"] == []


def test_rewards_follow_the_rule_by_hand(finished):
    report, records, _, _ = finished
    best = previous = max(report["baselines"].values())
    assert best == 0.0  # the executor answers only bare questions, so no example workflow scores
    for turn in (1, 2):
        turn_records = [r for r in records if r["turn"] == turn]
        for r in turn_records:
            assert r["reward"] == pytest.approx(reward(r["valid_score"], best, previous))
        selected = [r for r in turn_records if r["selected"]]
        assert len(selected) == 1
        top = max(r["valid_score"] for r in turn_records if r["valid_score"] is not None)
        assert selected[0]["valid_score"] == top and selected[0]["candidate"] == min(
            r["candidate"] for r in turn_records if r["valid_score"] == top
        )
        previous = selected[0]["valid_score"]
        best = max(best, previous)
    assert [r["reward"] for r in records if r["turn"] == 2] == [1.0, -0.1, 0.0, -0.1, 0.0]


def test_repair_prompts_carry_only_the_error(finished):
    _, records, _, _ = finished
    repaired = next(r for r in records if r["turn"] == 1 and r["candidate"] == 1)
    assert len(repaired["prompt_messages"]) == 2  # turn 1: system + task with examples
    turn2 = next(r for r in records if r["turn"] == 2)
    roles = [m["role"] for m in turn2["prompt_messages"]]
    assert roles == ["system", "user", "assistant", "user"]  # the selected reply and its feedback
    assert "# Result of your last workflow" in turn2["prompt_messages"][-1]["content"]
    assert "Accuracy on the validation set: 50.0%" in turn2["prompt_messages"][-1]["content"]


def test_outputs_and_test_split_scored_once(finished):
    report, _, run, stats = finished
    for name in ("trajectories.jsonl", "best_workflow.py", "report.json", "report.md", "curve.png"):
        assert (run / name).stat().st_size > 0
    assert report["best"]["name"] == "turn 2 candidate 0" and report["best"]["valid_score"] == 1.0
    assert report["best"]["test_score"] == 1.0 and report["best"]["test_samples"] == LIMIT
    assert "def solver" in (run / "best_workflow.py").read_text()
    assert json.loads((run / "report.json").read_text())["turns"][1]["selected"] == 0
    assert not (run / ".turn-staging.jsonl").exists()


def test_feedback_never_shows_test_questions(finished, data_dir):
    from w4s.evaluation import select
    from w4s.tasks import get_task

    _, records, _, _ = finished
    test_questions = [s.prompt for s in select(get_task("gsm8k").load("test", data_dir), LIMIT, 0)]
    feedbacks = [r["feedback"] for r in records if r["feedback"]]
    prompts = [m["content"] for r in records for m in r["prompt_messages"]]
    assert feedbacks and all(q[:80] not in text for q in test_questions for text in feedbacks + prompts)


def test_the_same_seed_and_cache_give_the_same_trajectory(finished, tmp_path, data_dir):
    from tests.conftest import ScriptedServer

    _, records, run, stats = finished
    server = ScriptedServer(script(data_dir, LIMIT), port=stats["port"])  # the cache keys on the endpoint
    try:
        for name in ("executor.sqlite", "meta.sqlite"):
            (tmp_path / name).write_bytes((run.parent / name).read_bytes())
        optimize(server, tmp_path, data_dir)
        assert server.stats()["requests"] == 0  # everything came from the cache
    finally:
        server.stop()
    again = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert essence(again) == essence(records)


def test_an_existing_run_needs_resume(finished, data_dir):
    _, _, run, _ = finished
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Optimizer(
            get_task("gsm8k"),
            OptimizeConfig(),
            Gateway(EndpointConfig(base_url="http://127.0.0.1:9/v1", cache_path="off")),
            Gateway(EndpointConfig(base_url="http://127.0.0.1:9/v1", cache_path="off")),
            run,
            data_dir=data_dir,
        )


def essence(rows):
    return [
        (r["turn"], r["candidate"], r["workflow"], r["valid_score"], r["reward"], r["selected"]) for r in rows
    ]


GREEDY = (
    "def solver(agent, task):\n    # GREEDY: asks for far more than the executor's caps allow\n"
    "    replies = agent.call_llm(task, num_of_response=20, max_completion_tokens=10 ** 9)\n"
    "    return agent.extract_answer_str(replies[0])\n"
)


def test_a_budget_stop_commits_only_what_happened_and_resume_finishes_the_run(tmp_path, data_dir):
    """Stopped by its budget while a candidate is being evaluated, a run keeps only the candidates whose
    evaluation completed (no deflated score or reward), never spends beyond its budget, persists its
    spend, and a resume ends with exactly the trajectory of a run that was never stopped."""
    from tests.conftest import ScriptedServer
    from tests.optimizer.scenario import block

    scenario = script(data_dir, LIMIT)
    scenario["rules"] = [{"match": "# Example workflows", "replies": [block(HALF), block(GREEDY)]}]
    # GREEDY's worst case (20 choices x 1000 tokens, ~$0.012) no longer fits once the baselines, the turn's
    # meta-agent request and HALF have run (~$0.0007 spent); every earlier request's worst case (< $0.0032) does.
    settings = {"turns": 1, "candidates": 2, "max_tokens": 1000, "meta_max_tokens": 64}
    server = ScriptedServer(scenario)
    try:
        reference = optimize(server, tmp_path / "reference", data_dir, **settings)
        stopped = optimize(server, tmp_path, data_dir, budget_usd=0.008, **settings)
        run = tmp_path / "run"
        spend = json.loads((run / "spend.json").read_text())
        spent = spend["executor"]["cost_usd"] + spend["meta"]["cost_usd"]
        staged = [json.loads(line) for line in (run / ".turn-staging.jsonl").read_text().splitlines()]
        committed_when_stopped = (run / "trajectories.jsonl").exists()
        resumed = optimize(server, tmp_path, data_dir, resume=True, **settings)
    finally:
        server.stop()
    assert reference["stopped"] is None and stopped["stopped"] and "budget" in stopped["stopped"]
    assert spent <= 0.008 and spend == stopped["usage"]
    # HALF was evaluated completely and staged with its true score; GREEDY was not staged at all.
    assert [(r["candidate"], r["valid_score"]) for r in staged] == [(0, 0.5)]
    assert not committed_when_stopped  # the turn was not complete
    records = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    expected = [
        json.loads(line)
        for line in (tmp_path / "reference" / "run" / "trajectories.jsonl").read_text().splitlines()
    ]
    assert resumed["stopped"] is None and essence(records) == essence(expected)
    assert (
        records[1]["valid_score"] == expected[1]["valid_score"] == 1.0
    )  # GREEDY's own score, not a budget's
    total = json.loads((run / "spend.json").read_text())
    assert total["executor"]["cost_usd"] + total["meta"]["cost_usd"] > spent  # carried across the resume
