"""What a training run produced: ``training_summary.json`` is :meth:`TrainResult.to_dict`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from w4s.config import check_version, read_record
from w4s.errors import ConfigError


@dataclass
class TrainResult:
    VERSION: ClassVar[int] = 1

    model: str  # the checkpoint folder (loads with transformers)
    examples: int
    dropped_too_long: int
    tokens_per_epoch: int
    steps: int
    epochs: float
    first_loss: float | None
    final_loss: float | None
    train_loss: float | None
    seconds: float
    tokens_per_second: float | None
    weights: dict  # min / max of the examples' RWR weights
    rewards: list[float]
    resumed_from: str | None
    lora: bool
    merged: bool
    config: dict  # the TrainConfig's to_dict()
    extra: dict = field(default_factory=dict)
    batches_per_epoch: int | None = None  # token-bounded micro-batches per epoch (per device)
    settings: dict = field(default_factory=dict)  # what "auto" resolved to: checkpointing, padding-free, ...
    peak_memory_bytes: int | None = None  # the GPU allocator's peak with CUDA, else peak RSS

    def to_dict(self) -> dict:
        data = asdict(self)
        data["version"] = self.VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Inverse of :meth:`to_dict`; ConfigError for a dict that is not one (or from a newer w4s)."""
        if not isinstance(data, dict):
            raise ConfigError("a training result must be a mapping")
        check_version(cls, data.get("version"))
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ConfigError(f"not a training result ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        """Read ``training_summary.json`` (or the output folder holding it)."""
        return cls.from_dict(read_record(path, "training_summary.json", "a w4s train summary"))
