"""The two tiers of failure in w4s.

``InfrastructureError``: something the run depends on is broken (executor unreachable, MLflow down,
the sandbox cannot start). It stops the run with a one-line message that says what to do.

A workflow failure (the code a meta-agent wrote raised, timed out or hit a limit) is not an
exception of the host: it is data, a sample's ``error``, which scores 0 and becomes feedback for the
meta-agent. It never stops a run.

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
