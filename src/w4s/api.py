"""The public Python API: one function per stage, each the code path the CLI uses too.

>>> import w4s
>>> task = w4s.load_task("gsm8k", "datasets/")
>>> result = w4s.evaluate("cot", task, executor=w4s.ExecutorConfig(model="gpt-4o-mini"))
>>> run = w4s.optimize(task, w4s.OptimizeConfig(turns=5), out_dir="runs/gsm8k")
>>> trained = w4s.train(run.paths.trajectories, w4s.TrainConfig(base_model="Qwen/...", output="ckpt"))

Every stage takes its configuration dataclasses (``to_dict``/``from_dict``), ``callbacks`` (see
:mod:`w4s.callbacks`) and returns a typed result with ``to_dict``. ``evaluate`` and ``optimize``
have async forms (``aevaluate``, ``aoptimize``) for use inside an event loop.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from w4s import workflows
from w4s.callbacks import Callback, CallbackHandler, RunInfo
from w4s.errors import ConfigError
from w4s.evaluation import EvaluationConfig, EvaluationResult, select
from w4s.evaluation import answer as evaluation_answer
from w4s.evaluation import evaluate as _evaluate
from w4s.llm.config import EndpointConfig
from w4s.llm.gateway import META_API_KEYS, Gateway
from w4s.optimizer.loop import OptimizeConfig, Optimizer
from w4s.optimizer.result import OptimizeResult
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.runner import RunnerFactory
from w4s.sandbox.workflow import WorkflowSandbox
from w4s.tasks import get_task, resolve_data_dir
from w4s.tasks.base import Task
from w4s.tracking.registry import is_reference
from w4s.tracking.store import TrackingConfig, resolve_uri
from w4s.training.config import TrainConfig
from w4s.training.result import TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workflow:
    """A workflow's source and the name it is reported under (a file path or ``family/name``)."""

    name: str
    source: str

    @classmethod
    def from_source(cls, source: str, name: str = "workflow") -> Workflow:
        return cls(name, source)


def load_task(name: str | Task, data_dir: str | os.PathLike | None = None) -> Task:
    """The benchmark task ``name`` (see :func:`w4s.tasks.task_names`), reading its data from
    ``data_dir`` (default: ``$W4S_DATA_DIR``) when a split is loaded."""
    task = name if isinstance(name, Task) else get_task(name)
    if data_dir is not None:
        task = copy.copy(task)  # a Task passed in keeps its own data_dir
        task.data_dir = resolve_data_dir(data_dir)
    return task


def load_workflow(
    path_or_name: str | os.PathLike | Workflow,
    task: str | Task | None = None,
    *,
    tracking: TrackingConfig | None = None,
) -> Workflow:
    """A workflow file, the name of a shipped example for ``task``'s family (``cot``, ``pot``...) or,
    without a task, as ``family/name`` (``math/cot``: the name a shipped example is reported under),
    or a registered version, ``mlflow:w4s-workflow-<task>@champion`` (or ``@3``), from the registry
    of the store ``tracking`` names (its source checked against the sha256 registered with it)."""
    if isinstance(path_or_name, Workflow):
        return path_or_name
    reference = os.fspath(path_or_name)
    if is_reference(reference):  # a registered version: mlflow:w4s-workflow-gsm8k@champion
        version, source, _ = registry_of(tracking).workflow(reference)
        expected = None if task is None else load_task(task).name
        registered = (version.tags or {}).get("w4s.task")
        if expected is not None and registered != expected:
            raise ConfigError(
                f"{reference} is a workflow for {registered}, not {expected}; pass --task {registered}"
            )
        return Workflow(f"{version.name}/{version.version}", source)
    if task is not None:
        family = load_task(task).family
    elif Path(reference).expanduser().is_file():
        family = workflows.FAMILIES[0]  # unused for a file
    else:
        family = reference.partition("/")[0]
        if family not in workflows.FAMILIES:
            raise ConfigError(
                f"workflow {reference!r} is not a file; name the task to use a shipped example, "
                f"or name it as family/name (e.g. math/cot; families: {', '.join(workflows.FAMILIES)})"
            )
    name, source = workflows.resolve(reference, family)
    return Workflow(name, source)


# --- evaluate --------------------------------------------------------------------------------------


