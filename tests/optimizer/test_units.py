import json

import pytest

from w4s.optimizer.extraction import extract_workflow, static_check
from w4s.optimizer.rewards import reward
from w4s.optimizer.trajectory import TrajectoryStore


@pytest.mark.parametrize(
    ("score", "best", "previous", "expected"),
    [
        (0.8, 0.7, 0.6, 1.0),  # beats the best so far
        (0.65, 0.7, 0.6, 0.5),  # beats only the previous turn
        (0.6, 0.7, 0.6, 0.0),  # ties the previous turn
        (0.2, 0.1, 0.1, 0.9),  # beats the best, but below 0.3
        (0.25, 0.7, 0.6, -0.1),
        (None, 0.0, 0.0, -0.1),  # produced no workflow
    ],
)
def test_discrete_reward(score, best, previous, expected):
    assert reward(score, best, previous) == pytest.approx(expected)


def test_continuous_reward():
    assert reward(0.8, 0.7, 0.6, "continuous") == pytest.approx(0.1)
    assert reward(0.2, 0.7, 0.6, "continuous") == pytest.approx(-0.6)
    with pytest.raises(ValueError, match="unknown reward kind"):
        reward(0.5, 0, 0, "shaped")


def test_extraction_takes_the_last_block_defining_solver():
    reply = (
        "```python\ndef helper():\n    pass\n```\ntext\n```python\ndef solver(agent, task):\n    return 1\n```\n"
        "```python\nprint('not a workflow')\n```"
    )
    assert extract_workflow(reply) == "def solver(agent, task):\n    return 1\n"
    assert extract_workflow("no code here") is None
    assert (
        extract_workflow("```\ndef solver(a, t):\n    return 2\n```") == "def solver(a, t):\n    return 2\n"
    )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("def solver(agent, task):\n    return 1\n", None),
        ("def solver(agent, task, extra=1):\n    return 1\n", None),
        ("def solver(agent, task)\n    return 1\n", "SyntaxError: expected ':' (line 1"),
        ("def solve(agent, task):\n    return 1\n", "defines no top-level function"),
        ("async def solver(agent, task):\n    return 1\n", "not `async def`"),
        ("def solver(agent):\n    return 1\n", "must take exactly (agent, task); it takes (agent)"),
        ("def solver(agent, task, more):\n    return 1\n", "it takes (agent, task, more)"),
    ],
)
def test_static_check(source, problem):
    found = static_check(source)
    assert (found is None) if problem is None else (problem in found)


def record(turn, candidate):
    return {
        "episode": 0,
        "turn": turn,
        "candidate": candidate,
        "reply": "r",
        "workflow": None,
        "valid_score": None,
        "reward": 0.0,
        "selected": False,
        "error": None,
        "usage": {},
    }


def test_store_survives_a_partial_last_line_and_refuses_duplicates(tmp_path):
    path = tmp_path / "t.jsonl"
    store = TrajectoryStore(path)
    store.append(record(1, 0))
    store.append(record(1, 1))
    with path.open("a") as handle:
        handle.write(json.dumps(record(1, 2))[:25])  # killed mid-write
    reopened = TrajectoryStore(path)
    assert (
        [r["candidate"] for r in reopened] == [0, 1] and (0, 1, 1) in reopened and (0, 1, 2) not in reopened
    )
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")
    reopened.append(record(1, 2))
    with pytest.raises(ValueError, match="already holds episode 0 turn 1 candidate 2"):
        reopened.append(record(1, 2))
    with pytest.raises(ValueError, match="lacks reward"):
        reopened.append({k: v for k, v in record(2, 0).items() if k != "reward"})
    assert len(TrajectoryStore(path)) == 3


def scored(turn, candidate, score=0.5, selected=False):
    return {
        **record(turn, candidate),
        "workflow": "def solver(agent, task): ...",
        "valid_score": score,
        "selected": selected,
    }


def test_a_record_of_another_episode_is_damage_in_this_run(tmp_path):
    """A run folder holds one episode: a record of another (copied in, or edited) would become this
    run's data, and training would learn from turns the run never took."""
    from w4s.optimizer.trajectory import DamagedStore

    path = tmp_path / "t.jsonl"
    mine, other = scored(1, 0, 0.25), scored(1, 1, 1.0) | {"episode": 7}
    path.write_text(json.dumps(mine) + "\n" + json.dumps(other) + "\n")
    assert len(TrajectoryStore(path)) == 2  # without a run's episode (training reads many): both
    with pytest.raises(DamagedStore, match=r"1 damaged line\(s\) \(2\)"):
        TrajectoryStore(path, episode=mine["episode"])
    assert [(r["episode"], r["candidate"]) for r in TrajectoryStore(path, episode=mine["episode"])] == [
        (mine["episode"], 0)
    ]


@pytest.mark.parametrize(
    ("edit", "damaged_text"),
    [
        (lambda r: r | {"valid_score": float("nan")}, "NaN"),
        (lambda r: r | {"valid_score": float("inf")}, "Infinity"),
        (lambda r: r | {"valid_score": 7.5}, "7.5"),
        (lambda r: r | {"valid_score": "0.5"}, '"0.5"'),
        (lambda r: r | {"reward": "x"}, '"x"'),
        (lambda r: r | {"reward": float("-inf")}, "-Infinity"),
        (lambda r: r | {"reward": None}, '"reward": null'),
        (lambda r: r | {"workflow": 5}, '"workflow": 5'),
        (lambda r: r | {"workflow": None}, '"workflow": null'),  # a score without its workflow
        (lambda r: r | {"selected": "yes"}, '"yes"'),
        (lambda r: r | {"reply": ["r"]}, '["r"]'),
        (lambda r: r | {"error": 3}, '"error": 3'),
        (lambda r: r | {"usage": []}, '"usage": []'),
        (lambda r: r | {"candidate": 3, "selected": True}, '"candidate": 3'),  # a second selection
    ],
)
def test_store_sets_aside_valid_json_that_is_not_a_record(tmp_path, edit, damaged_text):
    """An edit that leaves valid JSON (a NaN score, a string reward, a second selection in a turn)
    is damage too: resuming, the report (best workflow) and training would trust it."""
    from w4s.optimizer.trajectory import DamagedStore

    path = tmp_path / "t.jsonl"
    good = [scored(1, 0, 0.25), scored(1, 1, 1.0, selected=True), scored(1, 2, 0.0)]
    lines = [json.dumps(r) for r in good]
    lines.insert(2, json.dumps(edit(scored(1, 2, 0.5) | {"candidate": 4})))  # line 3
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DamagedStore, match=r"1 damaged line\(s\) \(3\)"):
        TrajectoryStore(path)
    aside = [json.loads(line) for line in (tmp_path / "t.jsonl.damaged").read_text().splitlines()]
    assert [a["line"] for a in aside] == [3] and damaged_text in aside[0]["text"]
    reopened = TrajectoryStore(path)
    assert [(r["candidate"], r["valid_score"], r["selected"]) for r in reopened] == [
        (0, 0.25, False),
        (1, 1.0, True),
        (2, 0.0, False),
    ]
