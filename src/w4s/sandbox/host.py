"""The host's handle on one running sandbox zygote: start it, ask it for jobs, hear when they end."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import socket
import threading
from collections.abc import Callable

from w4s.errors import SandboxUnavailable
from w4s.sandbox import isolation
from w4s.sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

ExitCallback = Callable[[dict], None]


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


class Sandbox:
    """A zygote in its own sandbox. Thread-safe: jobs may be spawned from any thread.

    ``files`` become the read-only code directory (``workflow.py`` is compiled at start; a syntax
    error there is reported as :attr:`load_error`, not raised).
    """

    def __init__(self, cfg: SandboxConfig, files: dict[str, str] | None = None):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._exits: dict[int, ExitCallback] = {}
        self._ids = itertools.count(1)
        self.alive = True
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._launch = isolation.prepare(cfg, child_end.fileno(), files)
            self._proc = isolation.spawn(self._launch)
        finally:
            child_end.close()
        self._ctrl = host_end
        host_end.settimeout(cfg.load_timeout_s)
        try:
            data = host_end.recv(65536)
        except (TimeoutError, OSError):
            data = b""
        if not data:
            detail = self._stop()
            raise SandboxUnavailable(
                f"the sandbox failed to start ({detail or 'no output'}); run `w4s sandbox doctor` for the cause"
            )
        started = json.loads(data)
        self.applied: dict = started.get("applied", {})
        self.load_error: dict | None = started.get("load_error")
        missing = isolation.degraded_layers(self._launch.backend, self.applied)
        if missing and not cfg.allow_degraded:
            self._stop()
            raise SandboxUnavailable(
                f"the sandbox started without {', '.join(missing)}; {isolation.DEGRADED_HINT}"
            )
        if missing:
            _warn_once(f"SANDBOX DEGRADED: running without {', '.join(missing)} (allowed by allow_degraded)")
        self.job_uids = self._launch.job_uids
        self.isolation = {
            "backend": self._launch.backend,
            "seccomp": self.applied.get("seccomp"),
            "private_scratch": self.applied.get("private_scratch"),
            "job_uids": bool(self.applied.get("job_uids")),
            "degraded": missing,
        }
        host_end.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="w4s-sandbox-ctrl", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                data = self._ctrl.recv(65536)
                if not data:
                    break
                message = json.loads(data)
                if message.get("op") == "exit":
                    with self._lock:
                        callback = self._exits.pop(message.get("id"), None)
                    if callback is not None:
                        callback(message)
        except (OSError, ValueError) as exc:
            log.debug("sandbox control channel closed: %s", exc)
        with self._lock:
            self.alive = False
            callbacks, self._exits = list(self._exits.values()), {}
        for callback in callbacks:
            callback({"op": "exit", "lost": True})

    def spawn(self, kind: str, fds: list[int], on_exit: ExitCallback | None = None, **extra) -> int:
        """Fork a fresh job of ``kind`` in the sandbox with ``fds`` (RPC socket, output socket)."""
        job = next(self._ids)
        data = json.dumps({"op": "spawn", "id": job, "kind": kind, **extra}).encode()
        with self._lock:
            if not self.alive:
                raise SandboxUnavailable("the sandbox has stopped; start a new one")
            if on_exit is not None:
                self._exits[job] = on_exit
            try:
                socket.send_fds(self._ctrl, [data], fds)
            except OSError as exc:
                self._exits.pop(job, None)
                raise SandboxUnavailable(f"the sandbox stopped answering ({exc})") from None
        return job

    def kill(self, job: int, report: bool = True) -> None:
        """Ask the zygote to kill ``job`` (and all it started). ``report=False``: the caller has what it
        needs of the job, so its exit is neither reported nor called back (one message and one
        wake-up of the event loop less per sample)."""
        message = {"op": "kill", "id": job} if report else {"op": "kill", "id": job, "quiet": True}
        with self._lock:
            if not self.alive:
                return
            if not report:
                self._exits.pop(job, None)
            try:
                self._ctrl.send(json.dumps(message).encode())
            except OSError as exc:
                log.debug("could not ask the sandbox to kill job %s: %s", job, exc)

    def _stop(self) -> str:
        try:
            self._ctrl.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._ctrl.close()
        detail = ""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stderr is not None:
            text = self._proc.stderr.read(8000).decode(errors="replace").strip()
            detail = text.splitlines()[-1] if text else ""
            self._proc.stderr.close()
        self._launch.cleanup()
        return detail

    def close(self) -> None:
        with self._lock:
            self.alive = False
        self._stop()
        if self._reader.is_alive():
            self._reader.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
