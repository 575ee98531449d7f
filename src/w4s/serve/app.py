"""The ASGI app: an OpenAI-compatible chat completions API over the served workflows.

``create_app(serve, executor, sandbox, tracking)`` returns a Starlette app whose lifespan opens the
executor's gateway and loads the workflows (see :mod:`w4s.serve.champions`); run it with uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from w4s.errors import ConfigError
from w4s.llm.config import EndpointConfig
from w4s.llm.gateway import Gateway
from w4s.sandbox.config import SandboxConfig
from w4s.serve.champions import CURRENT, Champions, RequestState, Slot
from w4s.serve.config import ServeConfig
from w4s.serve.metrics import Metrics
from w4s.tracking.store import TrackingConfig, resolve_uri

log = logging.getLogger(__name__)

# Error types of a run that the sandbox, not the workflow's own code, ended.
SANDBOX_FAILURES = frozenset(
    {"SandboxError", "KilledBySignal", "CPUTimeLimit", "FileSizeLimit", "EarlyExit", "ProtocolError"}
)
_TIMEOUT_GRACE_S = 5.0  # beyond the sandbox's own kill of a run that is too long


class ApiError(Exception):
    """An OpenAI-shaped error reply: ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, kind: str, code: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": None}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def read_api_keys(path: str | None) -> list[bytes]:
    """The client keys of ``path`` (one per line; blank lines and ``#`` comments skipped)."""
    if path is None:
        return []
    try:  # utf-8-sig: a key file saved with a byte-order mark still matches its first key
        lines = Path(path).expanduser().read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the API keys file {path} ({type(exc).__name__}); pass a readable file"
        ) from None
    keys = [line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ConfigError(f"the API keys file {path} holds no key; write one key per line")
    return keys


class ApiKeys:
    """The client keys of ``--api-keys-file``, re-read when the file changes (a rotated Kubernetes
    secret, a revoked key) at most once every ``check_s`` seconds. A file that becomes unreadable or
    empty keeps the keys read before (said in the log): it must not open the server to every client."""

    def __init__(self, path: str | None, check_s: float = 1.0):
        self.path = path
        self.check_s = check_s
        self._digests = [_digest(key) for key in read_api_keys(path)]
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple | None:
        try:
            found = os.stat(Path(self.path).expanduser())
        except OSError:
            return None
        return found.st_ino, found.st_dev, found.st_mtime_ns, found.st_size

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = read_api_keys(self.path)
        except ConfigError as exc:
            log.error("%s; still accepting the %d keys read before", exc, len(self._digests))
            return
        self._digests = [_digest(key) for key in keys]
        log.info("re-read the API keys file %s: %d keys", self.path, len(keys))

    def allows(self, token: bytes) -> bool:
        """Whether ``token`` is a key, in a time that depends neither on it nor on which key it is."""
        self.refresh()
        given = _digest(token)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(given, digest)
        return found


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def settle_heap() -> None:
    """Collect, then freeze what is left (the modules, the executor's client, MLflow once the registry
    is read): the collector then no longer walks those hundreds of thousands of objects, so a full
    collection under load takes about a millisecond instead of stalling every request in flight for
    tens of milliseconds (measured: 12-18 ms, twice per 2,000 requests, before this)."""
    gc.collect()
    gc.freeze()


def answer_text(answer) -> str:
    """A workflow's answer as the reply's content: text as it is, other plain data as JSON."""
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


def create_app(
    serve: ServeConfig | None = None,
    executor: EndpointConfig | None = None,
    sandbox: SandboxConfig | None = None,
    tracking: TrackingConfig | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """The app; it answers at once and loads its workflows in the background (``/readyz`` says when
    they are). ``on_fatal(exc)`` is called when they cannot be loaded at all (a sandbox that does not
    start): the caller stops the server; without it ``/healthz`` answers 503 from then on."""
    serve = serve or ServeConfig()
    executor = executor or EndpointConfig()
    if executor.cache_path is None:  # a server answers live; a response cache is asked for by name
        executor = replace(executor, cache_path="off")
    sandbox = sandbox or SandboxConfig()
    if sandbox.warm_jobs is None:
        sandbox = replace(sandbox, warm_jobs=min(serve.max_concurrency, 16))
    tracking = tracking or TrackingConfig()
    keys = ApiKeys(serve.api_keys_file) if serve.api_keys_file is not None else None
    if keys is None:
        log.warning("no --api-keys-file: every client is served without authentication")
    registry_uri = None if tracking.no_tracking else resolve_uri(tracking)
    metrics = Metrics()
    state: dict = {"in_flight": 0}

    def loaded(slot: Slot) -> None:
        metrics.loaded.labels(slot.model).set(float(slot.version or 0))
        metrics.reloads.labels(slot.model).inc()

    async def load(champions: Champions) -> None:
        try:
            await champions.start()
        except Exception as exc:  # noqa: BLE001 - the server cannot serve: said once, then stopped
            state["failed"] = True
            log.error("cannot load the workflows: %s: %s", type(exc).__name__, exc)
            if on_fatal is not None:
                on_fatal(exc)
            return
        log.info(
            "serving %s%s",
            ", ".join(sorted(champions.slots)) or "no workflow yet",
            ""
            if registry_uri is None
            else f" (champions polled every {serve.poll_s:g} s from {registry_uri})",
        )
        settle_heap()
        while not champions.polled:  # the registry has not answered yet: MLflow is not fully loaded
            await asyncio.sleep(serve.poll_s)
        if registry_uri is not None:
            settle_heap()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            gateway = Gateway(executor)
        except ConfigError as exc:  # no key for the executor: the server stops with that one line
            if on_fatal is None:
                raise
            state["failed"] = True
            on_fatal(exc)
            yield
            return
        async with gateway:
            champions = Champions(
                gateway, sandbox, serve.workflow_paths(), registry_uri, serve.poll_s, loaded
            )
            state["champions"] = champions
            # Loaded in the background: /healthz answers (and /readyz says 503) while sandboxes start
            # and the registry is first read, which can take longer than a liveness probe waits.
            loader = asyncio.create_task(load(champions), name="w4s-serve-load")
            try:
                yield
            finally:
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
                await champions.close()

    def authorize(request: Request) -> None:
        if keys is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # Headers are decoded as latin-1: encoded back, the token is the bytes the client sent (a key
        # with non-ASCII characters, sent as UTF-8, matches the file's UTF-8).
        token_bytes = token.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not keys.allows(token_bytes):
            raise ApiError(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")

    async def read_body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > serve.max_body_bytes:
            raise ApiError(413, f"the request body exceeds {serve.max_body_bytes} bytes", "invalid_request_error",
                           "request_too_large")  # fmt: skip
        chunks, size = [], 0
        try:  # a body sent slowly holds its connection no longer than a workflow run may take
            async with asyncio.timeout(serve.request_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > serve.max_body_bytes:
                        raise ApiError(413, f"the request body exceeds {serve.max_body_bytes} bytes",
                                       "invalid_request_error", "request_too_large")  # fmt: skip
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(
                408, "the request body was not received in time", "invalid_request_error", "request_timeout"
            ) from None
        except ClientDisconnect:  # nobody to answer: counted, not logged as a server error
            raise ApiError(
                400,
                "the client left before its body was sent",
                "invalid_request_error",
                "client_disconnected",
            ) from None
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise ApiError(
                400, "the request body is not JSON", "invalid_request_error", "invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(
                400, "the request body must be a JSON object", "invalid_request_error", "invalid_json"
            )
        return body

    def task_input(body: dict) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(
                400, "messages must be a non-empty list", "invalid_request_error", "invalid_messages"
            )
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # content parts: the text ones
                    texts = [
                        p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"
                    ]
                    content = "".join(texts) if all(isinstance(t, str) for t in texts) else None
                if isinstance(content, str) and content:
                    try:
                        content.encode("utf-8")
                    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800): not text to pass on
                        break
                    return content
                break
        raise ApiError(
            400, "the last user message must have text content", "invalid_request_error", "invalid_messages"
        )

    async def run_workflow(slot: Slot, text: str) -> tuple[str, RequestState]:
        request_state = RequestState()
        token = CURRENT.set(request_state)  # the sandbox's RPC tasks for this run inherit it
        try:
            async with slot.use() as box:
                try:
                    result = await asyncio.wait_for(
                        box.run(text, timeout_s=serve.request_timeout_s),
                        serve.request_timeout_s + _TIMEOUT_GRACE_S,
                    )
                except TimeoutError:
                    raise ApiError(504, "the workflow did not finish in time", "timeout", "timeout") from None
                except Exception as exc:  # noqa: BLE001 - the sandbox failed (not the workflow): logged, not leaked
                    log.error("%s: the sandbox failed: %s: %s", slot.model, type(exc).__name__, exc)
                    metrics.sandbox_failures.labels(slot.model).inc()
                    raise ApiError(
                        500, "the workflow could not be run", "server_error", "sandbox_error"
                    ) from None
        finally:
            CURRENT.reset(token)
            usage = request_state.budget.usage
            metrics.tokens.labels(slot.model, "prompt").inc(usage.prompt_tokens)
            metrics.tokens.labels(slot.model, "completion").inc(usage.completion_tokens)
            metrics.cost.labels(slot.model).inc(usage.cost_usd)
            metrics.llm_calls.labels(slot.model).inc(usage.llm_calls)
        if result.error is None:
            return answer_text(result.answer), request_state
        named = result.error.get("type")
        # The workflow names its exception types: only a plain name reaches the client.
        kind = named if isinstance(named, str) and named.isidentifier() and len(named) <= 64 else "Error"
        if request_state.upstream_error is not None:
            log.warning("%s: the executor failed: %s", slot.model, request_state.upstream_error)
            raise ApiError(502, "the executor is unavailable", "upstream_error", "executor_unavailable")
        if kind == "TimeoutError":
            raise ApiError(504, "the workflow did not finish in time", "timeout", "timeout")
        if kind in SANDBOX_FAILURES:
            metrics.sandbox_failures.labels(slot.model).inc()
        log.info(
            "%s: the workflow failed: %s: %s",
            slot.model,
            str(named)[:300],
            str(result.error.get("message"))[:300],
        )
        raise ApiError(500, f"the workflow failed ({kind})", "server_error", "workflow_error")

    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        model = "-"
        try:
            authorize(request)
            body = await read_body(request)
            model = body.get("model") if isinstance(body.get("model"), str) else "-"
            champions: Champions = state["champions"]
            slot = champions.get(model)
            if slot is None and (not champions.polled or model in champions.listed):
                raise ApiError(
                    503, "the model is loading; retry shortly", "server_error", "model_loading",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
            if slot is None:
                raise ApiError(
                    404, f"the model {str(body.get('model'))[:100]!r} is not served; see GET /v1/models",
                    "invalid_request_error", "model_not_found",
                )  # fmt: skip
            text = task_input(body)
            if body.get("stream") is not None and type(body["stream"]) is not bool:  # "false" is truthy
                raise ApiError(400, "stream must be true or false", "invalid_request_error", "invalid_stream")
            if state["in_flight"] >= serve.max_concurrency:
                raise ApiError(
                    429, "too many requests in flight; retry shortly", "rate_limit_error", "rate_limit_exceeded",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
            state["in_flight"] += 1
            metrics.in_flight.inc()
            try:
                content, request_state = await run_workflow(slot, text)
            finally:
                state["in_flight"] -= 1
                metrics.in_flight.dec()
        except ApiError as exc:
            label = model if model in state["champions"].slots else "-"
            metrics.requests.labels(label, str(exc.status)).inc()
            metrics.errors.labels(exc.code).inc()
            return exc.response()
        metrics.requests.labels(model, "200").inc()
        metrics.latency.labels(model).observe(time.perf_counter() - started)
        usage = request_state.budget.usage
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        tokens = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        if body.get("stream"):
            return StreamingResponse(
                _sse(reply_id, created, model, content, tokens, body), media_type="text/event-stream"
            )
        return JSONResponse(
            {
                "id": reply_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": tokens,
            }
        )

    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as exc:
            return exc.response()
        slots = sorted(state["champions"].slots.values(), key=lambda s: s.model)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": s.model, "object": "model", "created": 0, "owned_by": "w4s", "workflow": s.label}
                    for s in slots
                ],
            }
        )

    async def healthz(request: Request) -> Response:
        if state.get("failed"):
            return JSONResponse({"status": "failed"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        champions: Champions | None = state.get("champions")
        if champions is None or not champions.ready:
            waiting = (
                [] if champions is None else sorted(m for m in champions.listed if m not in champions.slots)
            )
            return JSONResponse({"status": "loading", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ready", "models": sorted(champions.slots)})

    async def prometheus(request: Request) -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    async def not_found(request: Request, exc) -> Response:
        return ApiError(404, "no such endpoint", "invalid_request_error", "not_found").response()

    async def server_error(request: Request, exc) -> Response:
        log.error("unhandled error: %s: %s", type(exc).__name__, exc)
        return ApiError(500, "internal error", "server_error", "internal_error").response()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 500: server_error},
    )
    app.state.metrics = metrics
    return app


async def _sse(reply_id: str, created: int, model: str, content: str, usage: dict, body: dict):
    """The whole answer as one content chunk, then the end (with usage when the client asked), then [DONE]."""

    def event(delta: dict, finish: str | None, **more) -> str:
        chunk = {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **more,
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": content}, None)
    yield event({}, "stop")
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [], "usage": usage}  # fmt: skip
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
