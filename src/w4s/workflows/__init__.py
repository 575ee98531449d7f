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
    """(label, source) of a workflow given as a file path or as the name of a shipped example of
    ``family`` (``cot``, or ``family/cot`` as its label reads)."""
    path = Path(reference).expanduser()
    if path.is_file():
        return str(path), read_source(path)
    shipped = examples(family)
    name = reference.removeprefix(f"{family}/")
    if name in shipped:
        return f"{family}/{name}", shipped[name]
    raise ConfigError(
        f"workflow {reference!r} is neither a file nor a shipped {family} example ({', '.join(shipped)})"
    )


def read_source(path: Path) -> str:
    """The text of a workflow file: UTF-8 Python source (a BOM is allowed); anything else is a
    one-line ConfigError naming the file."""
    path = path.absolute()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"workflow file {path} cannot be read ({type(exc).__name__}: {exc.strerror or exc}); "
            "check its permissions"
        ) from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(
            f"workflow file {path} holds a NUL byte (byte {nul}): it is a binary file, not Python source; "
            "pass a .py file that defines solver(agent, task)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"workflow file {path} is not UTF-8 text (line {line}, byte {exc.start}); "
            "save it as UTF-8 Python source that defines solver(agent, task)"
        ) from None
