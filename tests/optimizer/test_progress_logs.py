"""The optimizer's plain log lines (a pod has no terminal): one per stage of a turn and one per
candidate when it is done, checked against a run with the scripted meta-agent and executor."""

from __future__ import annotations

import json
import logging
import re

import pytest

import w4s
from tests.optimizer.scenario import script
from w4s.llm.config import EndpointConfig
from w4s.optimizer.loop import OptimizeConfig
from w4s.sandbox.config import SandboxConfig
from w4s.workflows import examples

LOGGER = "w4s.optimizer.loop"
LIMIT = 4
CANDIDATES = 3  # turn 1's first three replies: a working workflow, one repaired twice, one without code
DONE = re.compile(
    r"turn 1 candidate (\d) done: (failed|validation [\d.]+), reward ([+-][\d.]+), (\d+) repairs, "
    r"tokens: meta (\d+), executor (\d+); [\d.]+ s"
)


def _optimize(server, out, data_dir, resume=False):
    return w4s.optimize(
        "gsm8k",
        OptimizeConfig(turns=1, candidates=CANDIDATES, validation_limit=LIMIT, test_limit=LIMIT),
        out_dir=out / "run",
        meta=EndpointConfig(base_url=server.url, cache_path=str(out / "meta.sqlite")),
        executor=EndpointConfig(base_url=server.url, cache_path=str(out / "executor.sqlite")),
        sandbox=SandboxConfig(timeout_s=1.5),
        data_dir=data_dir,
        resume=resume,
    )


class _Lines(logging.Handler):
    """The optimizer's log messages, into the last list of ``logs`` (caplog is per test; this is per module)."""

    def __init__(self, logs: list[list[str]]):
        super().__init__(logging.INFO)
        self.logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        self.logs[-1].append(record.getMessage())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The log lines of a run and of a resume of the finished run, and the run's records."""
    from tests.conftest import ScriptedServer

    server = ScriptedServer(script(data_dir, LIMIT))
    out = tmp_path_factory.mktemp("progress")
    logs: list[list[str]] = []
    handler = _Lines(logs)
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for resume in (False, True):
            logs.append([])
            _optimize(server, out, data_dir, resume)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        server.stop()
    records = [json.loads(line) for line in (out / "run" / "trajectories.jsonl").read_text().splitlines()]
    return logs[0], logs[1], records


def _matching(lines, prefix):
    return [line for line in lines if line.startswith(prefix)]


def test_one_line_per_candidate_with_its_score_reward_repairs_and_tokens(runs):
    lines, _, records = runs
    done = [m.groups() for line in lines if (m := DONE.fullmatch(line))]
    assert [int(index) for index, *_ in done] == list(range(CANDIDATES))
    for (_, score, reward, repairs, meta, executor), record in zip(done, records, strict=True):
        shown = "failed" if record["valid_score"] is None else f"validation {record['valid_score']:.3f}"
        assert score == shown and float(reward) == pytest.approx(record["reward"], abs=0.005)
        assert int(repairs) == len(record["repairs"])
        usage = record["usage"]
        assert int(meta) == usage["meta"]["prompt_tokens"] + usage["meta"]["completion_tokens"]
        assert int(executor) == usage["executor"]["prompt_tokens"] + usage["executor"]["completion_tokens"]
    assert [int(r) for *_, r, _, _ in done] == [0, 2, 3]
    assert (
        int(done[1][4]) > 0 and int(done[0][5]) > 0
    )  # a repair asks the meta-agent; a run asks the executor


def test_one_line_per_stage_in_order(runs):
    lines, _, _ = runs
    baselines = examples("math")
    assert _matching(lines, "baselines: ") == [
        f"baselines: evaluating {len(baselines)} example workflows on {LIMIT} validation samples"
    ]
    assert sorted(line.split(":")[0] for line in _matching(lines, "baseline ")) == sorted(
        f"baseline {name}" for name in baselines
    )
    asked = _matching(lines, "turn 1: asking the meta-agent")
    assert len(asked) == 1 and f"for {CANDIDATES} candidates (at most 4096 tokens each)" in asked[0]
    wrote = _matching(lines, "turn 1: the meta-agent wrote")
    assert len(wrote) == 1 and re.fullmatch(
        rf"turn 1: the meta-agent wrote {CANDIDATES} candidates, \d+ tokens in [\d.]+ s \([\d.]+ tokens/s\)",
        wrote[0],
    )
    # each candidate's extraction, self-check, repairs and validation, in the order they happened
    assert _matching(lines, "turn 1 candidate 0: ") == [
        "turn 1 candidate 0: workflow extracted; self-check on 1 validation sample",
        f"turn 1 candidate 0: evaluating on {LIMIT} validation samples",
    ]
    one = _matching(lines, "turn 1 candidate 1: ")
    assert [line.split(": ", 1)[1].split(";")[0].split(":")[0] for line in one] == [
        "SyntaxError",
        "workflow extracted from repair 1",
        "NameError",
        "workflow extracted from repair 2",
        f"evaluating on {LIMIT} validation samples",
    ]
    assert one[0].endswith("; asking the meta-agent for repair 1 of 3")
    assert one[2].endswith("; asking the meta-agent for repair 2 of 3")
    assert _matching(lines, "turn 1 candidate 2: ") == [
        f"turn 1 candidate 2: no ```python block defining solver(agent, task); asking the meta-agent for repair {i} of 3"
        for i in (1, 2, 3)
    ]
    test = _matching(lines, "test: ")
    assert len(test) == 1 and re.fullmatch(
        rf"test: scoring the best workflow, turn 1 candidate 0 \(validation 0\.500\), on {LIMIT} test samples",
        test[0],
    )
    order = [
        lines.index(_matching(lines, "baselines: ")[0]),
        lines.index(asked[0]),
        lines.index(wrote[0]),
        *(
            lines.index(next(line for line in lines if line.startswith(f"turn 1 candidate {i} done")))
            for i in range(3)
        ),
        lines.index(test[0]),
    ]
    assert order == sorted(order)


def test_a_resume_says_what_an_earlier_run_did(runs):
    _, resumed, _ = runs
    assert resumed[:2] == [
        f"baselines: {len(examples('math'))} scored in an earlier run (baselines.json)",
        "turn 1: committed in an earlier run",
    ]
    assert len(_matching(resumed, "test: scoring the best workflow")) == 1
    assert not [line for line in resumed if "candidate" in line and "done" in line]
