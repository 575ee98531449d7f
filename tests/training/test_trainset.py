"""The merged training set (compute_rewards): real trajectory files in, train.jsonl, summary.json and
rewards.png out, and the same training input as the original files."""

from __future__ import annotations

import json
import math

import pytest

from w4s.errors import ConfigError
from w4s.training.config import TrainConfig
from w4s.training.dataset import build_examples, read_records
from w4s.training.trainset import MergeConfig, merge

PNG = b"\x89PNG\r\n\x1a\n"


def prompt(task, turn=1):
    return [
        {"role": "system", "content": "write a workflow"},
        {"role": "user", "content": f"{task} turn {turn}"},
    ]


def record(task, episode, turn, candidate, reward, reply=None, workflow="def solver(agent, task): ..."):
    return {
        "episode": episode,
        "turn": turn,
        "candidate": candidate,
        "prompt_messages": prompt(task, turn),
        "reply": reply if reply is not None else f"reply {task} {episode} {turn} {candidate}",
        "reward": reward,
        "workflow": workflow,
        "selected": False,
    }


def run_folder(root, task, records):
    """A w4s optimize run folder: run.json (its identity names the task) and trajectories.jsonl."""
    folder = root / task
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"format": 1, "identity": {"task": task, "episode": 0}}))
    path = folder / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(tmp_path):
    """Two tasks whose runs both number their episode 0; only task a's episode 0 succeeds."""
    a = run_folder(
        tmp_path / "runs",
        "a",
        [
            record("a", 0, 1, 0, 1.0),
            record("a", 0, 1, 1, 0.0, workflow=None),
            record("a", 0, 2, 0, -0.1),
            record("a", 1, 1, 0, 0.5),  # episode 1 never reaches 1.0
        ],
    )
    b = run_folder(
        tmp_path / "runs",
        "b",
        [
            record("b", 0, 1, 0, 0.2),  # same episode number as a's successful one, but never succeeds
            record("b", 0, 1, 1, 0.7, reply="same reply"),
            record("b", 0, 2, 0, 0.3, reply="same reply"),  # other prompt (turn 2): not a duplicate
            record("b", 0, 1, 2, 0.4, reply="same reply"),  # duplicate of candidate 1, lower reward
        ],
    )
    return [a, b]


def test_merge_writes_weighted_records_summary_and_plot(tmp_path, files):
    out = tmp_path / "merged"
    result = merge(files, out, MergeConfig())
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(lines) == result.examples == 7 and result.records == 8 and result.duplicates == 1
    assert {(r["task"], r["source"]) for r in lines} == {("a", str(files[0])), ("b", str(files[1]))}
    for line in lines:
        assert line["weight"] == pytest.approx(math.exp(line["reward"] / 0.4))
    kept_b = [r for r in lines if r["task"] == "b" and r["reply"] == "same reply" and r["turn"] == 1]
    assert [r["reward"] for r in kept_b] == [0.7]  # the highest of the duplicates is kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.to_dict() and summary["version"] == 1
    assert summary["status"] == "ok" and summary["trainable"] and not summary["uniform"]
    assert summary["tasks"] == {"a": 4, "b": 3}
    assert summary["rewards"] == {
        "min": -0.1,
        "max": 1.0,
        "mean": pytest.approx(sum(r["reward"] for r in lines) / 7),
    }
    weights = [r["weight"] for r in lines]
    assert summary["weights"]["min"] == pytest.approx(min(weights))
    assert summary["weights"]["max"] == pytest.approx(max(weights))
    assert summary["weights"]["ess"] == pytest.approx(sum(weights) ** 2 / sum(w * w for w in weights))
    assert 1 <= summary["weights"]["ess"] <= 7
    assert [s["examples"] for s in summary["sources"]] == [4, 3]
    assert (out / "rewards.png").read_bytes().startswith(PNG)
    assert summary["paths"]["rewards_png"] == str(out / "rewards.png")
    assert read_records([out / "train.jsonl"])  # w4s train reads it


def test_dedup_off_keeps_every_record(tmp_path, files):
    result = merge(files, tmp_path / "m", MergeConfig(dedup=False))
    assert result.examples == 8 and result.duplicates == 0


