"""Where w4s records its runs, and the one place that talks to an MLflow tracking store.

``MLFLOW_TRACKING_URI`` set: that store (in production an MLflow server backed by PostgreSQL, with
artifacts on S3). Unset: an embedded store under the w4s home, ``sqlite:///<home>/mlflow/mlflow.db``
with artifacts beside it, which ``mlflow ui --backend-store-uri ...`` (printed after each run) shows.
The w4s home is ``$W4S_HOME``, else ``~/.w4s``: never a path relative to the working directory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from w4s.config import Config, option
from w4s.errors import InfrastructureError
from w4s.extras import require

log = logging.getLogger(__name__)

HOME_ENV = "W4S_HOME"


@dataclass
class TrackingConfig(Config):
    no_tracking: bool = option(False, "do not record the run in MLflow", flag="no-tracking")
    tracking_uri: str | None = option(
        None,
        "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store "
        "sqlite:///<w4s home>/mlflow/mlflow.db; the w4s home is $W4S_HOME, else ~/.w4s)",
    )
    register: bool = option(
        False,
        "register the result in the MLflow model registry as a new version aliased challenger: optimize's "
        "best workflow (once its test score is complete) as w4s-workflow-<task>, train's checkpoint as "
        "w4s-meta-agent",
    )
    trace_sample_rate: float = option(
        0.05,
        "share of evaluated samples recorded as MLflow traces (every call_llm and execute_code of the "
        "sample); 1.0 to debug one workflow, 0 for none",
        lambda v: 0.0 <= v <= 1.0,
        "between 0 and 1",
    )


def w4s_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".w4s").expanduser().resolve()


def embedded() -> tuple[str, str]:
    """The embedded store's tracking URI and artifact root."""
    root = w4s_home() / "mlflow"
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def resolve_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded()[0]


def open_client(uri: str):
    """An ``MlflowClient`` on ``uri``, checked: a store that does not answer is one line naming it."""
    require("mlflow", "mlflow")
    from mlflow import MlflowClient

    with _first_use_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, the run cannot be recorded
            raise InfrastructureError(
                f"the MLflow tracking store at {uri} does not answer ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); start it or fix MLFLOW_TRACKING_URI, "
                "or pass --no-tracking"
            ) from None
    return client


@contextlib.contextmanager
def _first_use_lock(uri: str):
    """For a SQLite store, hold an exclusive file lock beside the database while MLflow opens it: the
    first open creates and migrates the schema, and processes doing that at once (the parallel tasks of
    a local pipeline, the ranks of a training launch) break each other's migration and leave the
    database unusable ("table _alembic_tmp_... already exists")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_store(uri: str, timeout: float = 10.0) -> None:
    """That the store at ``uri`` can take a run, without importing MLflow (which takes a second; the
    tracking callback does that on its own thread, beside the work): a server answers its health
    check, an embedded store's folder is writable. One line naming the URI otherwise."""
    if importlib.util.find_spec("mlflow") is None:  # found without being imported
        require("mlflow", "mlflow")
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:
                answer.read(1024)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # it answers (a server behind a proxy may guard /health)
                return
            why = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        raise InfrastructureError(
            f"the MLflow tracking server at {uri} does not answer ({why}); start it or fix "
            "MLFLOW_TRACKING_URI, or pass --no-tracking"
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".w4s-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise InfrastructureError(
                f"the MLflow store {uri} cannot be written ({exc.strerror or exc}); set W4S_HOME or "
                "MLFLOW_TRACKING_URI elsewhere, or pass --no-tracking"
            ) from None


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment ``name``, made on first use (in the embedded store, with its artifacts beside it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    from mlflow.exceptions import MlflowException

    artifact_location = embedded()[1] + "/" + name.replace("/", "-") if uri == embedded()[0] else None
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # made meanwhile by another process: take that one
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


_FLUENT_LOCK = threading.Lock()
_fluent: dict = {"depth": 0, "uri": None, "saved": None}


@contextlib.contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's module-level functions (downloads, tracing, the registry's check of a logged model)
    read the process-wide tracking URI, and setting it also sets ``MLFLOW_TRACKING_URI`` for the rest
    of the process: point both at ``uri`` for the block, then put back exactly what was there.

    Blocks may overlap (two promoters on threads of one process): the first to enter saves what was
    there, the last to leave puts it back. Overlapping blocks on two different stores would read each
    other's: that is refused."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _FLUENT_LOCK:
        if _fluent["depth"] and _fluent["uri"] != uri:
            raise InfrastructureError(
                f"this process is already using the MLflow store {_fluent['uri']}: use {uri} from another process"
            )
        if not _fluent["depth"]:
            _fluent["saved"] = (
                {name: os.environ.get(name) for name in names},
                tracking_utils._tracking_uri,
                registry_utils._registry_uri,
            )
            _fluent["uri"] = uri
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
        _fluent["depth"] += 1
    try:
        yield
    finally:
        with _FLUENT_LOCK:
            _fluent["depth"] -= 1
            if not _fluent["depth"]:
                saved_env, tracking, registry = _fluent["saved"]
                mlflow.set_tracking_uri(tracking)
                registry_utils._registry_uri = registry
                for name, value in saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                _fluent["uri"] = _fluent["saved"] = None


def ui_command(uri: str) -> str:
    """What to run to see the runs of ``uri`` in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def w4s_version() -> str:
    """The installed w4s version (read from the package metadata: the package root imports this layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("w4s")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def git_sha() -> str | None:
    """The commit of the w4s checkout running, when it runs from one."""
    import subprocess

    source = Path(__file__).resolve().parents[3]
    if not (source / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
