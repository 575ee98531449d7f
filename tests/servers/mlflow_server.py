"""A real MLflow tracking server for tests, and the process plumbing its stores share.

``MlflowServer`` runs ``mlflow server`` (the full MLflow 3 package, no mock) on a free loopback port in a
session of its own, waits until ``/health`` answers (polling against a deadline, no fixed sleep) and
stops the whole process group. Its backend store is SQLite in a folder of the test's (or any
SQLAlchemy URI: ``postgres_server.PostgresServer.uri``). Artifacts are *proxied*, as in MLflow 3's
default and the usual production setup: clients log to ``mlflow-artifacts:/`` URIs over HTTP and the
server alone writes to its ``--artifacts-destination`` (a local folder, or ``s3://bucket/prefix`` on
``s3_server.S3Server``), so a client needs only the tracking URI, never storage credentials.

``ServerProcess`` is what every server in ``tests/servers/*_server.py`` is: started with
``start_new_session`` (its own process group), stdout and stderr into a log file (a pipe nobody reads
would block it), readiness polled against a deadline, a ``ServerStartError`` with the last lines of
that log when it exits or stays silent, ``stop()`` that signals it and then kills the group.

Run by hand: ``python -m tests.servers.mlflow_server [--s3]`` prints the tracking URI and serves until
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server exited or did not become ready before its deadline; the message holds its log's tail."""

    def __init__(self, message: str, *, address_in_use: bool = False, pid: int | None = None):
        super().__init__(message)
        self.address_in_use = address_in_use
        self.pid = pid


def free_port() -> int:
    """A loopback TCP port free right now (the server binds it a moment later; see ``start_with_retries``)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def unique_name(prefix: str) -> str:
    """A name no other test on a shared server uses (experiments, registered models)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers 200 (any other answer or no answer: not yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


class ServerProcess:
    """One server process in its own process group, with its output in ``log_path``."""

    name = "server"
    #: what ``stop()`` sends first, to the whole group (``stop_pid_only``: to the leader alone)
    stop_signal = signal.SIGTERM
    stop_pid_only = False
    stop_grace_s = 10.0

    def _spawn(self, argv: list[str], env: dict[str, str], log_path: Path, **popen) -> None:
        self.log_path = log_path
        self.argv = argv
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )
        self.pid = self.proc.pid

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def fail(self, why: str) -> None:
        """Stop what is left of the server and raise a ``ServerStartError`` saying why, with its log."""
        self.terminate()
        tail = self.log_tail()
        self.cleanup()
        raise ServerStartError(
            f"{self.name} {why}\n  command: {' '.join(self.argv)}\n  log {self.log_path}, last lines:\n{tail}",
            address_in_use="address already in use" in tail.lower(),
            pid=self.pid,
        )

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> float:
        """Poll ``probe`` until it returns True; fail when the process exits or ``timeout_s`` passes.

        Returns the seconds it waited (the server's startup time, which the smoke tests print)."""
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            status = self.proc.poll()
            if status is not None:
                self.fail(f"exited with status {status} before it was ready")
            if probe():
                return time.monotonic() - start
            if time.monotonic() > deadline:
                self.fail(f"was not ready after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def stop(self) -> None:
        """End the server (``terminate``) and remove what it leaves outside the test's folders. Idempotent."""
        self.terminate()
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what the server leaves outside the test's own folders (nothing, unless overridden)."""

    def terminate(self) -> None:
        """Signal the server (``stop_signal``), wait ``stop_grace_s``, then SIGKILL its process group.

        Only this server's own group (or PID) is ever signalled."""
        proc = getattr(self, "proc", None)
        if proc is None or getattr(self, "_terminated", False):
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.stop_pid_only:
                    os.kill(proc.pid, self.stop_signal)
                else:
                    os.killpg(proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_grace_s)
        # children that outlived the leader (or a leader that ignored the signal)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._terminated = True


def start_with_retries(start: Callable[[], ServerProcess], attempts: int = 3) -> ServerProcess:
    """``start()``, again on a new port when a port chosen as free was taken before the server bound it."""
    for attempt in range(attempts):
        try:
            return start()
        except ServerStartError as exc:
            if not exc.address_in_use or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class MlflowServer(ServerProcess):
    """``mlflow server`` with one worker, its artifacts proxied to ``artifacts_destination``.

    ``url`` is the tracking URI; ``env`` what a client process needs in its environment to use it
    (only ``MLFLOW_TRACKING_URI``: the server holds any storage credentials)."""

    name = "mlflow server"

    def __init__(
        self,
        root: Path,
        *,
        backend_store_uri: str | None = None,
        artifacts_destination: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(root / "artifacts")
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_destination,
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        server_env = {
            **os.environ,
            # no job runner (huey consumer processes launched beside the server, for server-side jobs)
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **(env or {}),
        }
        server_env.pop("MLFLOW_TRACKING_URI", None)
        self._spawn(argv, server_env, root / "mlflow-server.log", cwd=root)
        self.startup_s = self.wait_ready(lambda: http_ok(f"{self.url}/health"), timeout_s)

    @classmethod
    def start(cls, root: Path, **kwargs) -> MlflowServer:
        return start_with_retries(lambda: cls(root, **kwargs))  # type: ignore[return-value]

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.url}

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)


@dataclass
class EmbeddedStore:
    """MLflow without a server: a SQLite store and a local artifact folder under ``home``.

    The layout is w4s's embedded default under ``$W4S_HOME`` (``<home>/mlflow/mlflow.db``, artifacts
    beside it); ``env`` sets ``W4S_HOME`` and ``unset`` lists the variables that would send runs elsewhere."""

    home: Path
    tracking_uri: str = field(init=False)
    artifact_root: Path = field(init=False)
    unset: tuple[str, ...] = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

    def __post_init__(self):
        (self.home / "mlflow").mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"
        self.artifact_root = self.home / "mlflow" / "artifacts"

    @property
    def env(self) -> dict[str, str]:
        return {"W4S_HOME": str(self.home)}

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3", action="store_true", help="artifacts on a seaweedfs S3 server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="w4s-mlflow-") as tmp:
        servers: list[ServerProcess] = []
        try:
            extra = {}
            if args.s3:
                from tests.servers.s3_server import S3Server

                s3 = S3Server.start(Path(tmp) / "s3")
                servers.append(s3)
                extra = {"artifacts_destination": s3.artifacts_uri("mlflow"), "env": s3.env}
                print(f"S3 {s3.endpoint_url} bucket {s3.bucket}", flush=True)
            server = MlflowServer.start(Path(tmp) / "mlflow", **extra)
            servers.append(server)
            print(f"MLFLOW_TRACKING_URI={server.url}  (ready in {server.startup_s:.1f} s)", flush=True)
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            for server in reversed(servers):
                server.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the servers on SIGTERM too
    main()
