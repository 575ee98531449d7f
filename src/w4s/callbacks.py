"""Callbacks: what a run tells the outside world while it runs.

A :class:`Callback` overrides the events it cares about (in the spirit of transformers'
``TrainerCallback``): the CLI's progress display is one, MLflow tracking and the Kubeflow components
are others. Every event carries finished, immutable data (a sample's outcome, an evaluation's
result, a trajectory record, a training log line), never live state.

Callbacks run off the hot path: :class:`CallbackHandler` hands events to one thread of its own, in
order, so a slow callback (an HTTP call to a tracking server) never stalls samples in flight, and a
callback that raises is reported once per event kind and never ends the run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EVENTS = (
    "on_run_start",
    "on_evaluation_start",
    "on_sample_end",
    "on_evaluation_end",
    "on_candidate_end",
    "on_turn_end",
    "on_log",
    "on_run_end",
    "on_close",
)


@dataclass(frozen=True)
class RunInfo:
    """A run that starts: ``kind`` is evaluate, optimize or train; ``config`` its settings as a dict
    (one entry per configuration); ``tags`` what identifies it (models, split) as strings."""

    kind: str
    name: str
    config: dict = field(default_factory=dict)
    out_dir: str | None = None
    task: str | None = None
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationInfo:
    """An evaluation that starts. ``purpose``: evaluation, baseline:<name>, self-check, validation or test."""

    task: str
    split: str
    workflow: str
    samples: int
    purpose: str = "evaluation"


@dataclass(frozen=True)
class EvaluationProgress:
    """Where an evaluation stands after a sample: samples done of ``total``, the mean score of those
    that ran, and what it has cost."""

    done: int
    total: int
    score: float
    cost_usd: float


@dataclass(frozen=True)
class TurnSummary:
    """A committed optimizer turn: the candidate that advances the state (None: none scored)."""

    episode: int
    turn: int
    selected: int | None
    best_score: float
    scores: tuple[float | None, ...]
    rewards: tuple[float, ...]
    spend_usd: float = 0.0  # the run's spend so far (executor and meta-agent, every resume)


class Callback:
    """Override the events you need; each default does nothing. Events (see ``w4s.callbacks``):

    ``on_run_start(run: RunInfo)``, ``on_evaluation_start(info: EvaluationInfo)``,
    ``on_sample_end(outcome: SampleOutcome, progress: EvaluationProgress)``,
    ``on_evaluation_end(result: EvaluationResult)``, ``on_candidate_end(record: dict)`` (a trajectory
    record), ``on_turn_end(turn: TurnSummary)``, ``on_log(metrics: dict)`` (training),
    ``on_run_end(result)`` (an EvaluationResult, OptimizeResult or TrainResult), ``on_close()`` (always
    last, also when the run raised: release what the callback holds).

    ``trace_sample_rate``: the share of evaluated samples whose every executor call and sandbox span
    this callback wants to see, as ``outcome.trace`` in ``on_sample_end`` (chosen by sample id, so the
    same samples are traced on every run).
    """

    trace_sample_rate: float = 0.0

    def on_run_start(self, run: RunInfo) -> None:
        pass

    def on_evaluation_start(self, info: EvaluationInfo) -> None:
        pass

    def on_sample_end(self, outcome: Any, progress: EvaluationProgress) -> None:
        pass

    def on_evaluation_end(self, result: Any) -> None:
        pass

    def on_candidate_end(self, record: dict) -> None:
        pass

    def on_turn_end(self, turn: TurnSummary) -> None:
        pass

    def on_log(self, metrics: dict) -> None:
        pass

    def on_run_end(self, result: Any) -> None:
        pass

    def on_close(self) -> None:
        """The last event, always: after ``on_run_end``, or in its place when the run raised."""


_STOP = object()


class CallbackHandler:
    """Delivers events to callbacks on a thread of its own, in order. Use as a context manager, or
    :meth:`close` it: closing waits until every event has been delivered."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"{callback!r} is not a w4s.Callback; subclass it and override the events you need"
                )
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    @property
    def trace_rate(self) -> float:
        """The largest share of samples any callback wants traced."""
        return max((c.trace_sample_rate for c in self.callbacks), default=0.0)

    def emit(self, event: str, *args: Any) -> None:
        """Queue ``event(*args)`` for every callback; returns at once."""
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}")
        if not self.callbacks:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver, name="w4s-callbacks", daemon=True)
                self._thread.start()
        self._queue.put((event, args))

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            event, args = item
            for callback in self.callbacks:
                try:
                    getattr(callback, event)(*args)
                # BaseException too: a callback's sys.exit() would end this thread, and every later
                # event would be lost for every callback (this thread is no place to stop the run from)
                except BaseException as exc:  # noqa: BLE001 - a callback never ends the run; it is reported
                    self._report(callback, event, exc)

    def _report(self, callback: Callback, event: str, exc: BaseException) -> None:
        key = (type(callback).__qualname__, event)
        if key in self._reported:
            log.debug("callback %s.%s failed again: %s", *key, exc)
            return
        self._reported.add(key)
        log.warning(
            "callback %s.%s failed (%s: %s); the run goes on (further failures of this event are logged at debug level)",
            key[0],
            event,
            type(exc).__name__,
            str(exc)[:300],
        )

    @property
    def failures(self) -> set[tuple[str, str]]:
        """(callback class, event) pairs that raised at least once."""
        return set(self._reported)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def __enter__(self) -> CallbackHandler:
        return self

    def __exit__(self, *exc) -> None:
        if self.callbacks:
            self.emit("on_close")  # last: after on_run_end, or in place of it when the run raised
        self.close()
