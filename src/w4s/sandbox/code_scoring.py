"""Score code answers (HumanEval, MBPP) against hidden tests without trusting the answer.

The dataset's test code is trusted; the candidate program is not. So they never share a process:
each answer gets a *fresh* sandbox that loads the candidate and serves calls to its functions,
while the tests run here, on the host, against a proxy. Arguments and results cross as plain data
(:mod:`w4s.sandbox.runtime.protocol`), which defeats every trick that works on an in-process
harness: an always-equal object cannot cross, the candidate cannot see the caller's frame or the
expected values, ``sys.exit``/``os._exit``/self-kill only break the channel, printed markers and
exit statuses mean nothing. A pass is counted only when the test function itself returns here.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.host import Sandbox
from w4s.sandbox.runtime import protocol

log = logging.getLogger(__name__)


class CandidateError(Exception):
    """The candidate failed a call (raised, crashed, timed out or returned non-plain data)."""


@dataclass
class CodeProblem:
    """One code answer to check.

    ``program``: the candidate's full source (for HumanEval: prompt + completion).
    ``test``: trusted test source defining ``check(candidate)`` or ``check()``.
    ``setup``: trusted source run before the test (HumanEval's prompt, for its helper functions;
    MBPP's test imports).
    """

    program: str
    test: str
    entry_point: str
    setup: str = ""
    id: str = ""
    timeout_s: float | None = None  # None: the scorer's code_score_timeout_s


@dataclass
class CodeScore:
    id: str
    passed: bool
    error: str | None
    seconds: float


class _Candidate:
    """One candidate program loaded in a fresh job of the scorer's sandbox; calls cross as plain data."""

    def __init__(self, box: Sandbox, program: str, deadline: float):
        self.deadline = deadline
        self.callables: list[str] = []
        self.modules: dict[str, str] = {}
        self._dead: str | None = None
        self._next = 0
        self._box = box
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = host_end
        try:
            self._job = box.spawn("function", [child_end.fileno()])
        finally:
            child_end.close()
        try:
            protocol.send(self._sock, {"program": program})
        except protocol.ProtocolError as exc:
            self._dead = f"the program cannot be sent: {exc}"
            return
        except OSError:
            self._dead = "the candidate's process ended before it loaded"
            return
        ready = self._recv()
        if ready is not None and ready.get("op") == "ready":
            self.callables = [str(name) for name in ready.get("callables", [])]
            modules = ready.get("modules")
            self.modules = {str(k): str(v) for k, v in modules.items()} if isinstance(modules, dict) else {}
        elif ready is not None:
            error = ready.get("error") or {}
            self._dead = f"{error.get('type', 'LoadError')}: {error.get('message', '')}"

    def _recv(self) -> dict | None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._dead = "TimeoutError: the answer ran out of time"
            return None
        self._sock.settimeout(remaining)
        try:
            return protocol.recv(self._sock)
        except TimeoutError:
            self._dead = "TimeoutError: the answer ran out of time"
        except (EOFError, OSError) as exc:
            self._dead = f"the candidate's process ended ({type(exc).__name__})"
        except protocol.ProtocolError as exc:
            self._dead = f"ProtocolError: {exc}"
        self.close()
        return None

    @property
    def load_error(self) -> str | None:
        return None if self.callables else (self._dead or "the program failed to load")

    def call(self, name: str, args: tuple, kwargs: dict):
        if self._dead is not None:
            raise CandidateError(self._dead)
        self._next += 1
        try:
            protocol.send(
                self._sock,
                {
                    "op": "call",
                    "id": self._next,
                    "name": name,
                    "args": protocol.encode(list(args)),
                    "kwargs": protocol.encode(dict(kwargs)),
                },
            )
        except OSError as exc:
            self._dead = f"the candidate's process ended ({type(exc).__name__})"
            raise CandidateError(self._dead) from None
        reply = self._recv()
        if reply is None:
            raise CandidateError(self._dead)
        if reply.get("id") != self._next:
            self._dead = "ProtocolError: reply out of order"
            self.close()
            raise CandidateError(self._dead)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise CandidateError(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        try:
            return protocol.decode(reply.get("value"), opaque=True)
        except protocol.ProtocolError as exc:
            raise CandidateError(f"the result is not plain data: {exc}") from None

    def proxy(self, name: str):
        def candidate(*args, **kwargs):
            return self.call(name, args, kwargs)

        candidate.__name__ = name
        return candidate

    def close(self) -> None:
        self._sock.close()
        self._box.kill(self._job)


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


class CodeScorer:
    """Scores code answers; one sandbox zygote, a fresh job (process, uid, scratch) per answer.

    Thread-safe: :meth:`check_many` runs answers in parallel threads, each holding the trusted
    tests of its problem while the candidate computes in its own sandboxed process.
    """

    def __init__(self, cfg: SandboxConfig | None = None):
        self.cfg = cfg or SandboxConfig()
        self._box = Sandbox(self.cfg)
        self._lock = threading.Lock()

    def __enter__(self) -> CodeScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._box.close()

    def _sandbox(self) -> Sandbox:
        with self._lock:
            if not self._box.alive:
                log.warning("the scoring sandbox stopped; starting a new one")
                self._box = Sandbox(self.cfg)
            return self._box

    def check(self, problem: CodeProblem) -> CodeScore:
        """Run the trusted tests of ``problem`` against its candidate in a fresh sandboxed process."""
        started = time.monotonic()
        try:
            test_code = compile(problem.setup + "\n" + problem.test, f"<tests:{problem.id}>", "exec")
        except SyntaxError as exc:
            raise ValueError(f"the trusted test code of {problem.id!r} does not compile: {exc}") from None
        timeout_s = problem.timeout_s or self.cfg.code_score_timeout_s
        candidate = _Candidate(self._sandbox(), problem.program, started + timeout_s)

        def score(passed: bool, error: str | None) -> CodeScore:
            return CodeScore(problem.id, passed, error, time.monotonic() - started)

        try:
            if candidate.load_error is not None:
                return score(False, f"the program failed to load: {candidate.load_error}")
            if problem.entry_point not in candidate.callables:
                return score(False, f"the program defines no function {problem.entry_point!r}")
            namespace: dict = {"__name__": "__w4s_tests__"}
            exec(test_code, namespace)  # trusted dataset code
            used = _names_used(test_code)
            for name in used & set(candidate.callables):
                if name not in namespace:
                    namespace[name] = candidate.proxy(name)
            for name in used & set(candidate.modules):
                # Tests sometimes rely on a module the program imported (MBPP: `sys`); the trusted
                # side imports its own copy, and only from the standard library.
                module = candidate.modules[name]
                if name not in namespace and module.split(".")[0] in sys.stdlib_module_names:
                    namespace[name] = importlib.import_module(module)
            namespace[problem.entry_point] = candidate.proxy(problem.entry_point)
            check = namespace.get("check")
            if not callable(check):
                raise ValueError(f"the trusted test code of {problem.id!r} defines no check()")
            try:
                if len(inspect.signature(check).parameters) >= 1:
                    check(namespace[problem.entry_point])
                else:
                    check()
            except CandidateError as exc:
                return score(False, str(exc))
            except AssertionError as exc:
                return score(False, f"AssertionError: {exc}".rstrip(": "))
            except Exception as exc:  # noqa: BLE001 - any other failure of the test run is a failed answer
                return score(False, f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > timeout_s:
                return score(False, "TimeoutError: the answer ran out of time")
            return score(True, None)
        finally:
            candidate.close()

    def check_many(
        self, problems: Iterable[CodeProblem], concurrency: int | None = None
    ) -> Iterator[CodeScore]:
        """Score many answers in parallel; yields in input order."""
        workers = concurrency or max(2, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="w4s-score") as pool:
            yield from pool.map(self.check, problems)