async def aevaluate(
    workflow: str | os.PathLike | Workflow,
    task: str | Task,
    config: EvaluationConfig | None = None,
    executor: EndpointConfig | None = None,
    sandbox: SandboxConfig | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    callbacks: Iterable[Callback] = (),
    tracking: TrackingConfig | None = None,
    sample_ids: Iterable[str] | None = None,
    gateway: Gateway | None = None,
    runner: RunnerFactory = WorkflowSandbox,
) -> EvaluationResult:
    """Score ``workflow`` on a split of ``task`` with the executor. Raises only for infrastructure
    failures and bad configuration (ConfigError); every workflow failure is in the result.

    ``sample_ids``: exactly these samples of the split (in place of ``config.limit``; every id must
    be in the split). ``gateway``: an open :class:`~w4s.llm.gateway.Gateway` to share between evaluations (each still
    has its own budget); by default one is made from ``executor`` and closed at the end.
    """
    task = load_task(task, data_dir)
    workflow = load_workflow(workflow, task)
    config = config or EvaluationConfig()
    sandbox = sandbox or SandboxConfig()
    if sample_ids is None:
        samples = select(task.load(config.split), config.limit, config.seed)  # damaged data: refused now
    else:
        samples = by_ids(task.load(config.split), sample_ids, f"{task.name}/{config.split}")
    run = RunInfo(
        "evaluate",
        f"evaluate {workflow.name} on {task.name}/{config.split}",
        {"evaluation": config.to_dict(), "sandbox": sandbox.to_dict(), "executor": _public(executor)},
        task=task.name,
        tags={
            "w4s.executor": (executor or EndpointConfig()).model,
            "w4s.workflow": workflow.name,
            "w4s.workflow_sha256": hashlib.sha256(workflow.source.encode()).hexdigest(),
        },
    )
    with CallbackHandler(tracked(callbacks, tracking)) as handler:
        async with _OpenGateway(gateway, executor or EndpointConfig()) as open_gateway:
            handler.emit("on_run_start", run)  # once what can be refused (the endpoint, its cache) is not
            result = await _evaluate(
                workflow.source,
                task,
                open_gateway,
                config,
                sandbox=sandbox,
                samples=samples,
                workflow_label=workflow.name,
                callbacks=handler,
                runner=runner,
            )
        handler.emit("on_run_end", result)
    return result


def by_ids(samples: list, ids: Iterable[str], where: str) -> list:
    """The samples with these ids, in the split's order; every id must be there."""
    wanted = set(ids)
    chosen = [s for s in samples if s.id in wanted]
    if len(chosen) != len(wanted):
        missing = sorted(wanted - {s.id for s in chosen})
        raise ConfigError(
            f"{len(missing)} of the requested samples are not in {where} (e.g. {', '.join(missing[:3])}); "
            "the benchmark files differ from the ones the results were made with: use the same --data-dir"
        )
    return chosen


