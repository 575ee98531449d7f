"""Run one workflow on many samples: loaded once, one forked process per sample, failures contained.

The host side of the local sandbox for workflows, the :class:`~w4s.sandbox.runner.WorkflowRunner` that
evaluation uses by default. A :class:`WorkflowSandbox` starts a worker that loads
the workflow source once (it is PID 1 of its PID namespace); each sample is a forked child with its
own process group, private RPC socket, capped output pipe, CPU limit and wall-clock timeout
(SIGKILL of the group). The child's LLM requests are answered by an :class:`AgentHost` on this
side. A sample that crashes, hangs, exits or exhausts a limit costs only itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from w4s.errors import BudgetExceeded, InfrastructureError, SandboxUnavailable
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.host import Sandbox
from w4s.sandbox.runner import AgentHost, SampleResult
from w4s.sandbox.runtime import protocol

log = logging.getLogger(__name__)

_MAX_RESTARTS = 3
MAX_CALLS_IN_FLIGHT = 64
MAX_SPANS = 50  # spans a sample may report (execute_code calls); the rest are dropped
WORKFLOW_FILE = "workflow.py"
_EXIT_GRACE_S = 5.0
# Frames from a sample larger than this are parsed and decoded off the event loop, so one huge
# message never holds up the timeouts and replies of every other sample in flight.
_INLINE_FRAME = 256 * 1024


def _error(type_name: str, message: str, **more) -> dict:
    return {"type": type_name, "message": message, "line": None, "lineno": None, **more}


class _Sample:
    def __init__(self):
        self.job = 0
        self.exit: asyncio.Future = asyncio.get_running_loop().create_future()
        self.final: dict | None = None
        self.final_bytes = 0
        self.answered: asyncio.Future = asyncio.get_running_loop().create_future()  # a final message came
        self.calls = 0
        self.stopped: str | None = None  # why the host stopped serving it (its budget is spent)
        self.spans: list[dict] = []  # execute_code and the like, as the sandbox reported them

    @property
    def settled(self) -> bool:
        """Its result comes from what it sent (or from its stop), not from how its job ended."""
        if self.stopped is not None:
            return True
        final = self.final or {}
        return final.get("op") == "done" or (
            final.get("op") == "failed" and isinstance(final.get("error"), dict)
        )

    def stop(self, reason: str) -> None:
        """End the sample now: a call was refused for a reason that is not the workflow's."""
        if self.stopped is None:
            self.stopped = reason
        if not self.answered.done():
            self.answered.set_result(None)


