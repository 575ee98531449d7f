"""A real `w4s serve` in a subprocess on a free loopback port, stopped by its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, ScriptedServer

START_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def evaluation(task: str) -> dict:
    """A complete test evaluation of ``task`` (4 samples, all right), as a registered workflow carries."""
    samples = [{"id": f"s{i}", "score": 1.0, "answer": None, "error": None} for i in range(4)]
    return {
        "version": 1, "task": task, "split": "test", "workflow": "constructed", "executor": "gpt-4o-mini",
        "score": 1.0, "complete": True, "samples_total": 4, "samples_run": 4, "samples_failed": 0,
        "budget_exhausted": None, "sandbox": {}, "samples": samples, "usage": {"cost_usd": 0.0},
        "wall_seconds": 1.0,
    }  # fmt: skip


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read())


class Served:
    """``w4s serve ARGS`` on a free port; ``.url`` is the OpenAI base URL."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None, wait: bool = True):
        self.port = free_port()
        self.log = tmp / f"serve-{self.port}.log"
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "w4s.cli", "serve", "--port", str(self.port), *args],
                cwd=REPO,
                env={**os.environ, "OPENAI_API_KEY": "sk-executor-secret", **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"w4s serve exited {self.proc.returncode}:\n{self.output()}")
            try:
                if get(f"{self.base}/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"w4s serve was not ready in {START_S} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        return get(f"{self.base}/metrics")[1]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture(scope="package")
def executor():
    server = ScriptedServer(
        {
            "rules": [{"match": ".", "reply": "Let me think. The answer is 4."}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7},
        }
    )
    yield server
    server.stop()


@pytest.fixture
def serve(tmp_path):
    started: list[Served] = []

    def start(args: list[str], env: dict | None = None, wait: bool = True) -> Served:
        server = Served(args, tmp_path, env, wait)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
