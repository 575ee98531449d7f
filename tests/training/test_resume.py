"""A retried training task resumes instead of restarting: locally (a PVC) and from an S3 mirror
(``checkpoint_uri``, a real SeaweedFS server), and a retry of a finished run does not train again."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from tests.training import tiny
from w4s.errors import ConfigError, InfrastructureError
from w4s.training.config import TrainConfig


class PodKilled(Exception):
    """What a killed pod looks like to the test: training stops in the middle, nothing is finished."""


def record(i, reward):
    return {
        "episode": 0,
        "turn": 1,
        "candidate": i,
        "prompt_messages": [
            {"role": "system", "content": "write a workflow"},
            {"role": "user", "content": "task 1"},
        ],
        "reply": "good answer is 1" if reward > 0 else "bad answer is 2",
        "reward": reward,
        "workflow": "x",
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.save_base(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(record(i, 1.0 if i % 2 else -0.1)) + "\n" for i in range(6)))
    return path


@pytest.fixture
def trainer_probe(monkeypatch):
    """Count trainers built and the steps they run; ``probe.crash_at = N`` kills the run at step N."""
    from transformers import TrainerCallback

    import w4s.training.trainer as module

    probe = SimpleNamespace(built=0, steps=[], crash_at=None)

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            probe.steps.append(state.global_step)
            if state.global_step == probe.crash_at:
                raise PodKilled(f"killed at step {state.global_step}")

    class Probed(module.WeightedTrainer):
        def __init__(self, *args, callbacks=(), **kwargs):
            probe.built += 1
            super().__init__(*args, callbacks=[*callbacks, Probe()], **kwargs)

    monkeypatch.setattr(module, "WeightedTrainer", Probed)

    def reset(crash_at=None):
        probe.built, probe.steps, probe.crash_at = 0, [], crash_at

    probe.reset = reset
    return probe


def config(base, output, **overrides):
    values = dict(
        base_model=str(base),
        output=str(output),
        batch_size=2,
        save_steps=2,
        max_steps=6,
        learning_rate=1e-3,
        max_length=64,
        mlflow=False,
        resume_if_possible=True,
    )
    return TrainConfig(**{**values, **overrides})


def train(cfg, data):
    from w4s.training.train import main

    return main(cfg, [str(data)])


def test_a_retry_resumes_locally_and_a_finished_run_is_returned(tmp_path, base, data, trainer_probe):
    out = tmp_path / "out"
    cfg = config(base, out)
    trainer_probe.reset(crash_at=5)
    with pytest.raises(PodKilled):
        train(cfg, data)
    assert not (out / "training_summary.json").exists()
    (out / "checkpoints" / "checkpoint-8").mkdir()  # a save cut short: no trainer_state.json
    trainer_probe.reset()
    result = train(cfg, data)
    assert result.resumed_from == str(out / "checkpoints" / "checkpoint-4") and result.steps == 6
    assert trainer_probe.steps == [5, 6]  # continued, not restarted
    trainer_probe.reset()
    again = train(cfg, data)
    assert trainer_probe.built == 0 and again == result  # finished: returned, not trained again
    with pytest.raises(
        ConfigError, match=r"holds a finished training with learning_rate=0.001, this one asks"
    ):
        train(config(base, out, learning_rate=1e-4), data)
    data.write_text(data.read_text().replace("good answer", "the answer"))
    with pytest.raises(ConfigError, match="finished training on other trajectories"):
        train(cfg, data)


def test_without_a_checkpoint_it_starts_fresh(tmp_path, base, data, trainer_probe, caplog):
    with caplog.at_level("INFO", logger="w4s.training.train"):
        result = train(config(base, tmp_path / "out", max_steps=2), data)
    assert result.resumed_from is None and result.steps == 2 and trainer_probe.steps == [1, 2]
    assert "no checkpoint to resume from: starting fresh" in caplog.text


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


def test_a_retry_on_a_new_pod_resumes_from_s3(tmp_path, base, data, trainer_probe, s3_env):
    uri = s3_env.artifacts_uri("resume/run-1")
    cfg = config(base, tmp_path / "out", checkpoint_uri=uri)
    trainer_probe.reset(crash_at=5)
    with pytest.raises(PodKilled):
        train(cfg, data)
    keys = s3_env.keys("resume/run-1/")
    assert "resume/run-1/checkpoints/checkpoint-4/.w4s-complete" in keys
    assert "resume/run-1/checkpoints/checkpoint-4/trainer_state.json" in keys
    assert not any("training_summary" in k or "/model/" in k for k in keys)

    shutil.rmtree(tmp_path / "out")  # a new pod, on another node
    trainer_probe.reset()
    result = train(cfg, data)
    assert result.resumed_from == str(tmp_path / "out" / "checkpoints" / "checkpoint-4")
    assert result.steps == 6 and trainer_probe.steps == [5, 6]
    keys = s3_env.keys("resume/run-1/")
    assert "resume/run-1/training_summary.json" in keys and "resume/run-1/model/config.json" in keys
    complete = sorted(k.split("/")[3] for k in keys if k.endswith(".w4s-complete"))
    assert complete == ["checkpoint-4", "checkpoint-6"]  # checkpoint-2 rotated away there too

    shutil.rmtree(tmp_path / "out")  # the finished task retried once more, on yet another node
    trainer_probe.reset()
    again = train(cfg, data)
    assert trainer_probe.built == 0 and again == result
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").config.num_hidden_layers == 2


def test_a_used_checkpoint_uri_needs_resuming(tmp_path, base, data, s3_env):
    uri = s3_env.artifacts_uri("resume/used")
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="resume/used/checkpoints/checkpoint-2/x", Body=b"")
    with pytest.raises(
        ConfigError, match=r"resume/used already holds files of a training; set resume_if_possible"
    ):
        train(config(base, tmp_path / "out", checkpoint_uri=uri, resume_if_possible=False), data)


def test_s3_errors_are_one_line_naming_bucket_and_endpoint(tmp_path, base, data, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(InfrastructureError) as caught:
        train(config(base, tmp_path / "out", checkpoint_uri=s3_env.artifacts_uri("resume/denied")), data)
    text = str(caught.value)
    assert "\n" not in text and f"bucket {s3_env.bucket!r}" in text and s3_env.endpoint_url in text
    assert "SignatureDoesNotMatch" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text


def test_checkpoint_uri_must_be_s3():
    with pytest.raises(
        ConfigError, match="checkpoint_uri='http://x/y' is invalid: must be an s3://bucket/prefix URI"
    ):
        TrainConfig.from_dict({"checkpoint_uri": "http://x/y"})
    assert (
        TrainConfig.from_dict({"checkpoint_uri": "s3://b/p", "resume_if_possible": True}).checkpoint_uri
        == "s3://b/p"
    )
