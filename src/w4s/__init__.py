"""w4s: Weak-for-Strong harnessing of strong executor LLMs by a trained weak meta-agent.

The public API (see ``docs/api.md``): one function per stage, :func:`evaluate`, :func:`optimize`
and :func:`train` (with async forms ``aevaluate`` and ``aoptimize``), :func:`load_task`,
:func:`load_workflow`, :func:`run` (a workflow's answers to inputs: serving), the stages' configuration dataclasses and typed results, and
:class:`Callback`. Names are imported on first use, so ``import w4s`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "evaluate": "w4s.api",
    "aevaluate": "w4s.api",
    "optimize": "w4s.api",
    "aoptimize": "w4s.api",
    "train": "w4s.api",
    "load_task": "w4s.api",
    "load_workflow": "w4s.api",
    "Workflow": "w4s.api",
    "run": "w4s.api",
    "arun": "w4s.api",
    "Answer": "w4s.api",
    "TrackingConfig": "w4s.tracking.store",
    "EvaluationConfig": "w4s.evaluation",
    "EvaluationResult": "w4s.evaluation",
    "SampleOutcome": "w4s.evaluation",
    "OptimizeConfig": "w4s.optimizer.loop",
    "OptimizeResult": "w4s.optimizer.result",
    "TrainConfig": "w4s.training.config",
    "TrainResult": "w4s.training.result",
    "EndpointConfig": "w4s.llm.config",
    "ExecutorConfig": "w4s.llm.config",
    "MetaAgentConfig": "w4s.llm.config",
    "SandboxConfig": "w4s.sandbox.config",
    "Callback": "w4s.callbacks",
    "RunInfo": "w4s.callbacks",
    "EvaluationInfo": "w4s.callbacks",
    "EvaluationProgress": "w4s.callbacks",
    "TurnSummary": "w4s.callbacks",
    "task_names": "w4s.tasks",
    "W4SError": "w4s.errors",
    "ConfigError": "w4s.errors",
    "InfrastructureError": "w4s.errors",
    "SandboxUnavailable": "w4s.errors",
    "BudgetExceeded": "w4s.errors",
}

__all__ = [  # the same names as _EXPORTS (a test checks)
    "__version__",
    "evaluate",
    "aevaluate",
    "optimize",
    "aoptimize",
    "train",
    "load_task",
    "load_workflow",
    "Workflow",
    "run",
    "arun",
    "Answer",
    "TrackingConfig",
    "EvaluationConfig",
    "EvaluationResult",
    "SampleOutcome",
    "OptimizeConfig",
    "OptimizeResult",
    "TrainConfig",
    "TrainResult",
    "EndpointConfig",
    "ExecutorConfig",
    "MetaAgentConfig",
    "SandboxConfig",
    "Callback",
    "RunInfo",
    "EvaluationInfo",
    "EvaluationProgress",
    "TurnSummary",
    "task_names",
    "W4SError",
    "ConfigError",
    "InfrastructureError",
    "SandboxUnavailable",
    "BudgetExceeded",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'w4s' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors; at run time the names above load on first use
    from w4s.api import (
        Answer,
        Workflow,
        aevaluate,
        aoptimize,
        arun,
        evaluate,
        load_task,
        load_workflow,
        optimize,
        run,
        train,
    )
    from w4s.callbacks import Callback, EvaluationInfo, EvaluationProgress, RunInfo, TurnSummary
    from w4s.errors import BudgetExceeded, ConfigError, InfrastructureError, SandboxUnavailable, W4SError
    from w4s.evaluation import EvaluationConfig, EvaluationResult, SampleOutcome
    from w4s.llm.config import EndpointConfig, ExecutorConfig, MetaAgentConfig
    from w4s.optimizer.loop import OptimizeConfig
    from w4s.optimizer.result import OptimizeResult
    from w4s.sandbox.config import SandboxConfig
    from w4s.tasks import task_names
    from w4s.tracking.store import TrackingConfig
    from w4s.training.config import TrainConfig
    from w4s.training.result import TrainResult