def _run_sync(coroutine_function, async_name: str, *args, **kwargs):
    """Run the async form in an event loop of its own; refused in one line inside a running loop
    (a notebook, an async app), where the async form is the one to await."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_function(*args, **kwargs))
    raise ConfigError(
        f"w4s.{async_name.removeprefix('a')} was called inside a running event loop (a notebook, an async app): "
        f"use `await w4s.{async_name}(...)` there"
    )


@functools.wraps(aevaluate)
def evaluate(*args, **kwargs) -> EvaluationResult:
    """:func:`aevaluate` from synchronous code (it runs its own event loop); the same arguments
    (a ``gateway`` to share only makes sense inside an event loop: use :func:`aevaluate` there)."""
    return _run_sync(aevaluate, "aevaluate", *args, **kwargs)


@dataclass(frozen=True)
class Answer:
    """What a workflow answered to one input: ``answer`` (plain data) or ``error`` (why it failed)."""

    answer: Any
    error: str | None
    wall_seconds: float
    llm_calls: int


async def arun(
    workflow: str | os.PathLike | Workflow,
    task: str | Task,
    inputs: Iterable[str],
    executor: EndpointConfig | None = None,
    sandbox: SandboxConfig | None = None,
    *,
    concurrency: int = 8,
    gateway: Gateway | None = None,
    runner: RunnerFactory = WorkflowSandbox,
) -> list[Answer]:
    """Run ``workflow`` on ``inputs`` (task texts, as a benchmark sample's prompt) and return its
    answers in order: serving, not scoring (nothing is compared with an expected answer)."""
    task = load_task(task)  # no benchmark files needed
    workflow = load_workflow(workflow, task)
    prompts = [str(text) for text in inputs]
    async with _OpenGateway(gateway, executor or EndpointConfig()) as open_gateway:
        results = await evaluation_answer(
            workflow.source,
            task,
            open_gateway,
            prompts,
            concurrency=concurrency,
            sandbox=sandbox,
            runner=runner,
        )
    return [
        Answer(
            r.answer if r.error is None else None,
            None if r.error is None else f"{r.error['type']}: {r.error.get('message') or ''}".rstrip(": "),
            r.wall_seconds,
            r.llm_calls,
        )
        for r in results
    ]


@functools.wraps(arun)
def run(*args, **kwargs) -> list[Answer]:
    """:func:`arun` from synchronous code."""
    return _run_sync(arun, "arun", *args, **kwargs)


# --- optimize --------------------------------------------------------------------------------------


async def aoptimize(
    task: str | Task,
    config: OptimizeConfig | None = None,
    *,
    out_dir: str | os.PathLike,
    meta: EndpointConfig | None = None,
    executor: EndpointConfig | None = None,
    sandbox: SandboxConfig | None = None,
    evaluation: EvaluationConfig | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    tracking: TrackingConfig | None = None,
    runner: RunnerFactory = WorkflowSandbox,
) -> OptimizeResult:
    """Run (or, with ``resume``, continue) one episode of the W4S optimizer for ``task`` in the run
    folder ``out_dir``: the meta-agent (``meta``) writes workflows that the ``executor`` runs.

    The meta-agent's key comes from ``W4S_META_API_KEY`` (else ``OPENAI_API_KEY``) unless ``meta``
    says otherwise, and it uses no response cache unless ``meta.cache_path`` names one (its replies
    are the data a run collects). ``evaluation`` sets how evaluations run (``concurrency``).
    """
    task = load_task(task, data_dir)
    config = config or OptimizeConfig()
    meta = meta_config(meta)
    executor = executor or EndpointConfig()
    sandbox = sandbox or SandboxConfig()
    lineage: dict = {}
    if is_reference(meta.model):  # a registered meta-agent: its checkpoint, and who wrote what
        version, folder = registry_of(tracking).local_model(meta.model)
        lineage = {"reference": meta.model, "name": version.name, "version": str(version.version)}
        meta = replace(meta, model=f"local:{folder}")
    run = RunInfo(
        "optimize",
        f"optimize {task.name} episode {config.episode}",
        {
            "optimize": config.to_dict(),
            "evaluation": (evaluation or EvaluationConfig()).to_dict(),
            "sandbox": sandbox.to_dict(),
            "meta": _public(meta),
            "executor": _public(executor),
        },
        str(Path(out_dir).expanduser().resolve()),
        task=task.name,
        tags={
            "w4s.executor": executor.model,
            "w4s.meta_agent": lineage.get("name", meta.model),
            "w4s.split": "validation",
            **({"w4s.meta_agent_version": lineage["version"]} if lineage else {}),
        },
    )
    with CallbackHandler(tracked(callbacks, tracking)) as handler:
        async with Gateway(executor) as executor_gateway, Gateway(meta) as meta_gateway:
            optimizer = Optimizer(
                task,
                config,
                meta_gateway,
                executor_gateway,
                out_dir,
                data_dir=data_dir,
                sandbox=sandbox,
                evaluation=evaluation,
                resume=resume,
                callbacks=handler,
                runner=runner,
                lineage=lineage,
            )
            handler.emit("on_run_start", run)  # once the run folder and the endpoints are accepted
            result = await optimizer.run()
        handler.emit("on_run_end", result)
    if tracking is not None and tracking.register and not tracking.no_tracking:
        from w4s.tracking.registry import register_optimize_run

        version = register_optimize_run(registry_of(tracking), result.paths.out_dir)
        log.info("the best workflow is %s version %s (alias challenger)", version.name, version.version)
    return result


@functools.wraps(aoptimize)
def optimize(*args, **kwargs) -> OptimizeResult:
    """:func:`aoptimize` from synchronous code (it runs its own event loop); the same arguments."""
    return _run_sync(aoptimize, "aoptimize", *args, **kwargs)


# --- train -----------------------------------------------------------------------------------------


def train(
    trajectories: str | os.PathLike | Iterable[str | os.PathLike],
    config: TrainConfig,
    *,
    callbacks: Iterable[Callback] = (),
    tracking: TrackingConfig | None = None,
) -> TrainResult:
    """Reward-weighted regression of the meta-agent (``config.base_model``) on trajectory files from
    :func:`optimize`; writes ``config.output``/model and training_summary.json (the result).
    Needs the 'train' extra (torch, trl, peft, accelerate). ``callbacks`` hear ``on_log`` with the
    trainer's metrics at every logging step."""
    paths = [trajectories] if isinstance(trajectories, str | os.PathLike) else list(trajectories)
    from w4s.training.train import main as train_main  # torch is imported only by training

    base = config.base_model
    extra = {}
    if is_reference(base):  # continue from a registered checkpoint
        version, folder = registry_of(tracking).local_model(base)
        extra = {"base_model_reference": f"{version.name}/{version.version}"}
        config = replace(config, base_model=str(folder))
    run = RunInfo(
        "train",
        f"train {Path(base).name or base}",
        {"train": config.to_dict()},
        config.output,
        tags={"w4s.base_model": extra.get("base_model_reference", base)},
    )
    # Launched as several processes (torchrun, accelerate launch): one run, tracked and registered by rank 0.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        tracking = replace(tracking or TrackingConfig(), no_tracking=True)
    with CallbackHandler(tracked(callbacks, tracking)) as handler:
        result = train_main(config, [os.fspath(p) for p in paths], callbacks=handler, run=run, extra=extra)
        handler.emit("on_run_end", result)
    if main_process and tracking is not None and tracking.register and not tracking.no_tracking:
        from w4s.tracking.registry import register_checkpoint

        version = register_checkpoint(registry_of(tracking), config.output)
        log.info("the checkpoint is %s version %s (alias challenger)", version.name, version.version)
    return result


def registry_of(tracking: TrackingConfig | None):
    """The model registry of the tracking store that ``tracking`` names (as for runs)."""
    from w4s.tracking.registry import Registry

    return Registry(resolve_uri(tracking or TrackingConfig()))


def tracked(callbacks: Iterable[Callback], tracking: TrackingConfig | None) -> list[Callback]:
    """``callbacks`` and, unless turned off, MLflow tracking (on by default where the 'mlflow' extra is
    installed; a tracking URI named without it is a one-line error naming the extra)."""
    callbacks = list(callbacks)
    cfg = tracking or TrackingConfig()
    if cfg.no_tracking:
        return callbacks
    named = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not named and importlib.util.find_spec("mlflow") is None:
        log.info("not recorded in MLflow: the 'mlflow' extra is not installed (pip install 'w4s[mlflow]')")
        return callbacks
    from w4s.tracking.runs import MLflowTracking

    return [*callbacks, MLflowTracking(cfg)]


def meta_config(meta: EndpointConfig | None) -> EndpointConfig:
    """The meta-agent's endpoint: its own key variables by default, and no cache unless one is named."""
    meta = meta or EndpointConfig()
    return replace(
        meta,
        api_key_env=meta.api_key_env or META_API_KEYS,
        cache_path="off" if meta.cache_path is None else meta.cache_path,
    )


# --- helpers ---------------------------------------------------------------------------------------


def _public(cfg: EndpointConfig | None) -> dict:
    """An endpoint's settings for callbacks and reports (no key is held in them: only variable names)."""
    return (cfg or EndpointConfig()).to_dict()


class _OpenGateway:
    """``async with`` the caller's open gateway (left open), or a new one (closed at the end)."""

    def __init__(self, shared: Gateway | None, cfg: EndpointConfig):
        self.shared, self.cfg, self.own = shared, cfg, None

    async def __aenter__(self) -> Gateway:
        if self.shared is not None:
            return self.shared
        self.own = Gateway(self.cfg)
        return self.own

    async def __aexit__(self, *exc) -> None:
        if self.own is not None:
            await self.own.aclose()
