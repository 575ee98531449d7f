"""The meta-agent's prompts, kept as package data templates (``prompts/*.md``)."""

from __future__ import annotations

import functools
import string
from importlib import resources


@functools.cache
def template(name: str) -> string.Template:
    text = (resources.files(__package__) / "prompts" / f"{name}.md").read_text(encoding="utf-8")
    return string.Template(text)


def system() -> str:
    return template("system").substitute()


def initial(description: str, examples: list[tuple[str, str, float]]) -> str:
    """``examples``: (name, source, validation accuracy)."""
    blocks = [
        f"## {name} (validation accuracy {100 * score:.1f}%)\n```python\n{source.strip()}\n```"
        for name, source, score in examples
    ]
    return template("initial").substitute(description=description, examples="\n\n".join(blocks))


def feedback(text: str, best: float) -> str:
    return template("feedback").substitute(feedback=text, best=f"{100 * best:.1f}%")


def repair(description: str, workflow: str, error: str, line: str | None) -> str:
    where = f"Failing line: `{line}`\n" if line else ""
    return template("repair").substitute(
        description=description, workflow=workflow.strip(), error=error, line=where
    )


def no_code(description: str) -> str:
    return template("no_code").substitute(description=description)
