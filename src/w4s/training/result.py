"""What a training run produced: ``training_summary.json`` is :meth:`TrainResult.to_dict`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

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

    def to_dict(self) -> dict:
        data = asdict(self)
        data["version"] = self.VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Inverse of :meth:`to_dict`; ConfigError for a dict that is not one (or from a newer w4s)."""
        if not isinstance(data, dict):
            raise ConfigError("a training result must be a mapping")
        version = data.get("version")
        if type(version) is not int or not 1 <= version <= cls.VERSION:
            raise ConfigError(f"training result version {version!r} is not one this w4s reads; upgrade w4s")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ConfigError(f"not a training result ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        """Read ``training_summary.json`` (or the output folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "training_summary.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read {path} ({type(exc).__name__}); is it a w4s train output?"
            ) from None
        return cls.from_dict(data)
