"""The CLI's progress display, one :class:`~w4s.callbacks.Callback` among others.

On a terminal it draws a rich progress bar per evaluation; without one (a Kubernetes pod has no TTY)
it logs a plain line when an evaluation starts, at most every ``interval_s`` seconds while it runs,
and when it ends, plus a line per optimizer candidate and turn and per training log step.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from w4s.callbacks import Callback, EvaluationInfo, EvaluationProgress, RunInfo, TurnSummary

log = logging.getLogger("w4s")


class ProgressDisplay(Callback):
    def __init__(self, console: Any = None, interactive: bool | None = None, interval_s: float = 10.0):
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.interval_s = interval_s
        self._console = console
        self._progress: Any = None
        self._bar: Any = None
        self._info: EvaluationInfo | None = None
        self._last_line = 0.0
        self._lock = threading.Lock()

    # --- runs ------------------------------------------------------------------------------------
    def on_run_start(self, run: RunInfo) -> None:
        log.info("%s: %s", run.kind, run.name)
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("score {task.fields[score]:.3f}  ${task.fields[cost]:.4f}"),
                TimeElapsedColumn(),
                console=self._console or Console(stderr=True),
                transient=False,
            )
            self._progress.start()

    def on_run_end(self, result: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # --- evaluations -----------------------------------------------------------------------------
    def on_evaluation_start(self, info: EvaluationInfo) -> None:
        with self._lock:
            self._info = info
            self._last_line = time.monotonic()
            if self._progress is not None:
                if self._bar is not None:
                    self._progress.remove_task(self._bar)
                label = f"{info.task}/{info.split}" + (
                    "" if info.purpose == "evaluation" else f" {info.purpose}"
                )
                self._bar = self._progress.add_task(label, total=info.samples, score=0.0, cost=0.0)
            else:
                log.info("%s on %s/%s: %d samples", info.purpose, info.task, info.split, info.samples)

    def on_sample_end(self, outcome: Any, progress: EvaluationProgress) -> None:
        with self._lock:
            if self._progress is not None and self._bar is not None:
                self._progress.update(
                    self._bar, completed=progress.done, score=progress.score, cost=progress.cost_usd
                )
                return
            now = time.monotonic()
            if now - self._last_line >= self.interval_s and self._info is not None:
                self._last_line = now
                log.info(
                    "%s/%s: %d/%d samples, score %.3f, $%.4f",
                    self._info.task,
                    self._info.split,
                    progress.done,
                    progress.total,
                    progress.score,
                    progress.cost_usd,
                )

    def on_evaluation_end(self, result: Any) -> None:
        if self._progress is None:
            log.info(
                "%s/%s: score %.4f over %d samples (%s)",
                result.task,
                result.split,
                result.score,
                len(result.samples),
                "complete" if result.complete else f"incomplete: {result.budget_exhausted}",
            )

    # --- the optimizer and training --------------------------------------------------------------
    def on_turn_end(self, turn: TurnSummary) -> None:
        log.info(
            "turn %d committed: selected %s, best so far %.3f", turn.turn, turn.selected, turn.best_score
        )

    def on_log(self, metrics: dict) -> None:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        log.info("train: %s", shown)
