"""Damaged benchmark files and workflow files: one line that names the file (and line) and says
what to do, a ConfigError in the library and exit 2 from the CLI, never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from w4s import workflows
from w4s.errors import ConfigError
from w4s.tasks import get_task

FETCH = "fetch it again with `w4s data pull` or point --data-dir at a good copy"


def copy_folder(data_dir: Path, target: Path, folder: str) -> Path:
    """A writable copy of one task's folder of the benchmark data (the originals are read-only)."""
    (target / folder).mkdir(parents=True)
    for file in (data_dir / folder).iterdir():
        (target / folder / file.name).write_bytes(file.read_bytes())
    return target


def set_line(number: int, new: bytes):
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[number - 1] = new
        return b"\n".join(lines)

    return mutate


def cut_line(number: int):
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[number - 1] = lines[number - 1][:40]
        return b"\n".join(lines)

    return mutate


def row(**fields) -> bytes:
    return json.dumps(fields).encode()


def svamp_entry(index: int, **changes):
    def mutate(data: bytes) -> bytes:
        rows = json.loads(data)
        rows[index - 1].update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del rows[index - 1][key]
        return json.dumps(rows, indent=4).encode()

    return mutate


def in_gzip(mutate):
    return lambda data: gzip.compress(mutate(gzip.decompress(data)))


def drop_last_line(data: bytes) -> bytes:
    return b"\n".join(data.rstrip(b"\n").split(b"\n")[:-1]) + b"\n"


