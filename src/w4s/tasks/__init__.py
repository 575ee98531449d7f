"""Benchmark tasks: loading, deterministic splits and scoring (one module per benchmark family).

``get_task(name)`` returns the task; data comes from ``--data-dir`` or ``$W4S_DATA_DIR``.
"""

from __future__ import annotations

from w4s.errors import ConfigError
from w4s.tasks.base import DATA_DIR_ENV, resolve_data_dir

__all__ = ["DATA_DIR_ENV", "get_task", "resolve_data_dir", "task_names"]


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
