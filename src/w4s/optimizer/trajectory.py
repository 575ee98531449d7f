"""The trajectory store: one JSON line per evaluated candidate, append-only, crash-safe, resumable.

Each record is written with a single ``write`` of one line followed by ``fsync``, so a ``kill -9``
can at worst leave a partial last line; opening the store drops that line (the candidate in
flight is lost and redone). Records are keyed by (episode, turn, candidate): a resumed run skips
keys already present and never writes one twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

REQUIRED = (
    "episode",
    "turn",
    "candidate",
    "reply",
    "workflow",
    "valid_score",
    "reward",
    "selected",
    "error",
    "usage",
)


def record_key(record: dict) -> tuple[int, int, int]:
    return int(record["episode"]), int(record["turn"]), int(record["candidate"])


class TrajectoryStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self._keys: set[tuple[int, int, int]] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a partial line from a crash mid-write
            try:
                record = json.loads(line)
            except ValueError:
                break
            self.records.append(record)
            self._keys.add(record_key(record))
            good_end += len(line)
        if good_end < len(data):
            log.warning(
                "dropping %d bytes of an unfinished record at the end of %s", len(data) - good_end, self.path
            )
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())

    def __contains__(self, key: tuple[int, int, int]) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> None:
        missing = [field for field in REQUIRED if field not in record]
        if missing:
            raise ValueError(f"trajectory record lacks {', '.join(missing)}")
        key = record_key(record)
        if key in self._keys:
            raise ValueError(f"trajectory already holds episode {key[0]} turn {key[1]} candidate {key[2]}")
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)
        self._keys.add(key)

    def selected(self, episode: int, turn: int) -> dict | None:
        """The record chosen at (episode, turn), from the ``selected`` flags written with it."""
        for record in self.records:
            if record["episode"] == episode and record["turn"] == turn and record["selected"]:
                return record
        return None