class WorkflowSandbox:
    """One sandbox for one workflow; use as ``async with WorkflowSandbox(src, host, cfg) as box``."""

    def __init__(self, source: str, host: AgentHost, cfg: SandboxConfig | None = None):
        self.source = source
        self.host = host
        self.cfg = cfg or SandboxConfig()
        self.load_error: dict | None = None
        self._box: Sandbox | None = None
        self._restarts = 0
        self._fatal: InfrastructureError | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> WorkflowSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sandbox (in this thread: bwrap's parent-death signal follows the spawning thread)."""
        if self._box is not None and self._box.alive:
            return
        if self._box is not None:
            self._restarts += 1
            if self._restarts > _MAX_RESTARTS:
                raise InfrastructureError(
                    f"the sandbox died {self._restarts} times; see the log for the cause"
                )
            self._box.close()
        self._box = Sandbox(self.cfg, {WORKFLOW_FILE: self.source})
        self.load_error = self._box.load_error

    @property
    def isolation(self) -> dict:
        """The isolation this sandbox actually applies (see :attr:`w4s.sandbox.host.Sandbox.isolation`)."""
        return dict(self._box.isolation) if self._box is not None else {}

    async def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None

    # --- samples ---------------------------------------------------------------------------------
    async def run(self, task: Any, index: int = 0, timeout_s: float | None = None) -> SampleResult:
        """Run ``solver(agent, task)`` once; never raises for workflow failures."""
        return await self._run(task, index, self.cfg.timeout_s if timeout_s is None else timeout_s, "sample")

    async def check(self, timeout_s: float | None = None) -> dict | None:
        """Run the workflow's module once in a job of its own, without calling ``solver``: the error
        every sample would meet before its solver runs (an exception at import, no ``solver``, a
        module that does not finish), or None. Compiling alone (``load_error``) misses those."""
        timeout_s = self.cfg.load_timeout_s if timeout_s is None else timeout_s
        return (await self._run(None, -1, timeout_s, "check")).error

    async def _run(self, task: Any, index: int, timeout_s: float, kind: str) -> SampleResult:
        started = time.perf_counter()
        if self._box is None or not self._box.alive:
            await self.start()
        if self.load_error is not None:
            return SampleResult(
                index, error=dict(self.load_error), wall_seconds=time.perf_counter() - started
            )
        result = await self._run_sample(task, index, timeout_s, started, kind)
        if self._fatal is not None:
            raise self._fatal
        return result

    async def _run_sample(
        self, task, index: int, timeout_s: float, started: float, kind: str
    ) -> SampleResult:
        loop = asyncio.get_running_loop()
        first_frame = protocol.pack({"task": protocol.encode(task)})  # fails here, before any job starts
        sample = _Sample()
        rpc_host, rpc_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_host, out_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The task is in the channel before the job exists, so the job never waits for this loop.
        rpc_host.setblocking(False)
        try:
            sent = rpc_host.send(first_frame)
        except BlockingIOError:
            sent = 0
        unsent = first_frame[sent:]

        def on_exit(message: dict) -> None:
            loop.call_soon_threadsafe(lambda: sample.exit.done() or sample.exit.set_result(message))

        try:
            sample.job = self._box.spawn(kind, [rpc_child.fileno(), out_child.fileno()], on_exit)
        except SandboxUnavailable:
            rpc_host.close()
            out_host.close()
            raise
        finally:
            rpc_child.close()
            out_child.close()
        output = bytearray()
        cap = self.cfg.output_bytes + 1
        out_fd = out_host.fileno()
        out_host.setblocking(False)

        def drain_output() -> None:
            """Take what the job has printed so far (beyond the cap it is read and dropped, so a
            chatty job never blocks on a full pipe)."""
            while True:
                try:
                    chunk = out_host.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    chunk = b""
                if not chunk:
                    loop.remove_reader(out_fd)
                    return
                if len(output) < cap:
                    output.extend(chunk[: cap - len(output)])

        loop.add_reader(out_fd, drain_output)
        pending: set[asyncio.Task] = set()
        timed_out = False
        writer = None
        rpc_task = None
        try:
            reader, writer = await asyncio.open_connection(sock=rpc_host)
            rpc_task = asyncio.create_task(self._serve_rpc(sample, reader, writer, pending))
            if unsent:  # a task larger than the socket buffer: the rest as the job reads
                writer.write(unsent)
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                done, _ = await asyncio.wait(
                    {sample.exit, sample.answered, stop},
                    timeout=timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stop.cancel()
            if not done or stop in done:
                timed_out = not done
                self._box.kill(sample.job)
                try:
                    await asyncio.wait_for(asyncio.shield(sample.exit), _EXIT_GRACE_S)
                except TimeoutError:
                    pass
            if not sample.answered.done():
                # The job is gone: what it sent before it died is still to be read to the end.
                await asyncio.wait({rpc_task}, timeout=1.0)
            # An answer is taken at once: the job flushed its output before sending it, so what it
            # printed is already in the channel, and the job is not waited for (see below).
            drain_output()
        finally:
            # The zygote reaps and sweeps in the background; whatever is left of the job is killed
            # now, so a workflow that forged its final message cannot keep running. Also when cancelled.
            if not sample.exit.done():
                # With a final message in hand (or a timeout already waited out) the exit report is
                # of no use: the job is killed without one.
                self._box.kill(sample.job, report=not (timed_out or sample.settled))
            loop.remove_reader(out_fd)
            for task_ in (rpc_task, *pending):
                if task_ is not None:
                    task_.cancel()
            await asyncio.gather(*(t for t in (rpc_task, *pending) if t is not None), return_exceptions=True)
            if writer is not None:
                writer.close()
            rpc_host.close()
            out_host.close()
        result = SampleResult(
            index, wall_seconds=time.perf_counter() - started, llm_calls=sample.calls, spans=sample.spans
        )
        result.output = output[: self.cfg.output_bytes].decode(errors="replace")
        if len(output) > self.cfg.output_bytes:
            result.output += f"\n[output truncated at {self.cfg.output_bytes} bytes]"
        final = sample.final
        if timed_out:
            result.error = _error(
                "TimeoutError", f"the sample ran longer than {timeout_s:g} s and was killed"
            )
        elif sample.stopped is not None:
            result.stopped = sample.stopped
            result.error = _error("BudgetExceeded", f"the sample was stopped: {sample.stopped}")
        elif final is not None and final.get("op") == "done":
            result.answer_bytes = sample.final_bytes
            try:
                if sample.final_bytes < _INLINE_FRAME:
                    result.answer = protocol.decode(final.get("answer"))
                else:
                    result.answer = await asyncio.to_thread(protocol.decode, final.get("answer"))
            except protocol.ProtocolError as exc:
                result.error = _error("AnswerError", f"the answer is not plain data: {exc}")
        elif final is not None and final.get("op") == "failed" and isinstance(final.get("error"), dict):
            result.error = _sanitise(final["error"])
        else:
            if not sample.exit.done():  # a malformed final message: say how the job ended
                try:
                    await asyncio.wait_for(asyncio.shield(sample.exit), _EXIT_GRACE_S)
                except TimeoutError:
                    pass
            result.error = _describe_exit(sample.exit.result() if sample.exit.done() else {"lost": True})
        return result

    async def _serve_rpc(self, sample: _Sample, reader, writer, pending: set) -> None:
        write_lock = asyncio.Lock()
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER_SIZE)
                length = protocol.frame_length(header)
                body = await reader.readexactly(length)
                if length < _INLINE_FRAME:
                    message = protocol.unpack(body)
                else:
                    message = await asyncio.to_thread(protocol.unpack, body)
                op = message.get("op")
                if op == "call":
                    if type(message.get("id")) is not int:
                        raise protocol.ProtocolError("a call without an integer id")
                    sample.calls += 1
                    if len(pending) >= MAX_CALLS_IN_FLIGHT:
                        refusal = _refusal(
                            message["id"],
                            "TooManyCalls",
                            f"at most {MAX_CALLS_IN_FLIGHT} agent calls may be in flight per sample",
                        )
                        async with write_lock:
                            writer.write(protocol.pack(refusal))
                        continue
                    task = asyncio.create_task(self._answer(sample, message, writer, write_lock))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif op == "span":  # what the agent did inside the sandbox, for traces; untrusted
                    if len(sample.spans) < MAX_SPANS:
                        sample.spans.append(_span(message))
                elif op in ("done", "failed"):
                    sample.final = message
                    sample.final_bytes = length
                    if not sample.answered.done():
                        sample.answered.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, protocol.ProtocolError) as exc:
            if isinstance(exc, protocol.ProtocolError) and sample.final is None:
                sample.final = {"op": "failed", "error": _error("ProtocolError", str(exc))}
                if not sample.answered.done():  # the sample broke its channel: it ends now
                    sample.answered.set_result(None)

    async def _answer(self, sample: _Sample, message: dict, writer, write_lock: asyncio.Lock) -> None:
        reply: dict = {"op": "reply", "id": message["id"]}
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        try:
            if method == "call_llm":
                value = await self.host.call_llm(params)
            elif method == "public_tests":
                value = await self.host.public_tests(
                    str(params.get("task", "")), str(params.get("entry_point", ""))
                )
            else:
                raise LookupError(f"unknown agent method {str(method)[:100]!r}")
            reply.update(ok=True, value=protocol.encode(value))
        except InfrastructureError as exc:
            self._fatal = exc  # the run must stop: every sample in flight is ended now
            self._stopping.set()
            reply = _refusal(message["id"], "InfrastructureError", str(exc))
        except BudgetExceeded as exc:
            sample.stop(str(exc))  # the sample cannot complete: it is ended, and reported as not run
            reply = _refusal(message["id"], "BudgetExceeded", str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the workflow as an AgentError
            reply = _refusal(message["id"], type(exc).__name__, str(exc))
        try:
            frame = protocol.pack(reply)
        except protocol.ProtocolError as exc:  # e.g. an executor reply larger than a frame
            frame = protocol.pack(
                _refusal(message["id"], "ReplyTooLarge", f"the reply cannot be delivered: {exc}")
            )
        async with write_lock:
            writer.write(frame)
            await writer.drain()

    async def run_many(
        self,
        tasks: Iterable[Any],
        concurrency: int = 8,
        timeout_s: float | None = None,
        on_result: Callable[[SampleResult], None] | None = None,
    ) -> list[SampleResult]:
        """Run every task with at most ``concurrency`` samples in flight; results in input order."""
        items = list(tasks)
        results: list[SampleResult | None] = [None] * len(items)

        async def one(index: int) -> None:
            results[index] = await self.run(items[index], index=index, timeout_s=timeout_s)
            if on_result is not None:
                on_result(results[index])

        await run_lanes(len(items), concurrency, one)
        return [r for r in results if r is not None]


async def run_lanes(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Await ``work(i)`` for every i in range(count), at most ``concurrency`` at once.

    The first exception (an infrastructure failure) ends every lane and is raised as itself, not
    wrapped in an exception group.
    """
    queue = iter(range(count))

    async def lane() -> None:
        for index in queue:
            await work(index)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, count))):
                group.create_task(lane())
    except BaseExceptionGroup as failures:
        raise _first_leaf(failures) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


_ERROR_FIELDS = {"type": 100, "message": 2000, "line": 500, "traceback": 4000}


def _sanitise(error: dict) -> dict:
    """The sample wrote this: keep only known fields, as strings of bounded length."""
    clean: dict = {}
    for key, limit in _ERROR_FIELDS.items():
        value = error.get(key)
        clean[key] = None if value is None else str(value)[:limit]
    clean["type"] = clean["type"] or "Error"
    lineno = error.get("lineno")
    clean["lineno"] = lineno if type(lineno) is int else None
    return clean


def _span(message: dict) -> dict:
    """A span a sample reported, reduced to bounded plain fields (the sample may have forged it)."""
    times = [message.get(key) for key in ("start_ns", "end_ns")]
    start, end = (value if type(value) is int and value >= 0 else 0 for value in times)
    return {
        "name": str(message.get("name", "span"))[:100],
        "start_ns": start,
        "end_ns": max(start, end),
        "input": str(message.get("input", ""))[:2000],
        "output": str(message.get("output", ""))[:2000],
    }


def _refusal(call_id: int, type_name: str, message: str) -> dict:
    return {
        "op": "reply",
        "id": call_id,
        "ok": False,
        "error": {"type": type_name, "message": message[:1000]},
    }


def _describe_exit(info: dict) -> dict:
    if info.get("lost"):
        return _error("SandboxError", "the sandbox ended while the sample ran")
    sig = info.get("signal")
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return _error("CPUTimeLimit", "the sample exceeded its CPU-time limit and was killed")
        if sig == signal.SIGXFSZ:
            return _error("FileSizeLimit", "the sample wrote a file larger than its limit and was killed")
        return _error("KilledBySignal", f"the sample process died from {name}")
    return _error(
        "EarlyExit", f"the sample process exited (status {info.get('code')}) without returning an answer"
    )
