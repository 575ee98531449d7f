"""The MLflow model registry of w4s: names, tags, versions, aliases, and moving files in and out.

Two kinds of registered model:

* ``w4s-workflow-<task>``: one version per accepted workflow, an MLflow models-from-code pyfunc
  (:mod:`w4s.workflow_model`) holding ``workflow.py`` and the per-sample test results it was accepted
  on (``test_evaluation.json``). Tags: validation and test score, the test samples' id hash,
  executor model, cost per sample, the sha256 of the source, the meta-agent version that wrote it.
* ``w4s-meta-agent``: one version per trained checkpoint, the model folder as saved by transformers
  plus ``w4s_manifest.json`` (every file's size and sha256). Tags: base model, the MLflow runs of the
  trajectories it was trained on, RWR temperature, LoRA or full, the training run.

References: ``NAME@ALIAS`` (``w4s-workflow-gsm8k@champion``), ``NAME@VERSION`` or ``NAME/VERSION``
(``@3``), optionally prefixed ``mlflow:`` (how commands that take a workflow file or a model name
tell a registry reference from a path) or written ``models:/NAME@ALIAS``. A bare ``NAME`` is its
champion. New versions come in as ``challenger``; promotion (:mod:`w4s.promotion`) moves ``champion``.

What the store holds is checked, not trusted: a version is created only after its files are uploaded
and listed back, and what is downloaded is compared with hashes kept in the version's tags (the
registry database), so a file changed in the artifact store (S3) is refused, not run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w4s.errors import ConfigError, InfrastructureError
from w4s.tracking.stats import sample_ids_sha256
from w4s.tracking.store import (
    TrackingConfig,
    experiment_id,
    fluent_uri,
    open_client,
    resolve_uri,
    w4s_home,
    w4s_version,
)

log = logging.getLogger(__name__)

WORKFLOW_PREFIX = "w4s-workflow-"
META_AGENT = "w4s-meta-agent"
CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_RECORD = "mlflow.json"  # in a run folder: which MLflow run recorded it
MANIFEST = "w4s_manifest.json"
WORKFLOW_FILE = "workflow.py"
TEST_EVALUATION = "test_evaluation.json"
LOCK_SECONDS = 600  # a promotion lock older than this was left by a promoter that died

# Tag names (one place: the CLI's `registry show`, promotion and the pipelines read these).
TAG_KIND = "w4s.kind"
TAG_TASK = "w4s.task"
TAG_EXECUTOR = "w4s.executor"
TAG_SOURCE_SHA = "w4s.source_sha256"
TAG_TEST_EVAL_SHA = "w4s.test_evaluation_sha256"
TAG_TEST_IDS_SHA = "w4s.test_samples_sha256"
TAG_TEST_N = "w4s.test_samples"
TAG_TEST_SCORE = "w4s.test_score"
TAG_VALID_SCORE = "w4s.valid_score"
TAG_COST = "w4s.cost_per_sample_usd"
TAG_ORIGIN = "w4s.origin"
TAG_BASELINE = "w4s.best_baseline"
TAG_META_NAME = "w4s.meta_agent"
TAG_META_VERSION = "w4s.meta_agent_version"
TAG_MANIFEST_SHA = "w4s.manifest_sha256"
TAG_BASE_MODEL = "w4s.base_model"
TAG_DATA_RUNS = "w4s.training_data_runs"
TAG_RWR_T = "w4s.rwr_temperature"
TAG_LORA = "w4s.lora"
TAG_PREVIOUS = "w4s.previous_champion"
TAG_VERSION = "w4s.version"


def workflow_model_name(task: str) -> str:
    return f"{WORKFLOW_PREFIX}{task}"


@dataclass(frozen=True)
class Reference:
    """A registered model and which of its versions: an alias or a version number."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"


def is_reference(text: str) -> bool:
    """Whether ``text`` names a registry version (``mlflow:...`` or ``models:/...``), not a path."""
    return isinstance(text, str) and text.startswith(("mlflow:", "models:/"))


