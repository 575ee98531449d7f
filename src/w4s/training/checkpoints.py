"""Checkpoints that survive the pod: find the newest complete one, and mirror the output folder to S3.

A training task in Kubernetes may be killed and retried on another node, with a fresh local disk.
With ``checkpoint_uri: s3://bucket/prefix`` the output folder is mirrored there, with the same layout:

- ``prefix/checkpoints/checkpoint-N/...``: each trainer checkpoint, uploaded when the trainer has saved
  it (:meth:`S3Mirror.callback`), then a ``.w4s-complete`` marker; a checkpoint without its marker (the
  pod died mid-upload) is never downloaded. Checkpoints the trainer rotated away locally are deleted
  there too, once a newer one is complete.
- ``prefix/model/...`` and, last, ``prefix/training_summary.json``: the finished model.

Before training, the newest complete checkpoint there is downloaded when it is newer than the local
one (:meth:`S3Mirror.fetch_checkpoint`), or the finished model when there is one
(:meth:`S3Mirror.fetch_result`). boto3 reads the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``); the endpoint is ``AWS_ENDPOINT_URL`` or
``MLFLOW_S3_ENDPOINT_URL`` (MinIO, SeaweedFS), else AWS. Every S3 failure is one
:class:`InfrastructureError` line naming the bucket and endpoint.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from w4s.errors import ConfigError, InfrastructureError
from w4s.extras import require

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # the trainer's output_dir, inside the output folder
MODEL = "model"
ADAPTER = "adapter"  # the LoRA adapters, beside the merged model
SUMMARY = "training_summary.json"
COMPLETE = ".w4s-complete"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TRAINER_STATE = "trainer_state.json"  # the trainer writes it after the weights and optimizer state


def checkpoint_step(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete trainer checkpoint in ``folder`` (one with its trainer_state.json: a pod
    killed while saving leaves one without), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        step = checkpoint_step(path.name)
        if step is None or not path.is_dir():
            continue
        if not (path / _TRAINER_STATE).is_file():
            log.warning(
                "%s is incomplete (no %s; saving was interrupted): not resuming from it", path, _TRAINER_STATE
            )
            continue
        found.append((step, path))
    return max(found)[1] if found else None


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    if not isinstance(uri, str) or not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ConfigError(f"checkpoint_uri {uri!r} is not an s3://bucket/prefix URI")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


class S3Mirror:
    """The output folder ``output`` mirrored at ``uri`` (``s3://bucket/prefix``)."""

    def __init__(self, uri: str, output: Path):
        require("mlflow", "boto3", what="checkpoint_uri (S3) needs")
        import boto3
        import botocore.config

        self.uri = uri
        self.bucket, self.prefix = parse_uri(uri)
        self.output = Path(output)
        self.endpoint = endpoint_url()
        # a session of its own: the default one keeps the credentials it first read for the process
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            config=botocore.config.Config(
                connect_timeout=10, read_timeout=120, retries={"max_attempts": 5, "mode": "standard"}
            ),
        )

    # --- keys --------------------------------------------------------------------------------------
    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        import botocore.exceptions

        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            reason = f"{error.get('Code', 'error')}: {error.get('Message') or exc}"
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        raise InfrastructureError(
            f"checkpoint_uri {self.uri}: cannot {what} in bucket {self.bucket!r} at "
            f"{self.endpoint or 'the AWS default endpoint'} ({reason.splitlines()[0]}); check the bucket, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL)"
        ) from None

    def list(self, relative: str = "") -> dict[str, int]:
        """Every object under ``relative`` (a folder of the output): path relative to the output -> size."""
        relative = relative.strip("/")
        prefix = self.key(relative) + "/" if relative else (self.prefix + "/" if self.prefix else "")

        def pages():
            paginator = self._client.get_paginator("list_objects_v2")
            return [
                item
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for item in page.get("Contents", [])
            ]

        return {self._relative(item["Key"]): item["Size"] for item in self._call("list objects", pages)}

    # --- what is there -----------------------------------------------------------------------------
    def remote_checkpoints(self, objects: dict[str, int] | None = None) -> dict[int, list[str]]:
        """Complete checkpoints there: step -> their files (relative to the output folder)."""
        objects = self.list(CHECKPOINTS) if objects is None else objects
        files: dict[str, list[str]] = {}
        for path in objects:
            parts = path.split("/")
            if len(parts) >= 3 and parts[0] == CHECKPOINTS and checkpoint_step(parts[1]) is not None:
                files.setdefault(parts[1], []).append(path)
        return {
            checkpoint_step(name): [p for p in paths if not p.endswith("/" + COMPLETE)]
            for name, paths in files.items()
            if f"{CHECKPOINTS}/{name}/{COMPLETE}" in paths
        }

    def is_empty(self) -> bool:
        return not self.list()

    # --- download ----------------------------------------------------------------------------------
    def _download(self, files: list[str], target: Path, strip: str) -> None:
        """``files`` (relative to the output) into a scratch folder, then renamed to ``target``: a
        download cut short never looks like a finished folder, and two processes do not mix files."""
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for path in files:
                dest = scratch / path[len(strip) :].lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._call(
                    f"download {self.key(path)}",
                    self._client.download_file,
                    self.bucket,
                    self.key(path),
                    str(dest),
                )
            if target.exists():
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def fetch_checkpoint(self, local: Path | None) -> Path | None:
        """Download the newest complete checkpoint there when it is newer than ``local`` (the newest
        local one); the checkpoint to resume from, or None when there is none anywhere."""
        remote = self.remote_checkpoints()
        if not remote:
            return local
        step = max(remote)
        local_step = checkpoint_step(local.name) if local is not None else None
        if local_step is not None and local_step >= step:
            return local
        target = self.output / CHECKPOINTS / f"checkpoint-{step}"
        log.info("downloading checkpoint-%d from %s to resume from it", step, self.uri)
        self._download(remote[step], target, f"{CHECKPOINTS}/checkpoint-{step}")
        return target

    def fetch_result(self) -> bool:
        """Download the finished model and training_summary.json, if the summary is there."""
        objects = self.list()
        if SUMMARY not in objects:
            return False
        model = [p for p in objects if p.startswith(MODEL + "/")]
        log.info("%s holds a finished training: downloading its model", self.uri)
        self._download(model, self.output / MODEL, MODEL)
        tmp = self.output / f".{SUMMARY}.download"
        self._call(
            f"download {self.key(SUMMARY)}",
            self._client.download_file,
            self.bucket,
            self.key(SUMMARY),
            str(tmp),
        )
        os.replace(tmp, self.output / SUMMARY)  # last and whole, as training writes it
        return True

    # --- upload ------------------------------------------------------------------------------------
    def _upload_folder(self, folder: Path) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(self.output).as_posix()
            self._call(
                f"upload {self.key(relative)}",
                self._client.upload_file,
                str(path),
                self.bucket,
                self.key(relative),
            )

    def upload_checkpoint(self, folder: Path) -> None:
        """A checkpoint the trainer has saved, then its marker; then the checkpoints the trainer has
        rotated away locally go there too (never the one just uploaded)."""
        self._upload_folder(folder)
        marker = self.key(f"{CHECKPOINTS}/{folder.name}/{COMPLETE}")
        self._call(f"upload {marker}", self._client.put_object, Bucket=self.bucket, Key=marker, Body=b"")
        log.info("checkpoint %s mirrored to %s", folder.name, self.uri)
        objects = self.list(CHECKPOINTS)
        local = {p.name for p in folder.parent.iterdir() if p.is_dir()}
        stale = sorted(
            path
            for path in objects
            if path.split("/")[1] not in local and checkpoint_step(path.split("/")[1]) is not None
        )
        for start in range(0, len(stale), 1000):
            batch = {"Objects": [{"Key": self.key(p)} for p in stale[start : start + 1000]], "Quiet": True}
            self._call(
                "delete rotated checkpoints", self._client.delete_objects, Bucket=self.bucket, Delete=batch
            )

    def upload_result(self) -> None:
        """The finished model, then training_summary.json (its presence means the upload is whole)."""
        self._upload_folder(self.output / MODEL)
        self._call(
            f"upload {self.key(SUMMARY)}",
            self._client.upload_file,
            str(self.output / SUMMARY),
            self.bucket,
            self.key(SUMMARY),
        )
        log.info("model and %s mirrored to %s", SUMMARY, self.uri)

    def callback(self):
        """A transformers TrainerCallback that uploads each checkpoint once the trainer has saved it."""
        from transformers import TrainerCallback
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        mirror = self

        class _Mirror(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
                    if folder.is_dir():
                        mirror.upload_checkpoint(folder)
                    else:
                        log.warning("the trainer saved no %s: nothing to mirror", folder)

        return _Mirror()
