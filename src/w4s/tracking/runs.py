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

None of this is on a sample's path, nor in the process doing the work: the callback (on the
callbacks' thread) forwards each event through a pipe to a recorder process of its own, which
imports MLflow (a second of CPU and about 140 MiB) and talks to the store, metrics in batches. A
store that stops answering mid-run costs nothing but the record: the run's own files are written as
always, and one line at the end says what was not logged.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
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
_TRACE_WRITERS = 4  # traces written at once by the recorder
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


class Recorder:
    """Records the events of one run in MLflow; lives in the recorder process (see :func:`serve`)."""

    def __init__(self, uri: str, trace_sample_rate: float):
        self.uri = uri
        self.trace_sample_rate = trace_sample_rate
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
        self._scope = contextlib.ExitStack()  # MLflow's process-wide URI, for tracing, during the run
        self._traces: concurrent.futures.ThreadPoolExecutor | None = None
        self._reopened = False
        self._tags: dict[str, str] = {}  # sent with the run's last metrics

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
        """Send the metrics and tags gathered so far (batched: few requests per run)."""
        from mlflow.entities import RunTag

        metrics, self._metrics = self._metrics, []
        tags, self._tags = [RunTag(k, v) for k, v in self._tags.items()], {}
        while metrics or tags:
            chunk, metrics = metrics[:_BATCH], metrics[_BATCH:]
            self._call(f"{len(chunk)} metrics and tags", "log_batch", self.run_id, metrics=chunk, tags=tags)
            tags = []

    def _artifact(self, path: str | Path | None, folder: str | None = None) -> None:
        if path is not None and Path(path).is_file():
            self._call(f"artifact {Path(path).name}", "log_artifact", self.run_id, str(path), folder)

    # --- events ----------------------------------------------------------------------------------
    def on_run_start(self, run: dict) -> None:
        from mlflow.entities import Param, RunTag

        run = RunInfo(**run)
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
        tags = {"w4s.kind": run.kind, "w4s.version": w4s_version(), "w4s.tracking_uri": self.uri, **run.tags}
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
        logged = (
            (self._call("params", lambda: self.client.get_run(self.run_id).data.params) or {})
            if self._reopened
            else {}
        )
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
                self._reopened = True
                return record["run_id"]
            except MlflowException:
                pass  # deleted meanwhile: a new run
        created = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags)
        if run.out_dir:
            write_run_record(run.out_dir, self.uri, created.info.run_id, self.experiment_id)
        return created.info.run_id

    def on_sample_end(self, sample: dict) -> None:
        if "progress" in sample and self.kind == "evaluate":
            done, score, cost = sample["progress"]
            self._metric("score_so_far", score, done)
            self._metric("cost_usd_so_far", cost, done)
        if sample.get("trace") is not None and self.run_id is not None:
            if self._alive():
                if self._traces is None:  # each trace is a few requests: several go at once
                    self._traces = concurrent.futures.ThreadPoolExecutor(_TRACE_WRITERS, "w4s-trace")
                self._traces.submit(self._call, "a trace", self._trace, sample)
            else:
                self._lost.append("a trace")

    def on_evaluation_end(self, evaluation: dict) -> None:
        purpose = evaluation["purpose"]
        if self.kind == "evaluate":
            for key in ("score", "samples_failed", "samples_not_run", "llm_calls", "prompt_tokens"):
                self._metric(key, evaluation[key])
            for key in ("completion_tokens", "cost_usd", "wall_seconds"):
                self._metric(key, evaluation[key])
            self._tags.update(
                {
                    "w4s.split": evaluation["split"],
                    "w4s.samples": str(evaluation["samples"]),
                    "w4s.samples_sha256": evaluation["samples_sha256"],
                    "w4s.complete": str(evaluation["complete"]).lower(),
                }
            )
            return  # sent with the run's end, in one request
        if purpose.startswith("baseline:"):
            self._metric(f"baseline.{purpose.split(':', 1)[1]}", evaluation["score"])
        elif purpose == "test":
            self._metric("test_score", evaluation["score"])
            self._tags["w4s.test_samples_sha256"] = evaluation["samples_sha256"]
        self._flush()

    def on_candidate_end(self, record: dict) -> None:
        self._candidates += 1
        if record["valid_score"] is not None:
            self._metric("candidate_valid_score", record["valid_score"], self._candidates)
        self._metric("candidate_reward", record["reward"], self._candidates)
        self._metric("candidate_repairs", record["repairs"], self._candidates)

    def on_turn_end(self, turn: dict) -> None:
        self._metric("best_so_far", turn["best_score"], turn["turn"])
        self._metric("spend_usd", turn["spend_usd"], turn["turn"])
        self._flush()

    def on_log(self, metrics: dict) -> None:
        step = int(metrics.get("step", 0))
        for key, value in metrics.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._metric(f"train/{key}", value, step)

    def on_run_end(self, result: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="w4s-mlflow-") as scratch:
            if self.kind == "evaluate":
                path = Path(scratch) / "evaluation.json"
                text = json.dumps(result["evaluation"], indent=2) + "\n"
                path.write_text(text)
                self._artifact(path)
                # What the registry reuses is checked against this hash (kept in the database, not
                # beside the file in the artifact store).
                self._tags["w4s.evaluation_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        for path in result.get("files", ()):
            self._artifact(path)
        for key, value in result.get("metrics", {}).items():
            if value is not None:
                self._metric(key, value)
        self._flush()
        self._traces_written()
        self._scope.close()
        status = "KILLED" if result.get("stopped") else "FINISHED"
        self._call("the run's end", "set_terminated", self.run_id, status)
        self._ended = True

    def on_close(self) -> None:
        """A run that raised is marked FAILED; MLflow's process-wide URI is put back in any case."""
        self._flush()
        self._traces_written()
        if self.run_id is not None and not self._ended:
            self._call("the run's end", "set_terminated", self.run_id, "FAILED")
        self._scope.close()

    def _traces_written(self) -> None:
        if self._traces is not None:
            self._traces.shutdown(wait=True)
            self._traces = None

    def failed(self, event: str, exc: Exception) -> None:
        """An event the recorder could not handle (its own bug): reported, never fatal."""
        self._broken = self._broken or f"{event}: {type(exc).__name__}: {str(exc)[:200]}"
        self._lost.append(event)

    def summary(self) -> dict:
        """What the parent reports: the run, or what was not logged and why."""
        return {
            "run_id": self.run_id,
            "uri": self.uri,
            "broken": self._broken,
            "lost": sorted(set(self._lost)),
            "refused": self._refused[:3],
            "refused_count": len(self._refused),
        }

    # --- traces ----------------------------------------------------------------------------------
    def _trace(self, sample: dict) -> None:
        """The sample as a trace: the workflow, then its executor calls and sandbox spans in time order."""
        import mlflow
        from mlflow.tracing.constant import TraceMetadataKey

        trace = sample["trace"]
        root = mlflow.start_span_no_context(
            f"workflow on {sample['id']}",
            span_type="CHAIN",
            inputs={"task": trace["prompt"]},
            attributes={"w4s.sample": sample["id"]},
            metadata={TraceMetadataKey.SOURCE_RUN: self.run_id},
            experiment_id=self.experiment_id,
            start_time_ns=trace["started_ns"],
        )
        for call in trace["calls"]:
            span = mlflow.start_span_no_context(
                "call_llm",
                span_type="LLM",
                parent_span=root,
                inputs={"messages": call["messages"]},
                attributes={key: call[key] for key in _CALL_ATTRIBUTES},
                start_time_ns=call["started_ns"],
            )
            span.end(
                outputs={"replies": call["texts"]},
                end_time_ns=call["started_ns"] + int(call["seconds"] * 1e9),
            )
        for reported in trace["spans"]:
            span = mlflow.start_span_no_context(
                reported["name"],
                span_type="TOOL",
                parent_span=root,
                inputs={"code": reported["input"]},
                start_time_ns=reported["start_ns"] or trace["started_ns"],
            )
            span.end(
                outputs={"output": reported["output"]}, end_time_ns=reported["end_ns"] or trace["ended_ns"]
            )
        root.end(
            outputs={"answer": _short(sample["answer"]), "score": sample["score"], "error": sample["error"]},
            status="ERROR" if sample["error"] else "OK",
            end_time_ns=trace["ended_ns"],
        )


_CALL_ATTRIBUTES = (
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cached_choices",
    "retries",
    "seconds",
)
_CLOSE_TIMEOUT_S = 120  # how long a run's end waits for the recorder to finish writing
_PROGRESS_EVERY = 50  # an evaluation's score and cost so far, every this many samples


class MLflowTracking(Callback):
    """Records each run it hears in MLflow (see the module docstring): ``callbacks=[MLflowTracking()]``.

    The store is checked at once (one line naming it when it does not answer) and the recorder
    process started, so MLflow loads while the run sets up; at the end (``on_close``) it is waited for,
    at most ``_CLOSE_TIMEOUT_S`` seconds."""

    def __init__(self, cfg: TrackingConfig | None = None):
        cfg = cfg or TrackingConfig()
        self.trace_sample_rate = cfg.trace_sample_rate
        self.uri = resolve_uri(cfg)
        check_store(self.uri)
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._failed: str | None = None
        self._unsent: list[str] = []
        try:  # MLflow loads in the recorder while the run sets up
            self._start()
        except OSError as exc:
            self._failed = f"the recorder did not start ({exc})"

    def _start(self) -> None:
        env = {**os.environ, "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "ERROR")}
        for key, value in _HTTP_DEFAULTS.items():
            env.setdefault(key, value)
        self._stderr = tempfile.TemporaryFile(prefix="w4s-recorder-")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "w4s.tracking.runs", self.uri, repr(self.trace_sample_rate)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )

    def _send(self, event: str, *args: Any) -> None:
        if self._failed is not None:
            self._unsent.append(event)
            return
        payload = pickle.dumps((event, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._process.stdin.write(struct.pack(">Q", len(payload)) + payload)
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._failed = f"the recorder exited ({self._process.poll()})"
            self._unsent.append(event)

    # Each event goes as plain data (no w4s classes: the recorder imports nothing heavy of w4s).
    def on_run_start(self, run: RunInfo) -> None:
        self._kind = run.kind
        self._send("on_run_start", dataclasses.asdict(run))

    def on_evaluation_start(self, info: EvaluationInfo) -> None:
        self._purpose = info.purpose

    def on_sample_end(self, outcome: Any, progress: EvaluationProgress) -> None:
        sample: dict = {}
        if progress.done == progress.total or progress.done % _PROGRESS_EVERY == 0:
            sample["progress"] = (progress.done, progress.score, progress.cost_usd)
        trace = outcome.trace
        if trace is not None:
            sample["trace"] = {
                "prompt": trace.prompt,
                "started_ns": trace.started_ns,
                "ended_ns": trace.ended_ns,
                "spans": trace.spans,
                "calls": [
                    {
                        "model": call.model,
                        "messages": call.messages,
                        "texts": call.texts,
                        "started_ns": call.started_ns,
                        "seconds": round(call.seconds, 4),
                        "prompt_tokens": call.usage.prompt_tokens,
                        "completion_tokens": call.usage.completion_tokens,
                        "cost_usd": call.usage.cost_usd,
                        "retries": call.usage.retries,
                        "cached_choices": call.cached_choices,
                    }
                    for call in trace.calls
                ],
            }
        if sample:
            sample.update(id=outcome.id, score=outcome.score, error=outcome.error, answer=outcome.answer)
            self._send("on_sample_end", sample)

    def on_evaluation_end(self, result: Any) -> None:
        usage = result.usage
        self._send(
            "on_evaluation_end",
            {
                "purpose": getattr(self, "_purpose", "evaluation"),
                "split": result.split,
                "score": result.score,
                "samples": len(result.samples),
                "samples_sha256": sample_ids_sha256(s.id for s in result.samples),
                "complete": result.complete,
                "samples_failed": sum(1 for s in result.samples if s.error and s.score == 0),
                "samples_not_run": sum(1 for s in result.samples if s.not_run),
                "llm_calls": usage.llm_calls,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": usage.cost_usd,
                "wall_seconds": result.wall_seconds,
            },
        )

    def on_candidate_end(self, record: dict) -> None:
        self._send(
            "on_candidate_end",
            {
                "valid_score": record["valid_score"],
                "reward": record["reward"],
                "repairs": len(record.get("repairs") or []),
            },
        )

    def on_turn_end(self, turn: TurnSummary) -> None:
        self._send(
            "on_turn_end", {"turn": turn.turn, "best_score": turn.best_score, "spend_usd": turn.spend_usd}
        )

    def on_log(self, metrics: dict) -> None:
        self._send("on_log", {k: v for k, v in metrics.items() if isinstance(v, int | float | str)})

    def on_run_end(self, result: Any) -> None:
        kind = getattr(self, "_kind", "")
        if kind == "evaluate":
            self._send("on_run_end", {"evaluation": result.to_dict()})
        elif kind == "optimize":
            paths = result.paths
            best = result.best
            files = [
                paths.best_workflow,
                paths.report_json,
                paths.report_md,
                paths.curve_png,
                paths.trajectories,
            ]
            metrics = {}
            if best is not None and best.test_score is not None:
                metrics = {"best_test_score": best.test_score, "best_valid_score": best.valid_score}
            self._send(
                "on_run_end",
                {"files": [f for f in files if f], "metrics": metrics, "stopped": result.stopped},
            )
        elif kind == "train":
            summary = str(Path(result.model).parent / "training_summary.json")
            metrics = {
                k: getattr(result, k) for k in ("final_loss", "train_loss", "tokens_per_second", "seconds")
            }
            self._send("on_run_end", {"files": [summary], "metrics": metrics})

    def on_close(self) -> None:
        """Wait for the recorder, then one line: where the run is, or what was not logged."""
        if self._process is None:
            return
        self._send("on_close")
        summary: dict = {}
        try:
            out, _ = self._process.communicate(timeout=_CLOSE_TIMEOUT_S)
            lines = out.decode(errors="replace").strip().splitlines()
            summary = json.loads(lines[-1]) if lines else {}
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            self._failed = f"the recorder did not finish within {_CLOSE_TIMEOUT_S} s"
        except ValueError:
            summary = {}
        if not summary and self._failed is None:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace").strip().splitlines()
            self._failed = (
                f"the recorder failed ({tail[-1][:200] if tail else f'exit {self._process.returncode}'})"
            )
        self._stderr.close()
        self._report(summary)

    def _report(self, summary: dict) -> None:
        broken = summary.get("broken") or self._failed
        if broken:
            lost = sorted(set(summary.get("lost") or []) | set(self._unsent))
            log.warning(
                "MLflow at %s stopped answering (%s): not logged: %s; the run's own files are complete",
                self.uri,
                broken,
                ", ".join(lost[:8]) + (" ..." if len(lost) > 8 else "") if lost else "the rest of the run",
            )
        elif summary.get("run_id"):
            log.info("MLflow run %s recorded; to see it: %s", summary["run_id"], ui_command(self.uri))
        if summary.get("refused_count"):
            log.warning(
                "MLflow refused %d records: %s", summary["refused_count"], "; ".join(summary["refused"])
            )


_NICENESS = 19


def serve(uri: str, trace_sample_rate: float) -> int:
    """The recorder process: read length-prefixed pickled events from stdin (written by our own
    MLflowTracking, in the parent), record them, and print the summary as one JSON line at the end."""
    logging.basicConfig(level=logging.WARNING, format="w4s recorder: %(message)s")
    # The record waits for the work, never the other way round: on a busy machine the recorder gets
    # the CPU the work leaves (importing MLflow alone is a second or more of it).
    os.nice(_NICENESS)
    recorder = Recorder(uri, trace_sample_rate)
    source = sys.stdin.buffer
    while True:
        header = source.read(8)
        if len(header) < 8:  # the parent is gone: end the run as failed
            recorder.on_close()
            break
        event, args = pickle.loads(source.read(struct.unpack(">Q", header)[0]))
        try:
            getattr(recorder, event)(*args)
        except Exception as exc:  # noqa: BLE001 - a recorder bug loses the record, never the run
            recorder.failed(event, exc)
        if event == "on_close":
            break
    sys.stdout.write(json.dumps(recorder.summary()) + "\n")
    sys.stdout.flush()
    return 0


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


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
    # Everything is written (the client's calls are synchronous): skip the interpreter's teardown of
    # MLflow's modules, which takes longer than the whole record.
    os._exit(0)


PIPELINES_EXPERIMENT = "w4s/pipelines"


def record_pipeline_status(
    uri: str, pipeline: str, job: str, state: str, error: str = "", tasks: dict | None = None
) -> str:
    """One MLflow run (experiment ``w4s/pipelines``) saying how a pipeline run ended: its state, its
    error and, where known, each task's state; the run's status is FAILED unless the pipeline
    succeeded. Returns the MLflow run id."""
    from mlflow.entities import RunTag

    client = open_client(uri)
    experiment = experiment_id(client, PIPELINES_EXPERIMENT, uri)
    tags = {"w4s.kind": "pipeline", "w4s.pipeline": pipeline, "w4s.pipeline_job": job, "w4s.state": state}
    tags["w4s.version"] = w4s_version()
    if error:
        tags["w4s.error"] = error[:5000]
    created = client.create_run(experiment, run_name=f"{pipeline} {job} {state.lower()}", tags=tags)
    if tasks:
        client.log_batch(
            created.info.run_id, tags=[RunTag(f"w4s.task.{k}", str(v)[:500]) for k, v in tasks.items()]
        )
    client.set_terminated(created.info.run_id, "FINISHED" if state.upper() == "SUCCEEDED" else "FAILED")
    return created.info.run_id


def latest_pipeline_record(uri: str, pipeline: str) -> dict | None:
    """The newest record :func:`record_pipeline_status` made for ``pipeline``: run id, state, error."""
    client = open_client(uri)
    found = client.get_experiment_by_name(PIPELINES_EXPERIMENT)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`w4s.pipeline` = '{pipeline}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    tags = runs[0].data.tags
    return {
        "run_id": runs[0].info.run_id,
        "state": tags.get("w4s.state", ""),
        "error": tags.get("w4s.error", ""),
    }
