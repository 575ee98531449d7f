"""What every benchmark task provides: samples per split, the text a workflow sees, and scoring."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w4s.errors import ConfigError
from w4s.tasks import resolve_data_dir

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Sample:
    """One benchmark item. ``task`` is what ``solver(agent, task)`` receives; ``expected`` never
    enters the sandbox."""

    id: str
    task: str
    expected: Any
    extra: dict = field(default_factory=dict, compare=False)


@dataclass
class Score:
    value: float
    error: str | None = None


class Task(ABC):
    """A benchmark: ``name``, ``family`` (math, reading or code), a description for the meta-agent."""

    name: str
    family: str
    description: str

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Sample]:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self._load(split, resolve_data_dir(data_dir))

    @abstractmethod
    def _load(self, split: str, data_dir: Path) -> list[Sample]: ...

    @abstractmethod
    def score(self, sample: Sample, answer: Any) -> Score:
        """Score one answer (plain data from the sandbox) in 0..1."""

    def public_tests(self, sample: Sample) -> list[str]:
        """Visible tests a workflow may run (``assert candidate(...) == ...``); code tasks only."""
        raise LookupError(f"{self.name} has no public tests")


def require(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing; point --data-dir (or W4S_DATA_DIR) at the benchmark folder, "
            "or fetch it with `w4s data pull`"
        )
    return path


def protocol_split(items: list, split: str, validation: int = 128, test: int = 800, seed: int = 0) -> list:
    """The ADAS/W4S protocol: shuffle once with a fixed seed, the first ``validation`` items are the
    validation split and the next ``test`` items the test split (disjoint, never clock-seeded)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen = order[:validation] if split == "validation" else order[validation : validation + test]
    return [items[i] for i in chosen]
