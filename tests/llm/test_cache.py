"""The response cache file: a damaged or foreign file is one clear line, never a traceback."""

from __future__ import annotations

import os
import re
import sqlite3

import pytest

from tests.test_evaluation import evaluate_args, w4s
from w4s.errors import ConfigError
from w4s.llm.cache import ResponseCache

ADVICE = "pass --executor-cache-path (or --meta-cache-path) off, or another path"


def test_a_good_cache_keeps_replies(tmp_path):
    cache = ResponseCache(tmp_path / "deep" / "cache.sqlite")
    cache.put("k", 0, ["one", "two"], 3, 4)
    cache.close()
    reopened = ResponseCache(tmp_path / "deep" / "cache.sqlite")
    assert reopened.get("k", 2) == {0: "one", 1: "two"}
    reopened.close()


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(4096),
        b"this is a text file, not a database\n" * 100,
        b"SQLite format 3\x00" + b"\xff" * 200,
    ],
    ids=["random bytes", "text", "damaged header"],
)
def test_a_corrupt_cache_file(tmp_path, content):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        ResponseCache(path)
    text = str(caught.value)
    assert "\n" not in text and f"the response cache {path} is corrupt or not a w4s cache" in text
    assert "delete it" in text and ADVICE in text


def test_a_database_of_something_else(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE responses (id INTEGER, body BLOB)")
    db.close()
    with pytest.raises(ConfigError, match=r"is corrupt or not a w4s cache \(no such column: key\)"):
        ResponseCache(path)


def test_a_folder_or_a_file_in_the_way(tmp_path):
    (tmp_path / "folder.sqlite").mkdir()
    with pytest.raises(
        ConfigError, match=rf"cannot open the response cache .*folder\.sqlite \(.*\); {re.escape(ADVICE)}"
    ):
        ResponseCache(tmp_path / "folder.sqlite")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(
        ConfigError, match=rf"cannot create the folder of the response cache .*; {re.escape(ADVICE)}"
    ):
        ResponseCache(tmp_path / "plain" / "cache.sqlite")


def test_cli_corrupt_cache_is_one_line(executor_server, data_dir, tmp_path):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(os.urandom(8192))
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "1",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path)[:2],
        "--executor-model",
        "scripted",
        "--executor-cache-path",
        str(path),
        "--json",
        str(tmp_path / "result.json"),
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"w4s: error: the response cache {path} is corrupt or not a w4s cache")
    assert executor_server.stats()["requests"] == 0


def _damage_pages(path, start: int = 8192) -> None:
    """Flip bytes in every page past the first two: the header and schema still read."""
    data = bytearray(path.read_bytes())
    for offset in range(start, len(data), 97):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damage_past_the_header_turns_the_cache_off_with_a_warning(tmp_path, caplog):
    """Found by the first lookup, not by the opening check: the run goes on without the cache (the
    gateway sends every request) instead of a traceback (meta-agent) or every sample failing with a
    DatabaseError reported to the workflow (executor)."""
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    for i in range(300):
        cache.put(f"k{i}", 0, ["reply " * 200], 1, 1)
    cache.close()
    _damage_pages(path)
    damaged = ResponseCache(path)  # the header and schema are intact
    with caplog.at_level("WARNING", logger="w4s.llm.cache"):
        assert damaged.get("k7", 1) == {} and damaged.get("k250", 1) == {}
        damaged.put("new", 0, ["x"], 1, 1)  # no raise either
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "continuing without it" in warnings[0]
    damaged.close()


def test_rows_that_are_not_replies_are_misses(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    cache.put("good", 0, ["a", "b"], 1, 1)
    cache.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO responses VALUES ('neg', -1, 'x', 0, 0)")
        db.execute("INSERT INTO responses VALUES ('null', 0, NULL, 0, 0)")
        db.execute("INSERT INTO responses VALUES ('blob', 0, X'00ff', 0, 0)")
    db.close()
    cache = ResponseCache(path)
    # a negative index once made a request of n=1 look answered, and the gateway raised KeyError
    assert cache.get("neg", 1) == {} and cache.get("null", 1) == {}
    assert cache.get("blob", 1) == {} and cache.get("good", 2) == {0: "a", 1: "b"}
    cache.close()
