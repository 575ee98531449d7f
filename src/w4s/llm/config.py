"""Configuration of an LLM endpoint as the gateway uses it (executor or meta-agent)."""

from __future__ import annotations

from dataclasses import dataclass

from w4s.config import option, positive


def _non_negative(value) -> bool:
    return value >= 0


@dataclass
class GatewayConfig:
    model: str = option(
        "gpt-4o-mini",
        "model name at the endpoint, or local:PATH for a local Hugging Face folder or GGUF file, "
        "or local:smollm2-135m for the pulled default model",
    )
    base_url: str | None = option(
        None, "OpenAI-compatible base URL (default: $OPENAI_BASE_URL, else https://api.openai.com/v1)"
    )
    api_key_env: str = option(
        "W4S_EXECUTOR_API_KEY,OPENAI_API_KEY",
        "environment variables to read the API key from, first set wins",
    )
    timeout_s: float = option(120.0, "per-request timeout in seconds", positive)
    max_retries: int = option(
        6,
        "retries of a request on 429, 5xx, timeouts and malformed replies",
        _non_negative,
        "must be 0 or more",
    )
    connect_retries: int = option(
        2,
        "retries when the endpoint refuses connections (then the run stops)",
        _non_negative,
        "must be 0 or more",
    )
    backoff_s: float = option(0.5, "first backoff delay; doubles per retry, with jitter", positive)
    backoff_max_s: float = option(
        30.0, "longest backoff delay (a server's Retry-After may ask for more)", positive
    )
    concurrency: int = option(32, "requests in flight at once, across all samples", positive)
    requests_per_minute: int = option(
        0, "client-side request rate limit (0: none)", _non_negative, "must be 0 or more"
    )
    tokens_per_minute: int = option(
        0, "client-side token rate limit (0: none)", _non_negative, "must be 0 or more"
    )
    cache_path: str | None = option(
        None, "SQLite response cache (default: ~/.cache/w4s/llm-cache.sqlite; 'off' disables it)"
    )
    prices_path: str | None = option(None, "YAML price table {model: {input: USD/1M tokens, output: USD/1M}}")
    seed: int | None = option(0, "seed sent with every request and part of the cache key (None: unseeded)")
    max_completion_tokens: int = option(
        2048, "default completion length when the workflow sets none", positive
    )
    local_batch_size: int = option(8, "local backend: requests generated together", positive)
