"""The workflows being served: explicit files, and the registry's champions, polled and hot-swapped.

Each workflow has one warm :class:`~w4s.sandbox.workflow.WorkflowSandbox` reused across requests. When
a champion moves, the new version's sandbox is started first, then swapped in; requests already running
finish on the old one, which is closed when its last request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from w4s.errors import ConfigError, InfrastructureError
from w4s.llm.gateway import Gateway
from w4s.llm.limits import Budget
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.workflow import WorkflowSandbox
from w4s.tracking.registry import WORKFLOW_PREFIX, Reference

log = logging.getLogger(__name__)

MODEL_PREFIX = "w4s/"


@dataclass
class RequestState:
    """What one request's workflow spent at the executor, and whether the executor failed it."""

    budget: Budget = field(default_factory=Budget)
    upstream_error: str | None = None


# The request whose workflow is running: the sandbox's RPC tasks inherit it from the request's task.
CURRENT: ContextVar[RequestState | None] = ContextVar("w4s_serve_request", default=None)


class UpstreamFailed(Exception):
    """The executor failed a workflow's call (reported to the workflow as an error, to the client as 502)."""


class ServeHost:
    """What a served workflow's ``agent`` reaches: the shared gateway, each call charged to its request."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def call_llm(self, request: dict) -> list[str]:
        state = CURRENT.get()
        if state is None:  # a warm-up or a stray call outside a request
            state = RequestState()
        try:
            return await self.gateway.call_llm(request, state.budget)
        except InfrastructureError as exc:
            # Not re-raised as an InfrastructureError: the sandbox would then refuse every later request.
            state.upstream_error = str(exc)
            raise UpstreamFailed("the executor is unavailable") from None

    async def public_tests(self, task: str, entry_point: str) -> list[str]:
        raise LookupError("a served input has no visible tests")


class Slot:
    """One loaded workflow: its sandbox, and the requests using it."""

    def __init__(
        self, task: str, label: str, version: str | None, source: str, host: ServeHost, cfg: SandboxConfig
    ):
        self.task, self.label, self.version, self.source = task, label, version, source
        self.box = WorkflowSandbox(source, host, cfg)
        self.in_flight = 0
        self.retired = False

    @property
    def model(self) -> str:
        return MODEL_PREFIX + self.task

    async def start(self) -> None:
        await self.box.start()
        if self.box.load_error is None:
            # A module that raises when it runs, or defines no solver, compiles: it would fail every
            # request, so it is refused here like one that does not compile (once, in a job).
            error = await self.box.check()
            if error is not None:
                self.box.load_error = error
        if self.box.load_error is not None:
            log.error(
                "%s (%s) does not load: %s",
                self.model,
                self.label,
                f"{self.box.load_error.get('type')}: {self.box.load_error.get('message')}",
            )

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[WorkflowSandbox]:
        self.in_flight += 1
        try:
            yield self.box
        finally:
            self.in_flight -= 1
            if self.retired and self.in_flight == 0:
                await self.box.close()

    async def retire(self) -> None:
        """Close once the requests running on it have finished (now, if none is)."""
        self.retired = True
        if self.in_flight == 0:
            await self.box.close()


class Champions:
    """``w4s/<task>`` -> the loaded :class:`Slot`; explicit workflows and, unless ``registry_uri`` is
    None, every ``w4s-workflow-<task>`` champion, checked every ``poll_s`` seconds."""

    def __init__(
        self,
        gateway: Gateway,
        sandbox: SandboxConfig,
        explicit: dict[str, str],
        registry_uri: str | None,
        poll_s: float,
        on_load=None,
    ):
        self.host = ServeHost(gateway)
        self.sandbox = sandbox
        self.explicit = explicit
        self.registry_uri = registry_uri
        self.poll_s = poll_s
        self.on_load = on_load or (lambda slot: None)
        self.slots: dict[str, Slot] = {}
        self.listed: set[str] = {MODEL_PREFIX + task for task in explicit}
        self.polled = registry_uri is None  # the registry's list is known (after a first poll)
        self.refused: dict[str, str] = {}  # task -> the champion version whose source does not load
        self._registry = None
        self._task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the explicit workflows (a bad one refuses the start) and poll the registry once."""
        from w4s import api

        for task, path in self.explicit.items():
            workflow = api.load_workflow(path, task)  # ConfigError for an unknown task or missing file
            slot = Slot(task, workflow.name, None, workflow.source, self.host, self.sandbox)
            await slot.start()
            if slot.box.load_error is not None:  # a file the operator named that cannot serve: refused
                await slot.box.close()
                error = slot.box.load_error
                raise ConfigError(
                    f"the workflow {path} for {task} does not load ({error.get('type')}: "
                    f"{str(error.get('message'))[:300]}); fix it"
                )
            await self._install(slot)
        if self.registry_uri is not None:
            await self.poll()
            self._task = asyncio.create_task(self._poll_forever(), name="w4s-serve-poll")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for slot in list(self.slots.values()):
            await slot.box.close()
        self.slots.clear()

    @property
    def ready(self) -> bool:
        """Every listed workflow is loaded (and loads without error)."""
        return self.polled and all(
            model in self.slots and self.slots[model].box.load_error is None for model in self.listed
        )

    def get(self, model: str) -> Slot | None:
        return self.slots.get(model)

    # --- the registry ----------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except Exception:  # a poll that fails must not end the polling (logged with its traceback)
                log.exception("polling the registry failed; trying again in %g s", self.poll_s)

    async def poll(self) -> None:
        """Load every champion that is new or moved; drop those whose champion alias is gone."""
        try:
            champions = await asyncio.to_thread(self._champions)
        except Exception as exc:  # noqa: BLE001 - a store that does not answer: keep serving, try again
            log.warning(
                "the registry at %s did not answer (%s: %s); serving what is loaded",
                self.registry_uri,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            return
        listed = {MODEL_PREFIX + task for task in self.explicit}
        for task, version in champions.items():
            model = MODEL_PREFIX + task
            listed.add(model)
            current = self.slots.get(model)
            if task in self.explicit or (current is not None and current.version == version):
                continue
            if self.refused.get(task) == version:  # its source does not load: not tried again
                continue
            await self._load_champion(task, version, current)
        for model in set(self.slots) - listed:
            log.info("%s has no champion any more: no longer served", model)
            await self.slots.pop(model).retire()
        self.listed = listed
        self.polled = True

    async def _load_champion(self, task: str, version: str, current: Slot | None) -> None:
        """Load and swap in ``version`` of ``task``'s champion; one that cannot be served (its stored
        source changed since it was registered, a store that fails, a source that does not load) is
        refused, logged, and the version served before it, if any, stays served."""
        where = f"{WORKFLOW_PREFIX}{task} version {version}"
        slot = None
        try:
            name, source = await asyncio.to_thread(self._source, task, version)
            slot = Slot(task, name, version, source, self.host, self.sandbox)
            await slot.start()
        except Exception as exc:  # noqa: BLE001 - one champion must not stop the others, nor the polls
            if slot is not None:
                await slot.box.close()
            message = str(exc).splitlines()[0][:300] if str(exc) else ""
            if isinstance(exc, ConfigError | InfrastructureError):
                log.error("cannot load %s: %s%s", where, message, _still(current))
            else:
                log.error("cannot load %s: %s: %s%s", where, type(exc).__name__, message, _still(current))
            return
        if slot.box.load_error is not None:  # logged by Slot.start
            await slot.box.close()
            self.refused[task] = version
            log.error("cannot load %s: its source does not load%s", where, _still(current))
            return
        self.refused.pop(task, None)
        await self._install(slot)

    def _champions(self) -> dict[str, str]:
        if self._registry is None:
            from w4s.tracking.registry import Registry

            self._registry = Registry(self.registry_uri)
        found = {}
        for name in self._registry.names(WORKFLOW_PREFIX):
            version = self._registry.champion(name)
            if version is not None:
                found[name.removeprefix(WORKFLOW_PREFIX)] = str(version.version)
        return found

    def _source(self, task: str, version: str) -> tuple[str, str]:
        found, source, _ = self._registry.workflow(Reference(WORKFLOW_PREFIX + task, version=version))
        return f"{found.name}/{found.version}", source

    async def _install(self, slot: Slot) -> None:
        """Swap in ``slot`` (started and loaded by the caller); the one it replaces retires."""
        old = self.slots.get(slot.model)
        self.slots[slot.model] = slot
        log.info(
            "serving %s: %s%s", slot.model, slot.label, "" if old is None else f" (replacing {old.label})"
        )
        self.on_load(slot)
        if old is not None:
            await old.retire()


def _still(current: Slot | None) -> str:
    return "" if current is None else f"; still serving {current.label}"
