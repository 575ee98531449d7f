"""The seam between evaluation and whatever runs workflow code.

Evaluation and the optimizer use a :class:`WorkflowRunner` and nothing else of a sandbox: open it
with a workflow's source and an :class:`AgentHost` (what the workflow's ``agent`` reaches), run
samples, read the isolation it applied, close it. :class:`w4s.sandbox.workflow.WorkflowSandbox` is the
local runner (a zygote under :class:`~w4s.sandbox.isolation.Bubblewrap` or, degraded,
:class:`~w4s.sandbox.isolation.ProcessIsolation`); a runner of another kind (a Kubernetes pod under a
gVisor ``runtimeClass``) implements the same protocol, and nothing else changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from w4s.sandbox.config import SandboxConfig


class AgentHost(Protocol):
    """Answers what a workflow's ``agent`` asks the host (an evaluation's gateway and task)."""

    async def call_llm(self, request: dict) -> list[str]: ...

    async def public_tests(self, task: str, entry_point: str) -> list[str]: ...


@dataclass
class SampleResult:
    """What one sample produced: an answer (plain data) or an error for the meta-agent's feedback."""

    index: int
    answer: Any = None
    error: dict | None = None
    output: str = ""
    wall_seconds: float = 0.0
    llm_calls: int = 0
    # Why the host stopped serving the sample (its budget is spent): then its result is not the workflow's.
    stopped: str | None = None
    answer_bytes: int = 0  # size of the answer as it crossed (large answers are scored off the event loop)
    spans: list[dict] = field(
        default_factory=list
    )  # what the agent reported doing (execute_code), for traces
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class WorkflowRunner(Protocol):
    """Runs one workflow's ``solver(agent, task)`` on samples, isolated; used as
    ``async with runner: await runner.run(task)``. ``run`` never raises for what the workflow does (a
    failure is the result's ``error``), only for infrastructure failures."""

    @property
    def isolation(self) -> dict:
        """The isolation applied: ``backend``, ``seccomp``, ``private_scratch``, ``job_uids``, ``degraded``."""
        ...

    async def __aenter__(self) -> WorkflowRunner: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def run(self, task: Any, index: int = 0) -> SampleResult: ...


RunnerFactory = Callable[[str, AgentHost, SandboxConfig], WorkflowRunner]
"""Makes the runner of one workflow (its source) for an evaluation: ``WorkflowSandbox`` by default."""


class CallableHost:
    """An :class:`AgentHost` from plain callables (sync or async); for tests and simple uses."""

    def __init__(
        self,
        call_llm: Callable[[dict], list[str] | Awaitable[list[str]]],
        public_tests: Callable[[str, str], list[str] | Awaitable[list[str]]] | None = None,
    ):
        self._call_llm = call_llm
        self._public_tests = public_tests

    async def call_llm(self, request: dict) -> list[str]:
        result = self._call_llm(request)
        return await result if inspect.isawaitable(result) else result

    async def public_tests(self, task: str, entry_point: str) -> list[str]:
        if self._public_tests is None:
            raise LookupError("this task has no public tests")
        result = self._public_tests(task, entry_point)
        return await result if inspect.isawaitable(result) else result