def parse_reference(text: str) -> Reference:
    """``[mlflow:|models:/]NAME[@ALIAS|@VERSION|/VERSION]``; a bare name is its champion."""
    body = str(text).removeprefix("mlflow:").removeprefix("models:/")
    found = re.fullmatch(rf"({_NAME})(?:@([A-Za-z0-9_\-]+)|/(\d+))?", body)
    if found is None:
        raise ConfigError(
            f"{text!r} is not a registry reference; write mlflow:NAME@ALIAS or mlflow:NAME@VERSION, "
            "e.g. mlflow:w4s-workflow-gsm8k@champion or mlflow:w4s-workflow-gsm8k@3"
        )
    name, suffix, number = found.groups()
    if number:
        return Reference(name, version=number)
    if suffix is None:
        return Reference(name, alias=CHAMPION)
    if suffix.isdigit():
        return Reference(name, version=suffix)
    return Reference(name, alias=suffix)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(folder: Path) -> dict[str, dict]:
    """Every file under ``folder`` (relative path -> size and sha256), the manifest itself left out."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(folder).as_posix()] = {
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
    return files


def read_run_record(folder: str | os.PathLike) -> dict | None:
    """The ``mlflow.json`` of a run folder (which store and run recorded it), or None."""
    path = Path(folder) / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def write_run_record(folder: str | os.PathLike, uri: str, run_id: str, experiment: str) -> None:
    path = Path(folder) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(
        json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment_id": experiment}) + "\n"
    )
    os.replace(scratch, path)


def _artifact_error(exc: Exception, where: str, action: str) -> InfrastructureError:
    """One line for a failure of the artifact store, naming it (and the S3 endpoint and bucket)."""
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    bucket = re.match(r"s3://([^/]+)", where)
    names = f"bucket {bucket.group(1)} at {endpoint or 'AWS S3'}" if bucket else where
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    hint = (
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL"
        if bucket or "s3" in detail.lower() or "credential" in detail.lower()
        else "check that the tracking server serves artifacts and its storage is reachable"
    )
    return InfrastructureError(
        f"could not {action} the artifact store ({names}): {type(exc).__name__}: {detail}; {hint}"
    )


class Registry:
    """The registry of one tracking store (``tracking_uri``; default as for runs: see
    :mod:`w4s.tracking.store`)."""

    def __init__(self, tracking_uri: str | None = None):
        self.uri = tracking_uri or resolve_uri(TrackingConfig())
        self.client = open_client(self.uri)

    # --- reading ---------------------------------------------------------------------------------
    def names(self, prefix: str = "w4s-") -> list[str]:
        found = self.client.search_registered_models(max_results=1000)
        return sorted(
            m.name for m in found if m.name.startswith(prefix) and not m.name.startswith(LOCK_PREFIX)
        )

    def versions(self, name: str) -> list:
        """Every version of ``name``, oldest first (ConfigError, listing the models, when unknown)."""
        self._model(name)
        found = self.client.search_model_versions(f"name = '{name}'", max_results=10_000)
        return sorted(found, key=lambda v: int(v.version))

    def aliases(self, name: str) -> dict[str, str]:
        return {alias: str(version) for alias, version in (self._model(name).aliases or {}).items()}

    def version(self, reference: str | Reference):
        """The model version ``reference`` names; a clear error listing what exists otherwise."""
        from mlflow.exceptions import MlflowException

        ref = reference if isinstance(reference, Reference) else parse_reference(reference)
        model = self._model(ref.name)
        try:
            if ref.alias:
                return self.client.get_model_version_by_alias(ref.name, ref.alias)
            return self.client.get_model_version(ref.name, ref.version)
        except MlflowException:
            aliases = ", ".join(f"{a} -> {v}" for a, v in sorted((model.aliases or {}).items())) or "none"
            numbers = [str(v.version) for v in self.client.search_model_versions(f"name = '{ref.name}'")]
            what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version}"
            raise ConfigError(
                f"{ref.name} has no {what} (versions: {', '.join(sorted(numbers, key=int)) or 'none'}; "
                f"aliases: {aliases})"
            ) from None

    def champion(self, name: str):
        """The version aliased champion, or None when none is."""
        alias = self.aliases(name).get(CHAMPION)
        return None if alias is None else self.client.get_model_version(name, alias)

    def _model(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            existing = self.names()
            raise ConfigError(
                f"no registered model {name!r} in {self.uri} (registered: {', '.join(existing) or 'none'})"
            ) from None

    # --- registering -----------------------------------------------------------------------------
    def register_workflow(
        self,
        *,
        task: str,
        source: str,
        test_evaluation: dict,
        valid_score: float | None,
        origin: str,
        best_baseline: str | None = None,
        meta_agent: dict | None = None,
        run_id: str | None = None,
        executor: dict | None = None,
    ):
        """A new version of ``w4s-workflow-<task>`` holding ``source`` and the per-sample test results
        it was accepted on; aliased ``challenger``. ``meta_agent``: ``{"name", "version"}`` of the
        registered meta-agent that wrote it, or ``{"model"}`` for another one."""
        if not test_evaluation.get("complete") or test_evaluation.get("split") != "test":
            raise ConfigError(
                "the workflow has no complete test score (the run stopped before the test split was "
                "scored); resume the run to finish it, then register"
            )
        name = workflow_model_name(task)
        samples = test_evaluation["samples"]
        evaluation_text = json.dumps(test_evaluation, indent=1, sort_keys=True) + "\n"
        executor_cfg = {k: v for k, v in (executor or {}).items() if k not in _PRIVATE_ENDPOINT_FIELDS}
        executor_cfg.setdefault("model", test_evaluation.get("executor") or "")
        tags = {
            TAG_KIND: "workflow",
            TAG_TASK: task,
            TAG_EXECUTOR: test_evaluation.get("executor") or "",
            TAG_SOURCE_SHA: sha256_text(source),
            TAG_TEST_EVAL_SHA: sha256_text(evaluation_text),
            TAG_TEST_IDS_SHA: sample_ids_sha256(s["id"] for s in samples),
            TAG_TEST_N: str(len(samples)),
            TAG_TEST_SCORE: f"{float(test_evaluation['score']):.6f}",
            TAG_COST: f"{float(test_evaluation['usage'].get('cost_usd', 0.0)) / max(1, len(samples)):.8f}",
            TAG_ORIGIN: origin,
            TAG_VERSION: w4s_version(),
        }
        if valid_score is not None:
            tags[TAG_VALID_SCORE] = f"{float(valid_score):.6f}"
        if best_baseline:
            tags[TAG_BASELINE] = best_baseline
        if meta_agent:
            tags[TAG_META_NAME] = meta_agent.get("name") or meta_agent.get("model") or ""
            if meta_agent.get("version"):
                tags[TAG_META_VERSION] = str(meta_agent["version"])
        with tempfile.TemporaryDirectory(prefix="w4s-register-") as scratch:
            folder = Path(scratch) / "model"
            files = Path(scratch) / "files"
            files.mkdir()
            (files / WORKFLOW_FILE).write_text(source)
            (files / TEST_EVALUATION).write_text(evaluation_text)
            self._save_pyfunc(
                folder,
                files,
                {
                    "task": task,
                    "name": f"{name}",
                    "source_sha256": tags[TAG_SOURCE_SHA],
                    "executor": executor_cfg,
                    "concurrency": 8,
                },
            )
            return self._register(
                name,
                folder,
                tags,
                experiment=f"w4s/{task}",
                run_id=run_id,
                description=f"w4s workflows for {task}, scored by the executor",
            )

    def register_meta_agent(
        self,
        model_dir: str | os.PathLike,
        *,
        base_model: str,
        temperature: float,
        lora: bool,
        data_runs: list[str],
        run_id: str | None = None,
        scores: dict[str, float] | None = None,
    ):
        """A new version of ``w4s-meta-agent`` holding the checkpoint folder ``model_dir`` (as saved
        by transformers) and its manifest; aliased ``challenger``."""
        folder = Path(model_dir).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{folder} is not a transformers checkpoint (no config.json); pass the model folder"
            )
        manifest = manifest_of(folder)
        manifest_text = json.dumps({"files": manifest}, indent=1, sort_keys=True) + "\n"
        tags = {
            TAG_KIND: "meta-agent",
            TAG_BASE_MODEL: base_model,
            TAG_RWR_T: repr(float(temperature)),
            TAG_LORA: "true" if lora else "false",
            TAG_DATA_RUNS: ",".join(data_runs)[:4900],
            TAG_MANIFEST_SHA: sha256_text(manifest_text),
            TAG_VERSION: w4s_version(),
        }
        for task, score in (scores or {}).items():
            tags[f"w4s.benchmark.{task}"] = f"{float(score):.6f}"
        with tempfile.TemporaryDirectory(prefix="w4s-register-") as scratch:
            manifest_file = Path(scratch) / MANIFEST
            manifest_file.write_text(manifest_text)
            return self._register(
                META_AGENT,
                folder,
                tags,
                experiment="w4s/meta-agent",
                run_id=run_id,
                description="w4s meta-agent checkpoints (transformers folders)",
                extra_files=[manifest_file],
                expected={
                    **{k: v["bytes"] for k, v in manifest.items()},
                    MANIFEST: len(manifest_text.encode()),
                },
            )

    def _save_pyfunc(self, folder: Path, files: Path, config: dict) -> None:
        import importlib.util

        import mlflow.pyfunc

        code = importlib.util.find_spec("w4s.workflow_model").origin
        with warnings.catch_warnings():  # "add type hints to predict": inputs are validated by w4s
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.save_model(
                str(folder),
                python_model=code,
                artifacts={
                    "workflow": str(files / WORKFLOW_FILE),
                    "test_evaluation": str(files / TEST_EVALUATION),
                },
                model_config=config,
                pip_requirements=[f"w4s=={w4s_version()}", "mlflow>=3"],
            )

    def _register(
        self,
        name: str,
        folder: Path,
        tags: dict[str, str],
        *,
        experiment: str,
        run_id: str | None,
        description: str,
        extra_files: list[Path] = (),
        expected: dict[str, int] | None = None,
    ):
        """Upload ``folder`` as a logged model, list it back, and only then create the version."""
        from mlflow.entities import LoggedModelStatus
        from mlflow.exceptions import MlflowException

        expected = expected or {
            p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()
        }
        with fluent_uri(self.uri):
            experiment_ref = experiment_id(self.client, experiment, self.uri)
            logged = self.client.create_logged_model(
                experiment_ref,
                name=name.removeprefix("w4s-"),
                source_run_id=run_id,
                tags={TAG_KIND: tags[TAG_KIND]},
            )
            try:
                self.client.log_model_artifacts(logged.model_id, str(folder))
                for extra in extra_files:
                    self.client.log_model_artifact(logged.model_id, str(extra))
                uploaded = self._listed(logged.model_id)
            except Exception as exc:  # noqa: BLE001 - whatever the store raises, nothing is registered
                self._abandon(logged.model_id)
                raise _artifact_error(exc, logged.artifact_location, "upload the model to") from None
            wrong = {p: size for p, size in expected.items() if uploaded.get(p) != size}
            if wrong:
                self._abandon(logged.model_id)
                raise InfrastructureError(
                    f"the artifact store ({logged.artifact_location}) holds {len(wrong)} of the model's files "
                    f"incompletely (e.g. {next(iter(wrong))}); nothing was registered, try again"
                )
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            try:
                self.client.create_registered_model(name, description=description)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self.client.create_model_version(
                name, source=f"models:/{logged.model_id}", run_id=run_id, tags=tags, model_id=logged.model_id
            )
        self.client.set_registered_model_alias(name, CHALLENGER, version.version)
        log.info("registered %s version %s (alias %s)", name, version.version, CHALLENGER)
        return self.client.get_model_version(name, version.version)

    def _listed(self, model_id: str, path: str | None = None) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for info in self.client.list_logged_model_artifacts(model_id, path):
            if info.is_dir:
                sizes.update(self._listed(model_id, info.path))
            else:
                sizes[info.path] = info.file_size
        return sizes

    def _abandon(self, model_id: str) -> None:
        from mlflow.entities import LoggedModelStatus

        with contextlib.suppress(
            Exception
        ):  # the store may be what failed; the model stays FAILED or PENDING
            self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)

    # --- downloading -----------------------------------------------------------------------------
    def download(self, reference: str | Reference, to: str | os.PathLike) -> Path:
        """The files of a version into the folder ``to`` (made; must be empty), checked against the
        hashes in its tags. Returns the folder; a meta-agent's loads with transformers."""
        version = self.version(reference)
        target = Path(to).expanduser().resolve()
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target} is not empty; name a new folder for the download")
        target.mkdir(parents=True, exist_ok=True)
        try:
            self._fetch(version, target)
            self._verify(version, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def _fetch(self, version, target: Path) -> None:
        import mlflow.artifacts

        try:
            with fluent_uri(self.uri):
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(target)
                )
        except Exception as exc:  # noqa: BLE001 - the store's failure, as one line
            raise _artifact_error(exc, version.source, "download the model from") from None

    def _verify(self, version, folder: Path) -> None:
        tags = version.tags or {}
        where = f"{version.name} version {version.version}"
        if tags.get(TAG_KIND) == "meta-agent":
            text = (folder / MANIFEST).read_text() if (folder / MANIFEST).is_file() else ""
            if sha256_text(text) != tags.get(TAG_MANIFEST_SHA):
                raise InfrastructureError(
                    f"the manifest of {where} does not match its registered hash: the stored files were changed; register the checkpoint again"
                )
            listed = json.loads(text)["files"]
            if manifest_of(folder) != listed:
                raise InfrastructureError(
                    f"the files of {where} do not match its manifest: the stored files were changed; register the checkpoint again"
                )
        elif tags.get(TAG_KIND) == "workflow":
            source = _workflow_files(folder)
            if sha256_text(source[0].read_text()) != tags.get(TAG_SOURCE_SHA):
                raise InfrastructureError(
                    f"the workflow source of {where} does not match its registered sha256: the stored file was changed; register the workflow again"
                )
            if sha256_text(source[1].read_text()) != tags.get(TAG_TEST_EVAL_SHA):
                raise InfrastructureError(
                    f"the test results of {where} do not match their registered sha256: the stored file was changed; register the workflow again"
                )
        else:
            raise ConfigError(f"{where} was not registered by w4s (no {TAG_KIND} tag)")

    def workflow(self, reference: str | Reference) -> tuple[Any, str, dict]:
        """A workflow version, its source and its stored test evaluation (both checked)."""
        version = self.version(reference)
        if (version.tags or {}).get(TAG_KIND) != "workflow":
            raise ConfigError(f"{version.name} version {version.version} is not a w4s workflow")
        with tempfile.TemporaryDirectory(prefix="w4s-workflow-") as scratch:
            self._fetch(version, Path(scratch))
            self._verify(version, Path(scratch))
            source_file, evaluation_file = _workflow_files(Path(scratch))
            return version, source_file.read_text(), json.loads(evaluation_file.read_text())

    def local_model(self, reference: str | Reference) -> tuple[Any, Path]:
        """A meta-agent version as a local folder: downloaded once into the w4s home (per store and
        version) and checked; later calls reuse it."""
        version = self.version(reference)
        if (version.tags or {}).get(TAG_KIND) != "meta-agent":
            raise ConfigError(f"{version.name} version {version.version} is not a w4s meta-agent checkpoint")
        store = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        target = w4s_home() / "registry" / store / version.name / str(version.version)
        marker = target / ".w4s-verified"
        if marker.is_file() and marker.read_text() == version.tags.get(TAG_MANIFEST_SHA):
            return version, target
        if target.exists():
            shutil.rmtree(target)
        scratch = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.rmtree(scratch, ignore_errors=True)
        self.download(version_reference(version), scratch)
        marker_scratch = scratch / ".w4s-verified"
        marker_scratch.write_text(version.tags[TAG_MANIFEST_SHA])
        with contextlib.suppress(OSError):  # another process finished the same download first
            os.replace(scratch, target)
        shutil.rmtree(scratch, ignore_errors=True)
        return version, target

    # --- aliases ---------------------------------------------------------------------------------
    def set_tags(self, version, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(version.name, version.version, key, value)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold ``name``'s promotion lock (a registered model of its own: the store makes its creation
        atomic). Waits up to a minute for another holder; breaks a lock older than LOCK_SECONDS."""
        from mlflow.exceptions import MlflowException

        lock_name = f"{LOCK_PREFIX}{name}"
        holder = f"{socket.gethostname()} pid {os.getpid()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.create_registered_model(
                    lock_name, description=f"w4s promotion lock of {name}, held by {holder}"
                )
                break
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            with contextlib.suppress(MlflowException):
                held = self.client.get_registered_model(lock_name)
                if time.time() - held.creation_timestamp / 1000 > LOCK_SECONDS:
                    log.warning("breaking a stale promotion lock of %s (%s)", name, held.description)
                    self.client.delete_registered_model(lock_name)
                    continue
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"another promotion of {name} holds its lock ({lock_name}); wait for it, or delete that "
                    "registered model if its promoter died"
                )
            time.sleep(0.5)
        try:
            yield
        finally:
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model(lock_name)

    def move_champion(self, name: str, version: str, *, expected: str | None) -> bool:
        """Alias ``version`` champion if the champion is still ``expected`` (None: there is none);
        False (nothing changed) when it moved meanwhile. Read, compare, re-read under the lock."""
        with self.lock(name):
            current = self.aliases(name).get(CHAMPION)
            current = None if current is None else str(current)
            if current != expected:
                return False
            if current == str(version):
                return True
            if current is not None:
                self.client.set_model_version_tag(name, str(version), TAG_PREVIOUS, current)
            self.client.set_registered_model_alias(name, CHAMPION, str(version))
            if str(self.aliases(name).get(CHALLENGER)) == str(version):
                self.client.delete_registered_model_alias(name, CHALLENGER)
        return True

    def rollback(self, name: str) -> tuple[str, str]:
        """Move champion back to the champion before it; returns (from, to)."""
        with self.lock(name):
            current = self.aliases(name).get(CHAMPION)
            if current is None:
                raise ConfigError(f"{name} has no champion to roll back")
            previous = (self.client.get_model_version(name, current).tags or {}).get(TAG_PREVIOUS)
            if not previous:
                raise ConfigError(f"{name} version {current} was the first champion: there is none before it")
            self.client.set_registered_model_alias(name, CHAMPION, previous)
            self.client.set_model_version_tag(
                name, current, "w4s.rolled_back", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            )
        return current, previous

    # --- evaluations stored as runs --------------------------------------------------------------
    def stored_evaluations(
        self, task: str, source_sha256: str, executor: str, ids_sha256: str
    ) -> dict | None:
        """A complete evaluation of the workflow with this source by this executor on exactly these
        test samples, recorded by an earlier evaluate run (its JSON checked against the run's hash)."""
        found = self.client.get_experiment_by_name(f"w4s/{task}")
        if found is None:
            return None
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=(
                f"tags.`w4s.workflow_sha256` = '{source_sha256}' and tags.`w4s.executor` = '{executor}' and "
                f"tags.`w4s.samples_sha256` = '{ids_sha256}' and tags.`w4s.complete` = 'true' and "
                "tags.`w4s.split` = 'test' and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
        for run in runs:
            expected = run.data.tags.get("w4s.evaluation_sha256")
            with tempfile.TemporaryDirectory(prefix="w4s-evaluation-") as scratch:
                try:
                    path = self.client.download_artifacts(run.info.run_id, "evaluation.json", scratch)
                    text = Path(path).read_text()
                except Exception as exc:  # noqa: BLE001 - an unreadable record is not reused
                    log.info("not reusing evaluation run %s: %s", run.info.run_id, type(exc).__name__)
                    continue
            if expected and sha256_text(text) == expected:
                return json.loads(text)
        return None


LOCK_PREFIX = "w4s-lock-"
_PRIVATE_ENDPOINT_FIELDS = {"cache_path", "prices_path", "version"}


def version_reference(version) -> Reference:
    return Reference(version.name, version=str(version.version))


def _workflow_files(folder: Path) -> tuple[Path, Path]:
    found = {
        p.name: p for p in folder.rglob("*") if p.is_file() and p.name in (WORKFLOW_FILE, TEST_EVALUATION)
    }
    if len(found) != 2:
        raise InfrastructureError(
            f"the stored workflow model in {folder} lacks {WORKFLOW_FILE} or {TEST_EVALUATION}"
        )
    return found[WORKFLOW_FILE], found[TEST_EVALUATION]


# --- registering what a run folder holds ---------------------------------------------------------------


def register_optimize_run(registry: Registry, run_dir: str | os.PathLike, meta_agent: dict | None = None):
    """Register the best workflow of the optimize run in ``run_dir`` (its report.json, best workflow
    and test results, checked against each other) as a new ``w4s-workflow-<task>`` challenger.
    ``meta_agent`` ({"name", "version"}) names the registered meta-agent that wrote it where the run
    itself could not know (a pipeline registers the checkpoint after its benchmark runs)."""
    from w4s.optimizer.result import OptimizeResult

    folder = Path(run_dir).expanduser().resolve()
    result = OptimizeResult.load(folder)
    if result.best is None or result.paths.test_evaluation is None or result.best.test_score is None:
        raise ConfigError(
            f"the run in {folder} has no test-scored best workflow "
            f"({'it stopped: ' + result.stopped if result.stopped else 'no workflow was scored'}); "
            "resume it (w4s optimize --resume) to finish, then register"
        )
    evaluation_path = folder / Path(result.paths.test_evaluation).name
    try:
        evaluation = json.loads(evaluation_path.read_text())
        source = (folder / Path(result.paths.best_workflow or "best_workflow.py").name).read_text()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the run's results in {folder} ({type(exc).__name__}); rerun the optimizer"
        ) from None
    samples = evaluation.get("samples") if isinstance(evaluation, dict) else None
    if (
        source != result.best.source
        or not isinstance(samples, list)
        or len(samples) != result.best.test_samples
        or abs(float(evaluation.get("score", -1)) - result.best.test_score) > 1e-6
    ):
        raise ConfigError(
            f"the files in {folder} disagree (best_workflow.py, test_evaluation.json and report.json must "
            "come from the same run); rerun the optimizer's last episode"
        )
    record = read_run_record(folder)
    run_id = record["run_id"] if record and record.get("tracking_uri") == registry.uri else None
    meta = dict(meta_agent or result.extra.get("meta_agent") or {}) or {"model": result.meta_model}
    origin = result.best.name
    baselines = result.baselines or {}
    best_baseline = max(baselines, key=lambda name: baselines[name]) if baselines else None
    return registry.register_workflow(
        task=result.task,
        source=source,
        test_evaluation=evaluation,
        valid_score=result.best.valid_score,
        origin=origin,
        best_baseline=best_baseline,
        meta_agent=meta,
        run_id=run_id,
    )


def register_checkpoint(
    registry: Registry, output: str | os.PathLike, scores: dict[str, float] | None = None
):
    """Register the checkpoint of the training run in ``output`` (training_summary.json and model/)
    as a new ``w4s-meta-agent`` challenger; the MLflow runs of its trajectories become its data tag."""
    from w4s.training.result import TrainResult

    folder = Path(output).expanduser().resolve()
    result = TrainResult.load(folder)
    model = Path(result.model)
    if not model.is_absolute():
        model = folder / model
    data_runs = []
    for path in result.extra.get("trajectories") or []:
        record = read_run_record(Path(path).parent)
        if record and record.get("tracking_uri") == registry.uri:
            data_runs.append(record["run_id"])
    record = read_run_record(folder)
    return registry.register_meta_agent(
        model,
        base_model=str(result.extra.get("base_model_reference") or result.config.get("base_model", "")),
        temperature=float(result.config.get("temperature", 0.0)),
        lora=bool(result.lora),
        data_runs=data_runs,
        run_id=record["run_id"] if record and record.get("tracking_uri") == registry.uri else None,
        scores=scores,
    )