def test_filters_count_what_they_drop_and_episodes_stay_per_file(tmp_path, files):
    result = merge(files, tmp_path / "m", MergeConfig(only_success_episodes=True, dedup=False))
    # only a's episode 0 succeeds: b's episode 0 (same number, another file) is not kept with it
    assert result.examples == 3 and result.dropped == {
        "only_success_episodes": 5,
        "drop_failed": 0,
        "turns": 0,
    }
    assert result.tasks == {"a": 3}
    result = merge(files, tmp_path / "m2", MergeConfig(drop_failed=True, turns=[1], dedup=False))
    assert result.dropped == {"only_success_episodes": 0, "drop_failed": 1, "turns": 2}
    assert result.examples == 5


@pytest.mark.parametrize(
    "cfg",
    [
        dict(),
        dict(only_success_episodes=True),
        dict(drop_failed=True),
        dict(turns=[1]),
        dict(drop_failed=True, turns=[2], temperature=0.9),
    ],
    ids=str,
)
def test_training_on_the_merged_file_equals_training_on_the_originals(tmp_path, files, cfg):
    merged = merge(files, tmp_path / "m", MergeConfig(dedup=False, **cfg))
    train = TrainConfig(**cfg)
    from_originals = build_examples(read_records(files), train)
    from_merged = build_examples(read_records([merged.paths["train_jsonl"]]), train)
    assert from_merged == from_originals
    # and the same again with the filters off: the merged file holds exactly what they keep
    assert build_examples(
        read_records([merged.paths["train_jsonl"]]), TrainConfig(temperature=train.temperature)
    ) == (from_originals)
    weights = [json.loads(line)["weight"] for line in open(merged.paths["train_jsonl"])]
    assert weights == pytest.approx([e.weight for e in from_originals])


def test_equal_rewards_are_a_status_not_an_error(tmp_path):
    path = run_folder(tmp_path, "t", [record("t", 0, 1, i, -0.1, workflow=None) for i in range(3)])
    result = merge([path], tmp_path / "m", MergeConfig())
    assert result.status == "uniform" and result.uniform and not result.trainable and result.examples == 3
    assert "every one of the 3 rewards equals -0.1" in result.message and "skip training" in result.message
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["status"] == "uniform"
    assert (tmp_path / "m" / "rewards.png").read_bytes().startswith(PNG)
    allowed = merge([path], tmp_path / "m2", MergeConfig(allow_uniform_weights=True))
    assert allowed.status == "uniform" and allowed.trainable
    with pytest.raises(ConfigError, match="every reward equals -0.1"):  # what w4s train would say
        build_examples(read_records([path]), TrainConfig())


def test_nothing_left_is_a_status_not_an_error(tmp_path, files):
    result = merge(files, tmp_path / "m", MergeConfig(turns=[9]))
    assert result.status == "empty" and result.examples == 0 and not result.trainable
    assert result.rewards == {"min": None, "max": None, "mean": None} and result.weights["ess"] is None
    assert (tmp_path / "m" / "train.jsonl").read_text() == ""
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["status"] == "empty"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert merge([empty], tmp_path / "m2", MergeConfig()).status == "empty"


def test_bad_input_is_a_config_error(tmp_path, files):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1 is not a JSON line"):
        merge([bad], tmp_path / "m", MergeConfig())
    with pytest.raises(ConfigError, match="too small for reward"):
        merge(files, tmp_path / "m", MergeConfig(temperature=0.001))
    with pytest.raises(ConfigError, match="MergeConfig.turns"):
        MergeConfig.from_dict({"turns": "1"})
    assert MergeConfig.from_dict(MergeConfig(turns=[1]).to_dict()) == MergeConfig(turns=[1])


def test_without_matplotlib_no_plot(tmp_path, files, monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    with caplog.at_level("INFO", logger="w4s.training.trainset"):
        result = merge(files, tmp_path / "m", MergeConfig())
    assert result.paths["rewards_png"] is None and not (tmp_path / "m" / "rewards.png").exists()
    assert [r.message for r in caplog.records if "rewards.png" in r.message] == [
        "no rewards.png: matplotlib is not installed (pip install 'w4s[plot]')"
    ]
