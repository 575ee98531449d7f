"""The run folder of ``w4s optimize``: what a run is, what it spent, and the turn in flight.

Besides the trajectories (:mod:`w4s.optimizer.trajectory`) a run folder holds:

``run.json``            the settings that define the run (task, seed, episode, validation subset,
                        candidates, reward, executor and meta-agent models, the sample time limit).
                        A resume that asks for different ones is refused: its records, baselines and
                        best workflow would belong to another run.
``spend.json``          what the executor and the meta-agent cost so far, across resumes, so that a
                        budget holds for the whole run and not per process.
``.turn-replies.json``  the meta-agent's replies of the turn in flight, so that a resume evaluates
                        the same candidates instead of asking again (they are the data).

Every file is replaced atomically (written aside, fsynced, renamed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from w4s.errors import ConfigError
from w4s.llm.limits import Usage

RUN = "run.json"
SPEND = "spend.json"
REPLIES = ".turn-replies.json"
FORMAT = 1


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is unreadable or damaged ({type(exc).__name__}); restore it or choose another --out"
        ) from None


class RunFolder:
    """The files of one run; ``identity`` is the run's defining settings (see the module docstring)."""

    def __init__(self, path: Path, identity: dict, resume: bool):
        self.path = path
        self.identity = identity
        run_file = path / RUN
        if run_file.exists():
            if not resume:
                raise ConfigError(
                    f"{path} already holds a run; pass --resume to continue it, or choose another --out"
                )
            saved = _read_json(run_file)
            if not isinstance(saved, dict) or saved.get("format") != FORMAT:
                raise ConfigError(f"{run_file} was not written by this w4s; choose another --out")
            self._check_same_run(saved.get("identity") or {})
        else:
            atomic_write(run_file, json.dumps({"format": FORMAT, "identity": identity}, indent=2) + "\n")
        self.prior = self._load_spend()

    def _check_same_run(self, saved: dict) -> None:
        conflicts = [key for key in self.identity if saved.get(key) != self.identity[key]]
        if conflicts:
            key = conflicts[0]
            raise ConfigError(
                f"cannot resume {self.path}: it is a run with {key}={saved.get(key)!r}, this one asks for "
                f"{self.identity[key]!r}; resume with the run's own settings, or choose another --out"
            )

    # --- spend -------------------------------------------------------------------------------------
    def _load_spend(self) -> dict[str, Usage]:
        path = self.path / SPEND
        if not path.exists():
            return {"executor": Usage(), "meta": Usage()}
        saved = _read_json(path)
        try:
            if not isinstance(saved, dict) or not all(
                isinstance(saved.get(s), dict) for s in ("executor", "meta")
            ):
                raise ValueError("not a spend record")
            return {side: Usage.from_dict(saved[side]) for side in ("executor", "meta")}
        except ValueError as exc:
            raise ConfigError(f"{path} is damaged ({exc}); restore it or choose another --out") from None

    def total(self, executor: Usage, meta: Usage) -> dict[str, Usage]:
        """The run's spend: earlier processes' (``prior``) plus this process's gateways'."""
        totals = {}
        for side, current in (("executor", executor), ("meta", meta)):
            total = Usage()
            total.add(self.prior[side])
            total.add(current)
            totals[side] = total
        return totals

    def save_spend(self, executor: Usage, meta: Usage) -> None:
        totals = self.total(executor, meta)
        atomic_write(
            self.path / SPEND, json.dumps({k: v.to_dict() for k, v in totals.items()}, indent=2) + "\n"
        )

    # --- the turn in flight ------------------------------------------------------------------------
    def replies(self, episode: int, turn: int) -> list[str] | None:
        path = self.path / REPLIES
        if not path.exists():
            return None
        saved = _read_json(path)
        if not isinstance(saved, dict) or (saved.get("episode"), saved.get("turn")) != (episode, turn):
            return None
        replies = saved.get("replies")
        return replies if isinstance(replies, list) and all(isinstance(r, str) for r in replies) else None

    def save_replies(self, episode: int, turn: int, replies: list[str]) -> None:
        atomic_write(self.path / REPLIES, json.dumps({"episode": episode, "turn": turn, "replies": replies}))

    def clear_replies(self) -> None:
        (self.path / REPLIES).unlink(missing_ok=True)
