"""The server's own settings (the executor, sandbox and tracking store have their own configs)."""

from __future__ import annotations

from dataclasses import dataclass

from w4s.config import Config, option, positive


def _workflow_specs(value) -> bool:
    return all(isinstance(item, str) and all(item.partition("=")[::2]) for item in value)


@dataclass
class ServeConfig(Config):
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = option(
        8000, "TCP port to listen on (0: a free one, logged)", lambda v: 0 <= v <= 65535, "0 to 65535"
    )
    poll_s: float = option(
        30.0,
        "seconds between polls of the registry for champion workflows (a moved champion is served after it)",
        positive,
    )
    api_keys_file: str | None = option(
        None,
        "file of client API keys, one per line (Authorization: Bearer KEY), re-read when it changes; unset: no "
        "auth (a warning)",
    )
    max_body_bytes: int = option(1 << 20, "largest request body accepted, bytes (413 beyond)", positive)
    request_timeout_s: float = option(
        120.0, "wall-clock limit of one request's workflow run (504 beyond; the run is killed)", positive
    )
    max_concurrency: int = option(
        64, "workflow runs at once; more requests get 429 with Retry-After", positive
    )
    workflows: list | None = option(
        None,
        "explicit workflows served besides the registry's champions, as TASK=PATH (a file, or a shipped "
        "example such as cot); one flag per workflow: --workflow gsm8k=cot",
        _workflow_specs,
        "a list of TASK=PATH",
        flag="workflow",
    )

    def workflow_paths(self) -> dict[str, str]:
        """``{task: path}`` of the explicit workflows."""
        return dict(item.split("=", 1) for item in self.workflows or ())
