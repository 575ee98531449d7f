"""What an optimization run produced, as typed data: the best workflow, the scores, the turns, the
files. ``report.json`` is :meth:`OptimizeResult.to_dict`; a pipeline step reads it back with
:meth:`OptimizeResult.from_dict` (or :func:`OptimizeResult.load`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from w4s.config import check_version, read_record
from w4s.errors import ConfigError


@dataclass(frozen=True)
class BestWorkflow:
    """The workflow with the best validation score (example workflows included), scored once on test."""

    name: str
    source: str
    valid_score: float
    test_score: float | None  # None: not scored (the run stopped first)
    test_samples: int | None


@dataclass(frozen=True)
class CandidateSummary:
    candidate: int
    valid_score: float | None  # None: it never produced a runnable workflow
    reward: float
    repairs: int
    error: str | None


@dataclass(frozen=True)
class TurnRecord:
    """One committed turn: its candidates, the one selected, the best validation score after it."""

    turn: int
    candidates: list[CandidateSummary]
    selected: int | None
    best_after: float | None


@dataclass(frozen=True)
class RunPaths:
    """The run folder and the files in it."""

    out_dir: str
    trajectories: str
    best_workflow: str | None
    report_json: str
    report_md: str
    curve_png: str | None  # None where matplotlib is not installed (the 'plot' extra)
    test_evaluation: str | None = None  # the best workflow's test results (None: test not scored)


@dataclass
class OptimizeResult:
    VERSION: ClassVar[int] = 1

    task: str
    episode: int
    meta_model: str
    executor: str
    config: dict
    best: BestWorkflow | None  # None: the run stopped before any workflow was scored
    baselines: dict[str, float]
    turns: list[TurnRecord]
    usage: dict[str, dict]  # executor / meta: Usage.to_dict(), over every resume of the run
    sandbox: dict  # the isolation the evaluations ran under
    stopped: str | None  # why the run stopped early, or None when it finished
    paths: RunPaths
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["version"] = self.VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizeResult:
        """Inverse of :meth:`to_dict`; ConfigError for a dict that is not one (or from a newer w4s)."""
        check_version(cls, data.get("version") if isinstance(data, dict) else None)
        try:
            values = {k: v for k, v in data.items() if k != "version"}
            best = values.get("best")
            values["best"] = None if best is None else BestWorkflow(**best)
            values["turns"] = [
                TurnRecord(**{**turn, "candidates": [CandidateSummary(**c) for c in turn["candidates"]]})
                for turn in values["turns"]
            ]
            values["paths"] = RunPaths(**values["paths"])
            return cls(**values)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"not an optimize result ({type(exc).__name__}: {exc}); upgrade w4s or rerun"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> OptimizeResult:
        """Read ``report.json`` (or the folder holding it)."""
        return cls.from_dict(read_record(path, "report.json", "an optimize report"))
