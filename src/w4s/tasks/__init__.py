"""Benchmark tasks: loading, deterministic splits and scoring (one module per benchmark family).

``get_task(name)`` returns the task; data comes from ``--data-dir`` or ``$W4S_DATA_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

from w4s.errors import ConfigError

DATA_DIR_ENV = "W4S_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark folder: ``data_dir``, else ``$W4S_DATA_DIR``; it must exist."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise ConfigError(f"no benchmark data: pass --data-dir or set {DATA_DIR_ENV} to the datasets folder")
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"benchmark data folder {path} does not exist; pass --data-dir or set {DATA_DIR_ENV}"
        )
    return path


def task_names() -> list[str]:
    return sorted(_registry())


def _registry() -> dict:
    from w4s.tasks.code import MBPP, HumanEval
    from w4s.tasks.drop import DROP
    from w4s.tasks.word_problems import GSM8K, MGSM, SVAMP, GSMHard

    return {cls.name: cls for cls in (HumanEval, MBPP, GSM8K, GSMHard, MGSM, SVAMP, DROP)}


def get_task(name: str):
    """A fresh task object for ``name``; a clear error for unknown names."""
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(sorted(registry))}")
    return registry[name]()
