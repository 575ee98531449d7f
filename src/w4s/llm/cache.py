"""Persistent response cache (SQLite): one row per (request, choice index).

Keys hash the model, the messages, every sampling parameter and the seed, plus the index of the
choice, so re-running an unchanged workflow at temperature 0 makes no calls, and sampled calls
replay the same choices for the same seed. Writes are committed per response; WAL mode lets
several processes share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path


def request_key(model: str, messages: list[dict], params: dict) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT, idx INTEGER, text TEXT, prompt_tokens INTEGER, "
            "completion_tokens INTEGER, PRIMARY KEY (key, idx))"
        )

    def get(self, key: str, count: int) -> dict[int, str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, text FROM responses WHERE key = ? AND idx < ?", (key, count)
            ).fetchall()
        return {idx: text for idx, text in rows}

    def put(
        self, key: str, first_index: int, texts: list[str], prompt_tokens: int, completion_tokens: int
    ) -> None:
        rows = [
            (key, first_index + i, text, prompt_tokens, completion_tokens) for i, text in enumerate(texts)
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
