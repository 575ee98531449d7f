"""The trajectory store: one JSON line per evaluated candidate, append-only, crash-safe, resumable.

Each record is written with a single ``write`` of one line followed by ``fsync``, so a ``kill -9``
can at worst leave a partial last line; opening the store drops that line (the candidate in
flight is lost and redone). Records are keyed by (episode, turn, candidate): a resumed run skips
keys already present and never writes one twice.

Damage anywhere else (a line that is not a record: a flipped byte, an edit) is never dropped
silently: the damaged lines are moved to ``<file>.damaged`` (with their line numbers) and opening
the store fails with :class:`DamagedStore`, which says where they went; a second open then sees
only the good records.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

from w4s.errors import ConfigError

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


class DamagedStore(ConfigError):
    """Lines of a trajectory file are not records; they were moved aside, and the run stops."""


def record_key(record: dict) -> tuple[int, int, int]:
    return int(record["episode"]), int(record["turn"]), int(record["candidate"])


def _parse(line: bytes) -> dict | None:
    """The record on ``line``, or None when the line is not one."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or any(field not in record for field in REQUIRED):
        return None
    if not all(
        type(record[field]) is int and record[field] >= 0 for field in ("episode", "turn", "candidate")
    ):
        return None
    # What the optimizer writes, and what resuming, the report and training read: an edit that
    # leaves valid JSON (a NaN or out-of-range score, a string reward) is damage as well.
    score, reward = record["valid_score"], record["reward"]
    if not (
        isinstance(record["reply"], str)
        and (record["workflow"] is None) == (score is None)
        and (record["workflow"] is None or isinstance(record["workflow"], str))
        and (score is None or (type(score) in (int, float) and 0 <= score <= 1))
        and type(reward) in (int, float)
        and math.isfinite(reward)
        and type(record["selected"]) is bool
        and (record["error"] is None or isinstance(record["error"], str))
        and isinstance(record["usage"], dict)
    ):
        return None
    return record


def _fsync_write(path: Path, data: bytes, mode: str = "wb") -> None:
    with path.open(mode) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class TrajectoryStore:
    def __init__(self, path: str | os.PathLike, episode: int | None = None):
        """``episode``: the run's episode (a run folder holds one): a record of another is damage,
        or training would learn from turns this run never took."""
        self.path = Path(path)
        self.episode = episode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self._keys: set[tuple[int, int, int]] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.splitlines(keepends=True)
        torn = b""
        if lines and not lines[-1].endswith(b"\n"):
            torn = lines.pop()  # a partial last line from a crash mid-write: the candidate in flight
        kept: list[bytes] = []
        damaged: list[tuple[int, bytes]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _parse(line)
            if (
                record is None
                or (self.episode is not None and record["episode"] != self.episode)
                or record_key(record) in self._keys
                or (record["selected"] and self.selected(record["episode"], record["turn"]) is not None)
            ):  # not a record, another run's, a second copy of one, or a second selection in its turn
                damaged.append((number, line))
                continue
            self.records.append(record)
            self._keys.add(record_key(record))
            kept.append(line)
        if torn:
            log.warning("dropping %d bytes of an unfinished record at the end of %s", len(torn), self.path)
        if damaged:
            aside = self.path.with_name(self.path.name + ".damaged")
            entries = b"".join(
                json.dumps({"line": number, "text": line.decode("utf-8", "replace")}).encode() + b"\n"
                for number, line in damaged
            )
            _fsync_write(aside, entries, "ab")  # first: nothing is ever only in memory
            tmp = self.path.with_name(self.path.name + ".tmp")
            _fsync_write(tmp, b"".join(kept))
            os.replace(tmp, self.path)
            numbers = ", ".join(str(number) for number, _ in damaged[:10])
            raise DamagedStore(
                f"{self.path} had {len(damaged)} damaged line(s) ({numbers}{', ...' if len(damaged) > 10 else ''}), "
                f"moved to {aside}; inspect them, then resume again to continue with the "
                f"{len(self.records)} good records"
            )
        if torn:
            with self.path.open("r+b") as handle:
                handle.truncate(len(data) - len(torn))
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
        # ASCII-escaped: any string a reply holds (a lone surrogate included) makes one valid line.
        line = json.dumps(record, ensure_ascii=True, sort_keys=True) + "\n"
        _fsync_write(self.path, line.encode(), "ab")
        self.records.append(record)
        self._keys.add(key)

    def get(self, key: tuple[int, int, int]) -> dict | None:
        """The record of (episode, turn, candidate), or None."""
        if key not in self._keys:
            return None
        return next(r for r in self.records if record_key(r) == key)

    def selected(self, episode: int, turn: int) -> dict | None:
        """The record chosen at (episode, turn), from the ``selected`` flags written with it."""
        for record in self.records:
            if record["episode"] == episode and record["turn"] == turn and record["selected"]:
                return record
        return None
