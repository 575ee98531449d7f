"""The pipelines by name: their parameters, ``--param key=value`` parsing, compiling, and running
one locally with ``kfp.local`` (the embedded default: the components run as subprocesses of this
machine's Python, against the installed w4s)."""

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from w4s.errors import ConfigError, W4SError

log = logging.getLogger(__name__)

NAMES = ("rlao-training", "workflow-optimization")


def pipeline(name: str) -> Callable:
    """The pipeline function called ``name``; a one-line error listing the pipelines otherwise."""
    from w4s.extras import require

    require("kfp", "kfp", "kfp.kubernetes")
    if name == "rlao-training":
        from w4s.pipelines.rlao_training import rlao_training

        return rlao_training
    if name == "workflow-optimization":
        from w4s.pipelines.workflow_optimization import workflow_optimization

        return workflow_optimization
    raise ConfigError(f"unknown pipeline {name!r}; use one of {', '.join(NAMES)}")


def parse_params(name: str, pairs: Iterable[str]) -> dict:
    """``key=value`` strings → typed arguments of pipeline ``name``, checked against its compiled spec
    exactly as :mod:`w4s.pipelines.client` checks what it submits (unknown key, wrong type, a key or
    a secret's value as a parameter: one line each)."""
    import tempfile

    from w4s.pipelines import client

    values = client.parse_params(list(pairs))
    with tempfile.TemporaryDirectory(prefix="w4s-pipeline-") as scratch:
        package = client.load_package(compile_pipeline(name, Path(scratch) / f"{name}.yaml"))
        return client.check_params(package, values)


def compile_pipeline(name: str, out: str | os.PathLike) -> Path:
    """The pipeline's KFP IR YAML at ``out`` (the same bytes every time for the same w4s and
    settings: nothing time-dependent goes in)."""
    function = pipeline(name)  # first: without the 'kfp' extra, one line naming it
    from kfp import compiler

    path = Path(out).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(function, str(path))
    log.debug("compiled %s to %s", name, path)
    return path


def run_local(name: str, arguments: dict, root: str | os.PathLike) -> dict:
    """Run pipeline ``name`` with ``kfp.local`` (subprocesses of this Python, no venv per task):
    each task's outputs under ``root``; returns what ran and where things are."""
    import warnings

    function = pipeline(name)  # first: without the 'kfp' extra, one line naming it
    import kfp.local

    folder = Path(root).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(folder))
    started = time.monotonic()
    log.info("pipeline %s: running locally with %s; outputs under %s", name, json.dumps(arguments), folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")  # our images carry Python
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            function(**arguments)
        except RuntimeError as exc:  # kfp.local: a task failed (its log is above)
            raise PipelineFailed(f"pipeline {name} failed: {str(exc).splitlines()[0][:300]}") from None
    seconds = time.monotonic() - started
    log.info("pipeline %s: finished in %.0f s", name, seconds)
    return {"pipeline": name, "root": str(folder), "seconds": round(seconds, 1), "arguments": arguments}


class PipelineFailed(W4SError):
    """A task of a local pipeline run failed (its own log says why); exit status 1, not a usage error."""
