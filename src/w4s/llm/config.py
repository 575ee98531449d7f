"""Configuration of an LLM endpoint as the gateway uses it: the executor's, or the meta-agent's.

The public API names it for where it goes (``w4s.ExecutorConfig`` and ``w4s.MetaAgentConfig`` are this
class); a pipeline configures both the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from w4s.config import Config, non_negative, option, positive
from w4s.llm.models import DTYPES


@dataclass
class EndpointConfig(Config):
    model: str = option(
        "gpt-4o-mini",
        "model name at the endpoint, or local:PATH for a local Hugging Face folder or GGUF file, "
        "or local:smollm2-135m for the pulled default model",
    )
    base_url: str | None = option(
        None, "OpenAI-compatible base URL (default: $OPENAI_BASE_URL, else https://api.openai.com/v1)"
    )
    api_key_env: str | None = option(
        None,
        "environment variables to read the API key from, first set wins (default: "
        "W4S_EXECUTOR_API_KEY,OPENAI_API_KEY for the executor; W4S_META_API_KEY,OPENAI_API_KEY for the meta-agent)",
    )
    timeout_s: float = option(120.0, "per-request timeout in seconds", positive)
    max_retries: int = option(
        6,
        "retries of a request on 429, 5xx, timeouts and malformed replies",
        non_negative,
    )
    connect_retries: int = option(
        2,
        "retries when the endpoint refuses connections (then the run stops)",
        non_negative,
    )
    backoff_s: float = option(0.5, "first backoff delay; doubles per retry, with jitter", positive)
    backoff_max_s: float = option(
        30.0, "longest backoff delay (a server's Retry-After may ask for more)", positive
    )
    concurrency: int = option(32, "requests in flight at once, across all samples", positive)
    requests_per_minute: int = option(0, "client-side request rate limit (0: none)", non_negative)
    tokens_per_minute: int = option(0, "client-side token rate limit (0: none)", non_negative)
    cache_path: str | None = option(
        None, "SQLite response cache (default: ~/.cache/w4s/llm-cache.sqlite; 'off' disables it)"
    )
    prices_path: str | None = option(None, "YAML price table {model: {input: USD/1M tokens, output: USD/1M}}")
    seed: int | None = option(
        0, "seed sent with every request (a caller may derive its own per request) and part of the cache key"
    )
    max_completion_tokens: int = option(
        2048,
        "longest completion a request may ask for (a workflow may ask for less, never more); also the default",
        positive,
    )
    max_n: int = option(
        32,
        "most completions one request may ask for (a workflow's num_of_response)",
        lambda v: 1 <= v <= 128,
        "between 1 and 128",
    )
    model_revision: str | None = option(
        None,
        "version of the served model (e.g. its registry version): part of the cache key, so a model redeployed "
        "under the same name never answers from its predecessor's cache (local models: found automatically)",
    )
    max_response_bytes: int = option(
        64 << 20,
        "largest reply body accepted from the endpoint, bytes (on the wire and decoded); a larger one fails "
        "its request",
        lambda v: v >= 1 << 16,
        "at least 65536",
    )
    local_batch_size: int = option(
        8,
        "local backend: most sequences generated in one call (a request for n completions counts n; "
        "one asking for more runs alone)",
        positive,
    )
    local_dtype: str = option(
        "auto",
        "local backend: weights' dtype; auto is bfloat16 on a GPU that supports it, else float16 on a GPU, "
        "else float32 on the CPU",
        lambda v: v in DTYPES,
        f"must be one of {', '.join(DTYPES)}",
    )


# The same settings, named for where they go in the public API (w4s.evaluate(..., executor=...),
# w4s.optimize(..., meta=..., executor=...)).
ExecutorConfig = EndpointConfig
MetaAgentConfig = EndpointConfig
