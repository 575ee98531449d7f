"""MLflow tracking as a callback of the library API: the CLI, the Kubeflow components and user
scripts record runs the same way (``callbacks=[MLflowTracking()]``).

What a run records:

* experiment ``w4s/<task>`` (evaluate, optimize) or ``w4s/meta-agent`` (train); a run name that says
  what ran; params = the stage's configurations, flattened (``optimize.turns``, ``executor.model``);
  tags = w4s version, git sha when run from a checkout, executor and meta-agent models, split and
  the sha256 of the sample ids;
* metrics with steps: evaluate's score, failures, calls, tokens, cost and wall time; per optimizer
  candidate its validation score, reward and repairs, per turn the best so far and the spend;
  per training step the trainer's loss and learning rate;
* artifacts: the evaluation JSON; the optimizer's best_workflow.py, report.json, report.md,
  curve.png and trajectories.jsonl; training_summary.json;
* traces: each sampled sample (``trace_sample_rate``) as an MLflow trace: the workflow as the root
  span, every ``call_llm`` as an LLM span (messages, replies, tokens, latency, cache hits, retries),
  every ``execute_code`` as a tool span. Messages and replies only: no key is ever in a trace.

Callbacks run on their own thread, so none of this is on a sample's path; metrics go in batches.
A store that stops answering mid-run costs nothing but the record: the run's own files are written
as always, and one line at the end says what was not logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from w4s.callbacks import Callback, EvaluationInfo, EvaluationProgress, RunInfo, TurnSummary
from w4s.errors import InfrastructureError
from w4s.tracking.registry import read_run_record, write_run_record
from w4s.tracking.stats import sample_ids_sha256
from w4s.tracking.store import (
    TrackingConfig,
    check_store,
    experiment_id,
    fluent_uri,
    git_sha,
    open_client,
    resolve_uri,
    ui_command,
    w4s_version,
)

log = logging.getLogger(__name__)

META_AGENT_EXPERIMENT = "w4s/meta-agent"
_BATCH = 500  # metrics per log_batch call (MLflow takes up to 1000)
# Error codes of a store that answers but refuses one record: only that record is lost.
_REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}
# An unreachable server must not hold a run for minutes of HTTP retries.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"optimize": {"turns": 5}}`` -> ``{"optimize.turns": "5"}`` (the version keys left out)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key == "version":
            continue
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)
    return flat


class MLflowTracking(Callback):
    """Records each run it hears in MLflow (see the module docstring)."""

    def __init__(self, cfg: TrackingConfig | None = None):
        self.cfg = cfg or TrackingConfig()
        self.trace_sample_rate = self.cfg.trace_sample_rate
        self.uri = resolve_uri(self.cfg)
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        check_store(self.uri)  # now; MLflow itself is loaded on the callbacks' thread, beside the work
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.kind = ""
        self._metrics: list = []
        self._candidates = 0
        self._broken: str | None = None
        self._lost: list[str] = []
        self._refused: list[str] = []
        self._checked = 0.0
        self._ended = False
        self._traces = 0
        self._scope = contextlib.ExitStack()  # MLflow's process-wide URI, for tracing, during the run

    # --- the record ------------------------------------------------------------------------------
    def _call(self, what: str, action, *args, **kwargs) -> Any:
        """One MLflow operation. A store that refuses one record (a bad value) loses that record; a
        store that fails (down, unreachable) is sent nothing more, and only what is lost is counted."""
        if self._broken is not None or self.run_id is None and what != "the run":
            self._lost.append(what)
            return None
        try:
            if isinstance(action, str):  # a method of the client (there is one once the run began)
                action = getattr(self.client, action)
            return action(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a tracking failure never ends the run; it is reported
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if getattr(exc, "error_code", None) in _REFUSALS:
                self._refused.append(f"{what} ({why})")
            else:
                self._broken = why
                self._lost.append(what)
            return None

    def _alive(self) -> bool:
        """Whether a server still answers, asked at most once a second: MLflow's trace export
        swallows its failures after retrying each one, so a server gone mid-run would cost every
        remaining trace its retries."""
        if self._broken is not None:
            return False
        now = time.monotonic()
        if not self.uri.startswith(("http://", "https://")) or now - self._checked < 1.0:
            return True
        self._checked = now
        try:
            check_store(self.uri, timeout=2.0)
        except InfrastructureError as exc:
            self._broken = str(exc).split("(", 1)[-1].split(")", 1)[0]
            return False
        return True

    def _metric(self, key: str, value: float, step: int = 0) -> None:
        from mlflow.entities import Metric

        self._metrics.append(Metric(key, float(value), int(time.time() * 1000), step))
        if len(self._metrics) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        metrics, self._metrics = self._metrics, []
        while metrics:
            chunk, metrics = metrics[:_BATCH], metrics[_BATCH:]
            self._call(f"{len(chunk)} metrics", "log_batch", self.run_id, metrics=chunk)

    def _artifact(self, path: str | Path | None, folder: str | None = None) -> None:
        if path is not None and Path(path).is_file():
            self._call(f"artifact {Path(path).name}", "log_artifact", self.run_id, str(path), folder)

    # --- events ----------------------------------------------------------------------------------
    def on_run_start(self, run: RunInfo) -> None:
        from mlflow.entities import Param, RunTag

        self.kind = run.kind
        self.client = self._call("the run", open_client, self.uri)
        if self.client is None:
            return
        if self.trace_sample_rate > 0:
            # Traces are written here, on the callbacks' thread: MLflow's own queue would add a
            # thread and a wait of seconds when it is flushed at the end of the run.
            self._scope.enter_context(_environment(MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="false"))
            self._scope.enter_context(fluent_uri(self.uri))
        experiment = META_AGENT_EXPERIMENT if run.kind == "train" else f"w4s/{run.task}"
        self.experiment_id = self._call("the run", experiment_id, self.client, experiment, self.uri)
        if self.experiment_id is None:
            return
        tags = {"w4s.kind": run.kind, "w4s.version": w4s_version(), **run.tags}
        if run.task:
            tags["w4s.task"] = run.task
        sha = git_sha()
        if sha:
            tags["w4s.git_sha"] = sha
        self.run_id = self._call("the run", self._open_run, run, tags)
        if self.run_id is None:
            return
        values = {k: v[:6000] for k, v in flatten(run.config).items()}
        if run.out_dir:
            values["out_dir"] = run.out_dir
        logged = self._call("params", lambda: self.client.get_run(self.run_id).data.params) or {}
        changed = {k: v for k, v in values.items() if k in logged and logged[k] != v}
        params = [Param(k, v) for k, v in values.items() if k not in logged]
        if changed:  # a resumed run with other settings: MLflow keeps a param's first value
            self._call(
                "tags",
                "log_batch",
                self.run_id,
                tags=[RunTag(f"w4s.resumed_with.{k}", v[:5000]) for k, v in changed.items()],
            )
        for start in range(0, len(params), 100):
            self._call("params", "log_batch", self.run_id, params=params[start : start + 100])
        self._call("tags", "log_batch", self.run_id, tags=[RunTag("w4s.tracking_uri", self.uri)])

    def _open_run(self, run: RunInfo, tags: dict[str, str]) -> str:
        """A new MLflow run; for a run folder that an earlier run of this store recorded (a resumed
        optimization), that run again. The folder's ``mlflow.json`` says which (for registration)."""
        record = read_run_record(run.out_dir) if run.out_dir else None
        if (
            record
            and record.get("tracking_uri") == self.uri
            and record.get("experiment_id") == self.experiment_id
        ):
            from mlflow.exceptions import MlflowException

            try:
                self.client.update_run(record["run_id"], "RUNNING")
                return record["run_id"]
            except MlflowException:
                pass  # deleted meanwhile: a new run
        created = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags)
        if run.out_dir:
            write_run_record(run.out_dir, self.uri, created.info.run_id, self.experiment_id)
        return created.info.run_id

    def on_evaluation_start(self, info: EvaluationInfo) -> None:
        self._evaluation = info

    def on_sample_end(self, outcome: Any, progress: EvaluationProgress) -> None:
        if self.kind == "evaluate" and (progress.done == progress.total or progress.done % 50 == 0):
            self._metric("score_so_far", progress.score, progress.done)
            self._metric("cost_usd_so_far", progress.cost_usd, progress.done)
        if outcome.trace is not None and self.run_id is not None:
            if self._alive():
                self._call("a trace", self._trace, outcome)
            else:
                self._lost.append("a trace")

    def on_evaluation_end(self, result: Any) -> None:
        from mlflow.entities import RunTag

        purpose = getattr(getattr(self, "_evaluation", None), "purpose", "evaluation")
        if self.kind == "evaluate":
            usage = result.usage
            for key, value in (
                ("score", result.score),
                ("samples_failed", sum(1 for s in result.samples if s.error and s.score == 0)),
                ("samples_not_run", sum(1 for s in result.samples if s.not_run)),
                ("llm_calls", usage.llm_calls),
                ("prompt_tokens", usage.prompt_tokens),
                ("completion_tokens", usage.completion_tokens),
                ("cost_usd", usage.cost_usd),
                ("wall_seconds", result.wall_seconds),
            ):
                self._metric(key, value)
            tags = {
                "w4s.split": result.split,
                "w4s.samples": str(len(result.samples)),
                "w4s.samples_sha256": sample_ids_sha256(s.id for s in result.samples),
                "w4s.complete": str(result.complete).lower(),
            }
            self._call("tags", "log_batch", self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        elif purpose.startswith("baseline:"):
            self._metric(f"baseline.{purpose.split(':', 1)[1]}", result.score)
        elif purpose == "test":
            self._metric("test_score", result.score)
            self._call(
                "tags",
                "log_batch",
                self.run_id,
                tags=[RunTag("w4s.test_samples_sha256", sample_ids_sha256(s.id for s in result.samples))],
            )
        self._flush()

    def on_candidate_end(self, record: dict) -> None:
        self._candidates += 1
        if record["valid_score"] is not None:
            self._metric("candidate_valid_score", record["valid_score"], self._candidates)
        self._metric("candidate_reward", record["reward"], self._candidates)
        self._metric("candidate_repairs", len(record.get("repairs") or []), self._candidates)

    def on_turn_end(self, turn: TurnSummary) -> None:
        self._metric("best_so_far", turn.best_score, turn.turn)
        self._metric("spend_usd", turn.spend_usd, turn.turn)
        self._flush()

    def on_log(self, metrics: dict) -> None:
        step = int(metrics.get("step", 0))
        for key, value in metrics.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._metric(f"train/{key}", value, step)

    def on_run_end(self, result: Any) -> None:
        self._flush()
        with tempfile.TemporaryDirectory(prefix="w4s-mlflow-") as scratch:
            if self.kind == "evaluate":
                path = Path(scratch) / "evaluation.json"
                text = json.dumps(result.to_dict(), indent=2) + "\n"
                path.write_text(text)
                self._artifact(path)
                # What the registry reuses is checked against this hash (kept in the database, not
                # beside the file in the artifact store).
                digest = hashlib.sha256(text.encode()).hexdigest()
                self._call("tags", "set_tag", self.run_id, "w4s.evaluation_sha256", digest)
            elif self.kind == "optimize":
                paths = result.paths
                for path in (paths.best_workflow, paths.report_json, paths.report_md, paths.curve_png):
                    self._artifact(path)
                self._artifact(paths.trajectories)
                if result.best is not None and result.best.test_score is not None:
                    self._metric("best_test_score", result.best.test_score)
                    self._metric("best_valid_score", result.best.valid_score)
                self._flush()
            elif self.kind == "train":
                self._artifact(Path(result.model).parent / "training_summary.json")
                for key in ("final_loss", "train_loss", "tokens_per_second", "seconds"):
                    value = getattr(result, key)
                    if value is not None:
                        self._metric(key, value)
                self._flush()
        self._scope.close()
        stopped = getattr(result, "stopped", None)
        status = "KILLED" if stopped else "FINISHED"
        self._call("the run's end", "set_terminated", self.run_id, status)
        self._ended = True
        self.report()

    def on_close(self) -> None:
        """A run that raised is marked FAILED; MLflow's process-wide URI is put back in any case."""
        self._flush()
        if self.run_id is not None and not self._ended:
            self._call("the run's end", "set_terminated", self.run_id, "FAILED")
        self._scope.close()

    def report(self) -> None:
        """One line: where the run is, or what was not logged."""
        if self._broken is not None:
            lost = sorted(set(self._lost))
            log.warning(
                "MLflow at %s stopped answering (%s): not logged: %s; the run's own files are complete",
                self.uri,
                self._broken,
                ", ".join(lost[:8]) + (" ..." if len(lost) > 8 else ""),
            )
        elif self.run_id is not None:
            log.info("MLflow run %s recorded; to see it: %s", self.run_id, ui_command(self.uri))
        if self._refused:
            log.warning("MLflow refused %d records: %s", len(self._refused), "; ".join(self._refused[:3]))

    # --- traces ----------------------------------------------------------------------------------
    def _trace(self, outcome: Any) -> None:
        """The sample as a trace: the workflow, then its executor calls and sandbox spans in time order."""
        import mlflow
        from mlflow.tracing.constant import TraceMetadataKey

        trace = outcome.trace
        root = mlflow.start_span_no_context(
            f"workflow on {outcome.id}",
            span_type="CHAIN",
            inputs={"task": trace.prompt},
            attributes={"w4s.sample": outcome.id},
            metadata={TraceMetadataKey.SOURCE_RUN: self.run_id},
            experiment_id=self.experiment_id,
            start_time_ns=trace.started_ns,
        )
        for call in trace.calls:
            span = mlflow.start_span_no_context(
                "call_llm",
                span_type="LLM",
                parent_span=root,
                inputs={"messages": call.messages},
                attributes={
                    "model": call.model,
                    "prompt_tokens": call.usage.prompt_tokens,
                    "completion_tokens": call.usage.completion_tokens,
                    "cost_usd": call.usage.cost_usd,
                    "cached_choices": call.cached_choices,
                    "retries": call.usage.retries,
                    "seconds": round(call.seconds, 4),
                },
                start_time_ns=call.started_ns,
            )
            span.end(outputs={"replies": call.texts}, end_time_ns=call.started_ns + int(call.seconds * 1e9))
        for reported in trace.spans:
            span = mlflow.start_span_no_context(
                reported["name"],
                span_type="TOOL",
                parent_span=root,
                inputs={"code": reported["input"]},
                start_time_ns=reported["start_ns"] or trace.started_ns,
            )
            span.end(outputs={"output": reported["output"]}, end_time_ns=reported["end_ns"] or trace.ended_ns)
        root.end(
            outputs={"answer": _short(outcome.answer), "score": outcome.score, "error": outcome.error},
            status="ERROR" if outcome.error else "OK",
            end_time_ns=trace.ended_ns,
        )
        self._traces += 1


@contextlib.contextmanager
def _environment(**defaults: str):
    """Environment variables for the block, where not set already; then as they were."""
    added = [name for name in defaults if name not in os.environ]
    for name in added:
        os.environ[name] = defaults[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _short(value: Any) -> Any:
    text = json.dumps(value, default=repr)
    return value if len(text) <= 4000 else text[:4000] + " ..."