GSM = "gsm8k/test.jsonl"
HARD = "gsm_hard/gsmhardv2.jsonl"
HE = "humaneval/validate.jsonl"
MBPP = "mbpp/validate.jsonl"
SVAMP = "svamp/SVAMP.json"
DROP = "drop/drop_v0_dev.jsonl.gz"
CASES = [
    ("gsm8k", GSM, lambda d: d[: len(d) // 2], "is not valid JSON"),
    ("gsm8k", GSM, cut_line(17), "line 17 is not valid JSON"),
    ("gsm8k", GSM, set_line(3, row(question="q")), "line 3 lacks the field 'answer'"),
    (
        "gsm8k",
        GSM,
        set_line(5, row(question="q", answer="42")),
        "line 5 has an answer without its final '####",
    ),
    (
        "gsm8k",
        GSM,
        set_line(5, row(question="q", answer="#### forty")),
        "line 5 has final answer 'forty', which is not a finite number",
    ),
    ("gsm8k", GSM, set_line(2, b'"just a string"'), "line 2 holds a string where an object belongs"),
    ("gsm8k", GSM, set_line(4, row(question=5, answer="#### 1")), "line 4 has an integer in 'question'"),
    ("gsm8k", GSM, set_line(9, b'{"question": "\xff\xfe", "answer": "#### 1"}'), "line 9 is not valid UTF-8"),
    ("gsm8k", GSM, lambda d: b"", "is empty"),
    ("gsm_hard", HARD, set_line(2, row(input="q", target="abc")), "line 2 has target 'abc'"),
    ("gsm_hard", HARD, set_line(2, row(input="q", target=None)), "line 2 has null in 'target'"),
    ("gsm_hard", HARD, set_line(2, b'{"input": "q", "target": NaN}'), "line 2 has target nan"),
    (
        "humaneval",
        HE,
        set_line(2, row(task_id="x", prompt="p", canonical_solution="c", entry_point="f")),
        "line 2 lacks the field 'test'",
    ),
    (
        "humaneval",
        HE,
        set_line(3, row(task_id="x", prompt="p", canonical_solution="c", test="t")),
        "line 3 lacks the field 'entry_point'",
    ),
    ("humaneval", HE, cut_line(1), "line 1 is not valid JSON"),
    ("humaneval", HE, set_line(1, b"\x80"), "line 1 is not valid UTF-8"),
    (
        "mbpp",
        MBPP,
        set_line(2, row(task_id=1, prompt="p", code="c", entry_point="f")),
        "line 2 lacks the field 'test'",
    ),
    ("mbpp", "mbpp/test.jsonl", cut_line(1), "test.jsonl line 1 is not valid JSON"),
    ("mbpp", "mbpp/public_test.jsonl", drop_last_line, "public_test.jsonl has 426 rows, not one per row"),
    (
        "mbpp",
        "mbpp/public_test.jsonl",
        set_line(1, row(entry_point="other", test=[])),
        "public_test.jsonl line 1 is for 'other'",
    ),
    (
        "mgsm",
        "mgsm/mgsm_en.tsv",
        set_line(4, b"a question without its answer"),
        "mgsm_en.tsv line 4 has no answer column",
    ),
    ("mgsm", "mgsm/mgsm_en.tsv", set_line(4, b"q\tx"), "mgsm_en.tsv line 4 has answer 'x'"),
    ("mgsm", "mgsm/mgsm_de.tsv", set_line(7, b"q\xc3\t1"), "mgsm_de.tsv line 7 is not valid UTF-8"),
    ("svamp", SVAMP, lambda d: d[: len(d) // 3], "is not valid JSON"),
    ("svamp", SVAMP, svamp_entry(3, Answer=None), "entry 3 lacks the field 'Answer'"),
    ("svamp", SVAMP, svamp_entry(1, Answer="abc"), "entry 1 has Answer 'abc'"),
    ("svamp", SVAMP, lambda d: b'{"a": 1}', "does not hold a JSON list"),
    ("svamp", SVAMP, lambda d: b"[1, 2]", "entry 1 holds an integer where an object belongs"),
    ("drop", DROP, lambda d: d[: len(d) // 2], "is not a complete gzip file"),
    ("drop", DROP, gzip.decompress, "is not a complete gzip file"),
    ("drop", DROP, in_gzip(cut_line(5)), "line 5 is not valid JSON"),
    ("drop", DROP, in_gzip(set_line(2, row(context="c"))), "line 2 lacks the field 'ref_text'"),
    (
        "drop",
        DROP,
        in_gzip(set_line(6, b'{"context": "\xe2\x82", "ref_text": "1"}')),
        "line 6 is not valid UTF-8",
    ),
]


@pytest.mark.parametrize(("task", "relative", "mutate", "message"), CASES, ids=[c[3][:40] for c in CASES])
def test_damaged_data_files_are_one_clear_line(task, relative, mutate, message, data_dir, tmp_path):
    target = copy_folder(data_dir, tmp_path / "data", relative.split("/")[0])
    path = target / relative
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(ConfigError) as caught:
        get_task(task).load("validation", target)
    text = str(caught.value)
    assert "\n" not in text and f"{path} " in text and message in text and FETCH in text, text


def test_the_good_copy_still_loads(data_dir, tmp_path):
    target = copy_folder(data_dir, tmp_path / "data", "mbpp")
    assert len(get_task("mbpp").load("validation", target)) == 86


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "holds a NUL byte (byte 7): it is a binary file"),
        (b"def solver(agent, task):\n    return {'answer': '\xff'}\n", "is not UTF-8 text (line 2"),
        (b"\x00" * 10, "holds a NUL byte (byte 0)"),
    ],
)
def test_a_workflow_file_that_is_not_text(content, message, tmp_path):
    path = tmp_path / "flow.py"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        workflows.resolve(str(path), "math")
    text = str(caught.value)
    assert "\n" not in text and str(path) in text and message in text and "solver(agent, task)" in text


def test_a_workflow_file_with_a_bom_is_python(tmp_path):
    path = tmp_path / "flow.py"
    path.write_bytes(b"\xef\xbb\xbfdef solver(agent, task):\n    return {'answer': 1}\n")
    label, source = workflows.resolve(str(path), "math")
    assert source.startswith("def solver") and label == str(path)


def w4s(*args):
    env = {k: v for k, v in os.environ.items() if k != "W4S_DATA_DIR"}
    env["OPENAI_API_KEY"] = "x"
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def evaluate(workflow: str, data: Path, server, tmp_path: Path, *more: str):
    return w4s(
        "evaluate",
        workflow,
        "--task",
        "gsm8k",
        "--limit",
        "2",
        "--data-dir",
        str(data),
        "--executor-base-url",
        server.url,
        "--executor-model",
        "scripted",
        "--json",
        str(tmp_path / "result.json"),
        *more,
    )


def assert_one_line(done, message: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("w4s: error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_cli_damaged_data_file(executor_server, data_dir, tmp_path):
    target = copy_folder(data_dir, tmp_path / "data", "gsm8k")
    path = target / GSM
    path.write_bytes(cut_line(17)(path.read_bytes()))
    done = evaluate("cot", target, executor_server, tmp_path, "--executor-cache-path", "off")
    assert_one_line(done, f"{path} line 17 is not valid JSON; the file is truncated or corrupt: {FETCH}")
    assert executor_server.stats()["requests"] == 0 and not (tmp_path / "result.json").exists()


def test_cli_binary_workflow_file(executor_server, data_dir, tmp_path):
    flow = tmp_path / "flow.py"
    flow.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    done = evaluate(str(flow), data_dir, executor_server, tmp_path, "--executor-cache-path", "off")
    assert_one_line(done, f"workflow file {flow} holds a NUL byte")
    assert executor_server.stats()["requests"] == 0
