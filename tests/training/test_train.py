"""`w4s train` as a user runs it: inputs checked with clear errors, checkpoints resumable."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.training import tiny
from w4s.errors import ConfigError
from w4s.training.config import TrainConfig
from w4s.training.dataset import build_examples, read_records, tokenize

PROMPT = [{"role": "system", "content": "write a workflow"}, {"role": "user", "content": "task 1 2"}]


def record(i, reward, reply="good answer is 1", turn=1, episode=0, workflow="x"):
    return {
        "episode": episode,
        "turn": turn,
        "candidate": i,
        "prompt_messages": PROMPT,
        "reply": reply,
        "reward": reward,
        "workflow": workflow,
    }


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_weights_and_filters(tmp_path):
    records = [record(0, 1.0), record(1, 0.0, workflow=None), record(2, -0.1, turn=2, episode=1)]
    examples = build_examples(records, TrainConfig())
    assert [round(e.weight, 4) for e in examples] == [12.1825, 1.0, 0.7788]
    assert len(build_examples(records, TrainConfig(drop_failed=True))) == 2
    assert len(build_examples(records, TrainConfig(only_success_episodes=True))) == 2
    assert len(build_examples(records, TrainConfig(turns=[2], allow_uniform_weights=True))) == 1


# Two templates that close the assistant's turn differently: a Llama-3-like end-of-turn token that is
# not eos, and one that closes with eos itself. The tiny default template closes with nothing.
EOT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
EOS_TEMPLATE = EOT_TEMPLATE.replace("<eot>", "</s>")


@pytest.mark.parametrize(
    ("template", "closing"),
    [(None, ["</s>"]), (EOT_TEMPLATE, ["<eot>"]), (EOS_TEMPLATE, ["</s>"])],
    ids=["no-end-of-turn: eos added", "end-of-turn is not eos", "end-of-turn is eos"],
)
def test_completion_is_the_templates_turn_with_its_own_stop_token(template, closing):
    """Prompt and completion go through the chat template together; the labels are the completion and the
    template's own end of turn (the token generation stops on), never an eos the template does not use."""
    tok = tiny.tokenizer()
    if template:
        tok.chat_template = template
    row = tokenize(build_examples([record(0, 1.0), record(1, 0.0)], TrainConfig()), tok, TrainConfig())[0]
    labelled = [t for t in row["labels"] if t != -100]
    expected = tok("good answer is 1", add_special_tokens=False)["input_ids"] + tok.convert_tokens_to_ids(
        closing
    )
    assert labelled == expected and row["input_ids"][-len(expected) :] == expected
    prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert (
        row["input_ids"][: len(row["input_ids"]) - len(expected)]
        == tok(prompt, add_special_tokens=False)["input_ids"]
    )


def test_a_tokenizer_without_chat_template_is_refused():
    tok = tiny.tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template; use an instruct"):
        tokenize(build_examples([record(0, 1.0), record(1, 0.0)], TrainConfig()), tok, TrainConfig())


