"""The turn loop against a scripted meta-agent and executor: records, rewards, selection, repairs."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.optimizer.scenario import HALF, LOOP, script
from w4s.errors import ConfigError
from w4s.llm.config import GatewayConfig
from w4s.llm.gateway import Gateway
from w4s.optimizer.loop import OptimizeConfig, Optimizer
from w4s.optimizer.rewards import reward
from w4s.sandbox.config import SandboxConfig

LIMIT = 4


def optimize(server, out, data_dir, resume=False, **overrides):
    async def main():
        executor = Gateway(GatewayConfig(base_url=server.url, cache_path=str(out / "executor.sqlite")))
        meta = Gateway(GatewayConfig(base_url=server.url, cache_path=str(out / "meta.sqlite")))
        cfg = OptimizeConfig(
            task="gsm8k",
            turns=2,
            candidates=5,
            validation_limit=LIMIT,
            test_limit=LIMIT,
            timeout_s=1.5,
            **overrides,
        )
        try:
            optimizer = Optimizer(
                cfg,
                meta,
                executor,
                out / "run",
                data_dir=data_dir,
                sandbox=SandboxConfig(timeout_s=1.5),
                resume=resume,
            )
            return await optimizer.run()
        finally:
            await executor.aclose()
            await meta.aclose()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    from tests.conftest import ScriptedServer

    server = ScriptedServer(script(data_dir, LIMIT))
    out = tmp_path_factory.mktemp("optimize")
    try:
        report = optimize(server, out, data_dir)
        stats = server.stats()
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
    test_questions = [s.task for s in select(get_task("gsm8k").load("test", data_dir), LIMIT, 0)]
    feedbacks = [r["feedback"] for r in records if r["feedback"]]
    prompts = [m["content"] for r in records for m in r["prompt_messages"]]
    assert feedbacks and all(q[:80] not in text for q in test_questions for text in feedbacks + prompts)


def test_the_same_seed_and_cache_give_the_same_trajectory(finished, tmp_path, data_dir):
    from tests.conftest import ScriptedServer

    _, records, run, _ = finished
    server = ScriptedServer(script(data_dir, LIMIT))
    try:
        for name in ("executor.sqlite", "meta.sqlite"):
            (tmp_path / name).write_bytes((run.parent / name).read_bytes())
        optimize(server, tmp_path, data_dir)
        assert server.stats()["requests"] == 0  # everything came from the cache
    finally:
        server.stop()
    again = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]

    def essence(rows):
        return [
            (r["turn"], r["candidate"], r["workflow"], r["valid_score"], r["reward"], r["selected"])
            for r in rows
        ]

    assert essence(again) == essence(records)


def test_an_existing_run_needs_resume(finished, data_dir):
    _, _, run, _ = finished
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Optimizer(
            OptimizeConfig(),
            Gateway(GatewayConfig(base_url="http://127.0.0.1:9/v1", cache_path="off")),
            Gateway(GatewayConfig(base_url="http://127.0.0.1:9/v1", cache_path="off")),
            run,
            data_dir=data_dir,
        )


def test_budget_stops_the_run_cleanly(tmp_path, data_dir):
    from tests.conftest import ScriptedServer

    server = ScriptedServer(script(data_dir, LIMIT))
    try:
        report = optimize(server, tmp_path, data_dir, budget_usd=0.0002)
    finally:
        server.stop()
    assert report["stopped"] and "budget" in report["stopped"]
    spent = report["usage"]["executor"]["cost_usd"] + report["usage"]["meta"]["cost_usd"]
    # Requests already in flight when the limit is reached still complete (at most `concurrency`
    # samples' worth, about $0.00002 each here), so the overshoot is small but not zero.
    assert 0.0002 <= spent < 0.0002 + 8 * 0.00003
    run = tmp_path / "run"
    assert (run / "report.md").read_text().count("Stopped early") == 1
    committed = (
        (run / "trajectories.jsonl").read_text().splitlines() if (run / "trajectories.jsonl").exists() else []
    )
    assert len(committed) % 5 == 0  # only whole turns are committed; a partial turn stays staged
