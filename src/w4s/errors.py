"""The two tiers of failure in w4s.

``InfrastructureError``: something the run depends on is broken (executor unreachable, MLflow down,
the sandbox cannot start). It stops the run with a one-line message that says what to do.

``WorkflowError``: the code a meta-agent wrote failed (syntax error, exception, timeout, limit).
It never stops a run: it becomes a score of 0 and feedback text for the meta-agent.

``ConfigError`` is a user error in arguments or configuration; it is reported like an
infrastructure failure (one line, non-zero exit) but names the setting to fix.

``BudgetExceeded`` is neither: the run's budget cannot cover the next request, so the request is
not made. What it interrupts is marked as not run (never scored as the workflow's failure), and the
run stops cleanly.
"""

from __future__ import annotations


class W4SError(Exception):
    """Base of every error w4s raises on purpose."""


class InfrastructureError(W4SError):
    """A dependency of the run failed; stop and tell the user what to fix."""


class ConfigError(W4SError):
    """Bad arguments or configuration; the message names the setting and what is allowed."""


class SandboxUnavailable(InfrastructureError):
    """The sandbox could not be started at all."""


class BudgetExceeded(W4SError):
    """The budget is spent (or cannot cover the next request's worst case): the request was not made."""


class WorkflowError(W4SError):
    """Workflow code failed; carries what the meta-agent needs to see."""

    def __init__(self, type_name: str, message: str, line: str | None = None, lineno: int | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.line = line
        self.lineno = lineno
