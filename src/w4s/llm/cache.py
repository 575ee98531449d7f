"""Persistent response cache (SQLite): one row per (request, choice index).

Keys hash the endpoint and model, the model's revision where known, the messages, every sampling
parameter and the seed, plus the index of the choice, so re-running an unchanged workflow at
temperature 0 makes no calls, and sampled calls replay the same choices for the same seed, while a
different server or a redeployed model never answers from another's entries. Writes are committed
per response; WAL mode lets several processes share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path

from w4s.errors import ConfigError

log = logging.getLogger(__name__)


def request_key(identity: str, revision: str | None, messages: list[dict], params: dict) -> str:
    """What makes two requests the same: the endpoint and model that answer (``identity``), the
    model's revision where known, the messages, and every sampling parameter (seed included)."""
    payload = json.dumps(
        {"backend": identity, "revision": revision, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=True,  # any string a workflow sends (a lone surrogate included) hashes
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self._lock = threading.Lock()
        self._damaged = False  # a read or write found the file damaged: the cache is off
        instead = "pass --executor-cache-path (or --meta-cache-path) off, or another path"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder of the response cache {self.path} ({exc.strerror or exc}); {instead}"
            ) from None
        try:
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the response cache {self.path} ({exc}); {instead}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT, idx INTEGER, text TEXT, prompt_tokens INTEGER, "
                "completion_tokens INTEGER, PRIMARY KEY (key, idx))"
            )
            self._db.execute("SELECT key, idx, text, prompt_tokens, completion_tokens FROM responses LIMIT 0")
        except sqlite3.Error as exc:
            self._db.close()
            if "locked" in str(exc):
                raise ConfigError(
                    f"the response cache {self.path} stayed locked by another process ({exc}); wait for it, "
                    f"or {instead}"
                ) from None
            raise ConfigError(
                f"the response cache {self.path} is corrupt or not a w4s cache ({exc}); delete it (it only "
                f"holds cached replies), or {instead}"
            ) from None

    def get(self, key: str, count: int) -> dict[int, str]:
        """The cached choices 0..count-1 of ``key`` (rows a damaged or edited file holds in their place,
        such as a NULL text or a negative index, are misses)."""
        with self._lock:
            if self._damaged:
                return {}
            try:
                rows = self._db.execute(
                    "SELECT idx, text FROM responses WHERE key = ? AND idx >= 0 AND idx < ?", (key, count)
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                self._give_up(exc)
                return {}
        return {idx: text for idx, text in rows if type(idx) is int and type(text) is str}

    def put(
        self, key: str, first_index: int, texts: list[str], prompt_tokens: int, completion_tokens: int
    ) -> None:
        rows = [
            (key, first_index + i, text, prompt_tokens, completion_tokens) for i, text in enumerate(texts)
        ]
        with self._lock:
            if self._damaged:
                return
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.DatabaseError as exc:
                self._give_up(exc)

    def _give_up(self, exc: sqlite3.DatabaseError) -> None:
        """Damage found past the header (a page the opening check did not read): the cache only saves
        calls, so the run goes on without it (every request is sent), and says so once."""
        self._damaged = True
        log.warning(
            "the response cache %s is damaged (%s): continuing without it; delete it (it only holds cached "
            "replies)",
            self.path,
            exc,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
