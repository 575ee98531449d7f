"""Benchmark tasks: loading, deterministic splits and scoring (one module per benchmark)."""

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