@pytest.mark.parametrize(
    ("records", "cfg", "message"),
    [
        ([], TrainConfig(), "hold no records; run `w4s optimize` first"),
        ([record(0, 0.5), record(1, 0.5)], TrainConfig(), "every reward equals 0.5"),
        ([record(0, 1.0), record(1, 0.0)], TrainConfig(turns=[7]), "no trajectory records are left"),
    ],
)
def test_bad_trajectories(records, cfg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_examples(records, cfg)


def test_too_long_sequences(tmp_path):
    tok = tiny.tokenizer()
    examples = build_examples([record(0, 1.0), record(1, 0.0, reply="bad " * 100)], TrainConfig())
    with pytest.raises(ConfigError, match="1 examples are longer than max_length=50 tokens"):
        tokenize(examples, tok, TrainConfig(max_length=50))
    assert len(tokenize(examples, tok, TrainConfig(max_length=50, drop_long=True))) == 1


def test_not_a_trajectories_file(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match="x.jsonl:1 is not a JSON line"):
        read_records([bad])
    with pytest.raises(ConfigError, match="does not exist"):
        read_records([tmp_path / "missing.jsonl"])


def w4s(*args):
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", "train", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_errors_are_one_line(tmp_path):
    good = write(tmp_path / "t.jsonl", [record(0, 1.0), record(1, 0.0)])
    empty = write(tmp_path / "e.jsonl", [])
    cases = [
        (
            [
                "--trajectories",
                str(good),
                "--base-model",
                str(tmp_path / "nope"),
                "--output",
                str(tmp_path / "o"),
            ],
            "base model",
            "does not exist",
        ),
        (
            ["--trajectories", str(empty), "--base-model", str(tmp_path), "--output", str(tmp_path / "o")],
            "hold no records",
            None,
        ),
        (
            [
                "--trajectories",
                str(good),
                "--base-model",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
                "--learning-rate",
                "-1",
            ],
            "learning_rate=-1.0 is invalid",
            None,
        ),
        (
            ["--trajectories", str(good), "--base-model", str(tmp_path), "--output", str(good / "o")],
            "cannot write --output",
            "choose a writable path",
        ),
        (
            ["--trajectories", str(good), "--base-model", str(tmp_path), "--output", str(tmp_path / "o")]
            + ["--gradient-checkpointing", "sometimes"],
            "gradient_checkpointing='sometimes' is invalid",
            "use auto, true or false",
        ),
        (
            ["--trajectories", str(good), "--base-model", str(tmp_path), "--output", str(tmp_path / "o")]
            + ["--max-tokens-per-batch", "0"],
            "max_tokens_per_batch=0 is invalid",
            None,
        ),
    ]
    if importlib.util.find_spec("liger_kernel") is None:
        base = tiny.save_base(tmp_path / "base")
        cases.append(
            (
                ["--trajectories", str(good), "--base-model", str(base), "--output", str(tmp_path / "o")]
                + ["--use-liger-kernel"],
                "use_liger_kernel needs Liger's kernels",
                "pip install liger-kernel",
            )
        )
    for args, message, more in cases:
        done = w4s(*args)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("w4s: error:") and message in last and (more is None or more in last), (
            done.stderr
        )


def test_cli_trains_and_resumes_from_a_checkpoint(tmp_path):
    base = tiny.save_base(tmp_path / "base")
    data = write(tmp_path / "t.jsonl", [record(i, 1.0 if i % 2 else -0.1) for i in range(6)])
    common = [
        "--trajectories",
        str(data),
        "--base-model",
        str(base),
        "--output",
        str(tmp_path / "out"),
        "--lora",
        "--batch-size",
        "2",
        "--save-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--max-length",
        "64",
    ]
    first = w4s(*common, "--max-steps", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    second = w4s(*common, "--max-steps", "6", "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-4") and summary["steps"] == 6
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")  # merged: plain transformers
    assert model.config.num_hidden_layers == 2


GOOD = json.dumps(record(0, 1.0))
BAD_RECORDS = [
    (json.dumps(record(1, None)), "has reward null, not a finite number in [-10, 10]"),
    (json.dumps(record(1, 1e6)), "has reward 1000000.0, not a finite number"),
    (json.dumps(record(1, -11)), "has reward -11, not a finite number"),
    (json.dumps(record(1, True)), "has reward true, not a finite number"),
    (GOOD.replace('"reward": 1.0', '"reward": NaN'), "has reward NaN, not a finite number"),
    (GOOD.replace('"reward": 1.0', '"reward": Infinity'), "has reward Infinity, not a finite number"),
    (json.dumps("a string"), 'holds "a string", not a trajectory record (a JSON object)'),
    (json.dumps([1, 2]), "holds [1, 2], not a trajectory record"),
    (json.dumps({**record(1, 0.0), "prompt_messages": "hello"}), 'has prompt_messages "hello", not a list'),
    (json.dumps({**record(1, 0.0), "prompt_messages": []}), "has prompt_messages [], not a list"),
    (json.dumps({**record(1, 0.0), "prompt_messages": [1]}), "has prompt_messages[0] 1, not a message"),
    (
        json.dumps({**record(1, 0.0), "prompt_messages": [*PROMPT, {"role": "user"}]}),
        'has prompt_messages[2] {"role": "user"}, not a message with string role and content',
    ),
    (json.dumps({**record(1, 0.0), "reply": 5}), "has reply 5, not a string"),
    (json.dumps({**record(1, 0.0), "turn": "1"}), 'has turn "1", not an integer'),
    (json.dumps({k: v for k, v in record(1, 0.0).items() if k != "reward"}), "lacks 'reward'"),
]


@pytest.mark.parametrize(("line", "message"), BAD_RECORDS, ids=[m[:30] for _, m in BAD_RECORDS])
def test_a_bad_record_is_refused_with_its_file_and_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{json.dumps(record(2, 0.0))}\n")
    with pytest.raises(ConfigError) as caught:
        read_records([path])
    text = str(caught.value)
    assert text.startswith(f"{path}:3 {message}") and "fix or remove that record" in text and "\n" not in text


def test_records_that_are_not_utf8(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + GOOD.replace("good", "g\xffd").encode("latin-1") + b"\n")
    with pytest.raises(ConfigError, match=r"t\.jsonl:2 is not UTF-8 text; is this a w4s trajectories file"):
        read_records([path])


def test_build_examples_checks_records_it_is_given():
    with pytest.raises(ConfigError, match=r"trajectory record 2 has reward 1000000.0, not a finite number"):
        build_examples([record(0, 1.0), record(1, 1e6)], TrainConfig())
    with pytest.raises(ConfigError, match=r"trajectory record 1 has reward null"):
        build_examples([record(0, None), record(1, 1.0)], TrainConfig())
    with pytest.raises(
        ConfigError, match=r"temperature=0.001 is too small for reward 1: exp\(reward / T\) overflows"
    ):
        build_examples([record(0, 1.0), record(1, 0.0)], TrainConfig(temperature=0.001))
    assert len(build_examples([record(0, 10), record(1, -10)], TrainConfig())) == 2  # the limits themselves


def test_cli_bad_record_is_one_line(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text(f"{GOOD}\n{json.dumps(record(1, None))}\n")
    done = w4s("--trajectories", str(bad), "--base-model", str(tmp_path), "--output", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"w4s: error: {bad}:2 has reward null"), done.stderr
