"""Getting a workflow out of the meta-agent's reply, and checking it before anything runs it."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_workflow(reply: str) -> str | None:
    """The last fenced code block of ``reply`` that defines ``solver``; None if there is none."""
    for block in reversed(_FENCE.findall(reply or "")):
        if re.search(r"^\s*def\s+solver\s*\(", block, re.MULTILINE):
            return block.strip("\n") + "\n"
    return None


def static_check(source: str) -> str | None:
    """Why ``source`` cannot be a workflow, or None: it must parse and define ``solver(agent, task)``."""
    try:
        tree = ast.parse(source, "workflow.py")
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        return f"SyntaxError: {exc.msg} (line {exc.lineno}: `{line}`)"
    solvers = [
        n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "solver"
    ]
    if not solvers:
        return "the workflow defines no top-level function `solver(agent, task)`"
    solver = solvers[-1]
    if isinstance(solver, ast.AsyncFunctionDef):
        return "`solver` must be a plain function, not `async def`"
    args = solver.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    required = len(positional) - len(args.defaults)
    if (
        len(positional) < 2
        or required > 2
        or args.kwonlyargs
        and len(args.kw_defaults) != len(args.kwonlyargs)
    ):
        return f"`solver` must take exactly (agent, task); it takes ({', '.join(positional)})"
    return None
