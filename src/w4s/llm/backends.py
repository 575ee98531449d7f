"""Backends behind the gateway: an OpenAI-compatible HTTP endpoint (the local model lives in
:mod:`w4s.llm.local`). A backend makes one request; retries, caching and accounting are the
gateway's."""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
from dataclasses import dataclass
from typing import Protocol

import openai

from w4s.errors import InfrastructureError
from w4s.llm.transport import (
    MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    StreamTransport,
    httpx,
    proxy_configured,
    read_json,
)

OPENAI_URL = "https://api.openai.com/v1"


@functools.cache
def _shared_tls_context() -> ssl.SSLContext:
    """Loading CA certificates takes ~30 ms; every client of the process shares one context."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


@dataclass
class Completion:
    """Texts and the usage the backend reported (None where it reported none; the gateway checks
    reported numbers and estimates missing ones)."""

    texts: list[str]
    prompt_tokens: int | None
    completion_tokens: int | None


class Retryable(Exception):
    """A transient failure (429, 5xx, timeout, malformed reply): try again after ``retry_after``."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Unreachable(Exception):
    """The endpoint refuses or drops connections."""


class Rejected(Exception):
    """The endpoint refused this request (400, 422, content filter): the workflow's problem.
    ``billed``: the endpoint did the work (a reply too large to accept), so it is charged."""

    def __init__(self, reason: str, billed: bool = False):
        super().__init__(reason)
        self.billed = billed


class Backend(Protocol):
    model: str
    identity: str  # what answers: endpoint and model (and its revision where known), for cache keys

    async def generate(
        self,
        messages: list[dict],
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        json_mode: bool,
        seed: int | None,
    ) -> Completion: ...

    async def aclose(self) -> None: ...


def _retry_after(response) -> float | None:
    if response is None:
        return None
    headers = response.headers
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def estimate_tokens(text: str) -> int:
    """About four characters per token: for servers that report no usage, and for rate limiting."""
    return max(1, len(text) // 4)


class OpenAIBackend:
    """Any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

    A reply body over ``max_response_bytes`` (on the wire or decoded) fails its request with
    :class:`Rejected`: the workflow sees the error, nothing is retried.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        connections: int = 32,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.model = model
        self.max_response_bytes = max_response_bytes
        self.base_url = base_url.rstrip("/")
        self.identity = f"{self.base_url}|{model}"
        self._official = self.base_url.startswith(OPENAI_URL)
        verify = _shared_tls_context() if self.base_url.startswith("https://") else None
        if proxy_configured(self.base_url):
            # The environment routes this endpoint through a proxy: the client's own transport
            # knows how; ours does not. Replies are still capped, as generate reads them.
            http_client = openai.DefaultAsyncHttpxClient(
                limits=httpx.Limits(max_connections=connections), verify=verify or False
            )
        else:
            http_client = openai.DefaultAsyncHttpxClient(
                transport=StreamTransport(
                    verify, max_connections=connections, max_response_bytes=max_response_bytes
                )
            )
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "unused",
            base_url=self.base_url,
            max_retries=0,
            timeout=timeout_s,
            http_client=http_client,
        )

    async def generate(
        self,
        messages: list[dict],
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        json_mode: bool,
        seed: int | None,
    ) -> Completion:
        kwargs: dict = {"model": self.model, "messages": messages, "n": n, "temperature": temperature}
        kwargs["max_completion_tokens" if self._official else "max_tokens"] = max_tokens
        if seed is not None:
            kwargs["seed"] = seed
        if json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        try:
            # The client's generic POST: same transport, errors and headers as
            # chat.completions.create, without its per-request parameter and model transforms,
            # which cost more CPU than everything else on the host at high request rates. The body
            # is left unread by the client (stream=True) and read here under the cap.
            raw = await self.client.post(
                "/chat/completions", cast_to=httpx.Response, body=kwargs, stream=True
            )
            response = await read_json(raw, self.max_response_bytes)
        except ResponseTooLarge:
            raise self._too_large() from None
        except openai.RateLimitError as exc:
            raise Retryable("rate limited (429)", _retry_after(exc.response)) from None
        except openai.APITimeoutError:
            raise Retryable("the request timed out") from None
        except openai.APIConnectionError as exc:
            if isinstance(exc.__cause__, ResponseTooLarge):  # capped by our transport
                raise self._too_large() from None
            raise Unreachable(str(exc.__cause__ or exc)) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise InfrastructureError(
                f"the executor at {self.base_url} rejected the API key ({exc.status_code}); "
                "set W4S_EXECUTOR_API_KEY or OPENAI_API_KEY"
            ) from None
        except openai.NotFoundError:
            raise InfrastructureError(
                f"model {self.model!r} was not found at {self.base_url}; check --executor-model and the base URL"
            ) from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            raise Rejected(f"the executor refused the request ({exc.status_code}): {_brief(exc)}") from None
        except openai.APIStatusError as exc:
            raise Retryable(f"server error ({exc.status_code})", _retry_after(exc.response)) from None
        except (openai.APIResponseValidationError, ValueError, httpx.DecodingError) as exc:
            raise Retryable(f"malformed reply: {type(exc).__name__}") from None
        # Failures while the body streams in (only the client's own transport streams it).
        except httpx.TimeoutException:
            raise Retryable("the request timed out") from None
        except httpx.RequestError as exc:
            raise Unreachable(str(exc)) from None
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list) or not choices:
            raise Retryable("malformed reply: no choices")
        try:
            ordered = sorted(choices, key=lambda c: c.get("index") or 0)
            texts = [str(c["message"].get("content") or "") for c in ordered]
        except (AttributeError, TypeError, KeyError):
            raise Retryable("malformed reply: choices without messages") from None
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        return Completion(texts, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def _too_large(self) -> Rejected:
        return Rejected(
            f"the executor's reply is over {self.max_response_bytes} bytes; ask for fewer or shorter "
            "completions (or raise the backend's max_response_bytes)",
            billed=True,
        )

    async def aclose(self) -> None:
        await self.client.close()


def _brief(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    message = message or getattr(exc, "message", None) or str(exc)
    return str(message).splitlines()[0][:300]
