"""The merged training set: trajectories of several tasks and episodes -> one weighted training file.

:func:`merge` reads trajectory files (``w4s optimize``'s ``trajectories.jsonl``, one per task or
episode), applies the filters of ``w4s train`` (:func:`w4s.training.dataset.filter_records`, the same
code), drops duplicate (prompt, reply) pairs, and writes to ``out_dir``:

- ``train.jsonl``: the records kept, each with ``source`` (its original file), ``task`` (where known:
  the record's own, else the ``run.json`` beside its file) and ``weight`` = exp(reward / temperature).
  ``w4s train`` reads it like any trajectories file and builds the same examples as from the originals.
- ``summary.json``: :meth:`MergeResult.to_dict` (counts, rewards, weights, the status).
- ``rewards.png``: a histogram of the kept records' rewards (where matplotlib is installed).

A set whose rewards are all equal (a small meta-agent may write no working workflow) or that is empty
is not an error here: the result says so (``status``, ``trainable``) and the pipeline skips training.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from w4s.config import Config, option, positive
from w4s.errors import ConfigError
from w4s.training.dataset import SOURCE, check_temperature, filter_records, read_records, rwr_weight

log = logging.getLogger(__name__)

TRAIN = "train.jsonl"
SUMMARY = "summary.json"
PLOT = "rewards.png"


def _turns(value) -> bool:
    return isinstance(value, list) and all(type(t) is int for t in value)


@dataclass
class MergeConfig(Config):
    temperature: float = option(0.4, "RWR temperature T: weight = exp(reward / T)", positive)
    only_success_episodes: bool = option(
        False, "keep only episodes (of one file) where some candidate earned reward >= 1"
    )
    drop_failed: bool = option(False, "drop candidates that never produced a runnable workflow")
    turns: list | None = option(
        None, "keep only these turns (e.g. [1, 2]); None keeps all", _turns, "a list of turn numbers"
    )
    dedup: bool = option(
        True, "drop records with the same prompt_messages and reply, keeping the one with the highest reward"
    )
    allow_uniform_weights: bool = option(
        False,
        "when every kept reward is equal, still call the set trainable (RWR is then plain SFT); "
        "otherwise the result's status is 'uniform' and training should be skipped",
    )


@dataclass
class MergeResult:
    """What :func:`merge` kept and why; ``summary.json`` is :meth:`to_dict`."""

    VERSION: ClassVar[int] = 1

    status: str  # "ok", "uniform" (every reward equal) or "empty" (no record left)
    trainable: bool  # status "ok", or "uniform" with allow_uniform_weights
    message: str  # one line saying what the status means
    examples: int  # records in train.jsonl
    records: int  # records read
    dropped: dict  # by filter: only_success_episodes, drop_failed, turns
    duplicates: int  # dropped by dedup
    uniform: bool  # every kept reward is equal (also true for one record)
    rewards: dict  # min / max / mean (None when empty)
    weights: dict  # min / max / mean / ess, the effective sample size (sum w)^2 / sum w^2
    tasks: dict  # task -> examples kept ("unknown" where neither the record nor a run.json names one)
    sources: list  # per file: path, task, records, examples
    paths: dict  # train_jsonl, summary_json, rewards_png (None without matplotlib)
    config: dict  # the MergeConfig's to_dict()

    def to_dict(self) -> dict:
        return {"version": self.VERSION, **asdict(self)}


@dataclass
class _Source:
    path: str
    task: str | None
    records: int = 0
    examples: int = 0


def merge(paths: list[Path], out_dir: Path, config: MergeConfig) -> MergeResult:
    """Merge trajectory files into ``out_dir``/train.jsonl, summary.json and rewards.png.

    Raises ConfigError for unreadable or foreign files and a temperature at which the weights
    overflow; an empty or uniform set is reported in the result, never raised."""
    if not paths:
        raise ConfigError("merge needs at least one trajectories file")
    records = read_records(list(paths))
    sources: dict[str, _Source] = {}
    for record in records:
        origin = record[SOURCE]
        if origin not in sources:
            sources[origin] = _Source(origin, _run_task(Path(origin)))
        sources[origin].records += 1
        if "task" not in record and sources[origin].task is not None:
            record["task"] = sources[origin].task
    filtered = filter_records(records, config)
    kept, duplicates = _dedup(filtered.kept) if config.dedup else (filtered.kept, 0)
    if kept:
        check_temperature([float(r["reward"]) for r in kept], config.temperature)
    for record in kept:
        record["weight"] = rwr_weight(record["reward"], config.temperature)
        sources[record[SOURCE]].examples += 1

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {out_dir} ({exc.strerror or exc}); choose a writable out_dir"
        ) from None
    train_path, summary_path, plot_path = out_dir / TRAIN, out_dir / SUMMARY, out_dir / PLOT
    _write(train_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    rewards = [float(r["reward"]) for r in kept]
    weights = [r["weight"] for r in kept]
    uniform = len(set(rewards)) == 1
    if not kept:
        status, trainable = "empty", False
        message = (
            f"no record is left of {len(records)} (filters dropped {_counts(filtered.dropped)}, "
            f"{duplicates} duplicates): nothing to train on"
        )
    elif uniform:
        status, trainable = "uniform", config.allow_uniform_weights
        message = (
            f"every one of the {len(kept)} rewards equals {rewards[0]:g}: weighting cannot steer anything; "
            + ("training anyway (allow_uniform_weights: plain SFT)" if trainable else "skip training")
        )
    else:
        status, trainable = "ok", True
        message = (
            f"{len(kept)} examples of {len(records)} records, rewards {min(rewards):g} to {max(rewards):g}"
        )
    tasks: dict[str, int] = {}
    for record in kept:
        name = record.get("task") if isinstance(record.get("task"), str) else "unknown"
        tasks[name] = tasks.get(name, 0) + 1
    plot = None
    if importlib.util.find_spec("matplotlib") is not None:
        _plot(rewards, plot_path, message)
        plot = str(plot_path)
    else:
        log.info("no %s: matplotlib is not installed (pip install 'w4s[plot]')", PLOT)
    result = MergeResult(
        status=status,
        trainable=trainable,
        message=message,
        examples=len(kept),
        records=len(records),
        dropped=filtered.dropped,
        duplicates=duplicates,
        uniform=uniform,
        rewards=_stats(rewards),
        weights={**_stats(weights), "ess": _ess(weights)},
        tasks=dict(sorted(tasks.items())),
        sources=[
            {"path": s.path, "task": s.task, "records": s.records, "examples": s.examples}
            for s in sources.values()
        ],
        paths={"train_jsonl": str(train_path), "summary_json": str(summary_path), "rewards_png": plot},
        config=config.to_dict(),
    )
    _write(summary_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if duplicates:
        log.info(
            "dropped %d duplicate (prompt, reply) records, keeping the highest reward of each", duplicates
        )
    log.info("merged training set: %s (%s)", message, train_path)
    return result


def _run_task(path: Path) -> str | None:
    """The task of the ``w4s optimize`` run folder holding ``path`` (its run.json), if any."""
    try:
        run = json.loads((path.parent / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    task = run.get("identity", {}).get("task") if isinstance(run, dict) else None
    return task if isinstance(task, str) else None


def _dedup(records: list[dict]) -> tuple[list[dict], int]:
    """One record per (prompt_messages, reply): the highest reward (the first of equals), in file order."""
    best: dict[str, int] = {}
    for index, record in enumerate(records):
        key = json.dumps([record["prompt_messages"], record["reply"]], sort_keys=True, ensure_ascii=False)
        if key not in best or record["reward"] > records[best[key]]["reward"]:
            best[key] = index
    chosen = set(best.values())
    return [r for i, r in enumerate(records) if i in chosen], len(records) - len(chosen)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"min": None, "max": None, "mean": None}
    return {"min": min(values), "max": max(values), "mean": math.fsum(values) / len(values)}


def _ess(weights: list[float]) -> float | None:
    """Kish's effective sample size: how many equally weighted examples the weights are worth."""
    if not weights:
        return None
    return math.fsum(weights) ** 2 / math.fsum(w * w for w in weights)


def _counts(dropped: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in dropped.items())


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); choose a writable out_dir") from None


def _plot(rewards: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=110)
    axes.hist(rewards, bins=min(30, max(1, len(set(rewards)))), color="tab:blue", edgecolor="white")
    axes.set_xlabel("reward")
    axes.set_ylabel("records kept")
    axes.set_title(title if len(title) <= 70 else title[:67] + "...", fontsize=8)
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    os.replace(tmp, path)
