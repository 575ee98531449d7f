"""Example workflows shipped as package data: the meta-agent's starting points and the baselines.

Layout: ``<family>/<name>.py`` with family ``math``, ``reading`` or ``code`` (a task's family).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from w4s.errors import ConfigError

FAMILIES = ("math", "reading", "code")


def examples(family: str) -> dict[str, str]:
    """{name: source} of the example workflows for a task family, sorted by name."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown task family {family!r}; use one of {', '.join(FAMILIES)}")
    folder = resources.files(__package__) / family
    return {
        entry.name.removesuffix(".py"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".py") and not entry.name.startswith("_")
    }


def resolve(reference: str, family: str) -> tuple[str, str]:
    """(label, source) of a workflow given as a file path or as the name of a shipped example."""
    path = Path(reference).expanduser()
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    shipped = examples(family)
    if reference in shipped:
        return f"{family}/{reference}", shipped[reference]
    raise ConfigError(
        f"workflow {reference!r} is neither a file nor a shipped {family} example ({', '.join(shipped)})"
    )
