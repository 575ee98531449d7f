"""The optimizer's outputs beside the trajectories: report.json, report.md and curve.png.

Everything here works on data (an :class:`~w4s.optimizer.result.OptimizeResult` and trajectory
records), never on the optimizer itself.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from w4s.optimizer.result import CandidateSummary, OptimizeResult, TurnRecord
from w4s.optimizer.run_folder import atomic_write

log = logging.getLogger(__name__)


def turn_records(records: list[dict]) -> list[TurnRecord]:
    """The turns of committed trajectory records, in order."""
    turns: dict[int, dict] = {}
    for record in records:
        entry = turns.setdefault(record["turn"], {"turn": record["turn"], "candidates": [], "selected": None})
        entry["candidates"].append(
            CandidateSummary(
                record["candidate"],
                record["valid_score"],
                record["reward"],
                len(record.get("repairs", [])),
                record["error"],
            )
        )
        if record["selected"]:
            entry["selected"] = record["candidate"]
        entry["best_after"] = record.get("best_after")
    return [TurnRecord(**turns[t]) for t in sorted(turns)]


def can_plot() -> bool:
    """curve.png needs matplotlib (the 'plot' extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_report(result: OptimizeResult) -> None:
    """report.json (the result itself), report.md and, where matplotlib is installed, curve.png."""
    report = result.to_dict()
    atomic_write(Path(result.paths.report_json), json.dumps(report, indent=2) + "\n")
    atomic_write(Path(result.paths.report_md), _markdown(report))
    if result.paths.curve_png is not None:
        _plot(report, Path(result.paths.curve_png))
    else:
        log.info("no curve.png: matplotlib is not installed (pip install 'w4s[plot]')")


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _markdown(report: dict) -> str:
    best = report["best"]
    sandbox = report["sandbox"]
    lines = [
        f"# w4s optimize: {report['task']}",
        "",
        f"Meta-agent `{report['meta_model']}`, executor `{report['executor']}`. Sandbox: "
        + (
            f"{sandbox.get('backend')}, "
            + (
                f"DEGRADED ({', '.join(sandbox['degraded'])})"
                if sandbox.get("degraded")
                else "full isolation"
            )
            if sandbox
            else "not started"
        )
        + ".",
        "",
        f"**Best workflow**: {best['name']} — validation {_pct(best['valid_score'])}, "
        f"test {_pct(best['test_score'])} ({best['test_samples'] or 0} test samples, scored once)."
        if best is not None
        else "**Best workflow**: none (the run stopped before any workflow was scored).",
        "",
        "## Baselines (validation)",
        "",
        "| workflow | validation |",
        "|---|---|",
        *[f"| {name} | {_pct(score)} |" for name, score in report["baselines"].items()],
        "",
        "## Turns",
        "",
        "| turn | candidates (validation, reward) | selected | best so far |",
        "|---|---|---|---|",
    ]
    for turn in report["turns"]:
        cells = ", ".join(
            f"{_pct(c['valid_score'])} ({c['reward']:+.2f})"
            if c["valid_score"] is not None
            else f"failed ({c['reward']:+.2f})"
            for c in turn["candidates"]
        )
        lines.append(f"| {turn['turn']} | {cells} | {turn['selected']} | {_pct(turn['best_after'])} |")
    usage = report["usage"]
    lines += [
        "",
        "## Usage",
        "",
        f"Executor: {usage['executor']['llm_calls']} calls ({usage['executor']['cached_calls']} cached), "
        f"{usage['executor']['prompt_tokens'] + usage['executor']['completion_tokens']} tokens, "
        f"${usage['executor']['cost_usd']:.4f}. Meta-agent: {usage['meta']['llm_calls']} calls, "
        f"${usage['meta']['cost_usd']:.4f}.",
    ]
    if report["stopped"]:
        lines += ["", f"Stopped early: {report['stopped']}."]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    for turn in report["turns"]:
        scores = [c["valid_score"] for c in turn["candidates"] if c["valid_score"] is not None]
        axes.scatter(
            [turn["turn"]] * len(scores),
            scores,
            color="tab:blue",
            alpha=0.5,
            s=18,
            label="candidate" if turn is report["turns"][0] else None,
        )
    if report["turns"]:
        axes.step(
            [t["turn"] for t in report["turns"]],
            [t["best_after"] for t in report["turns"]],
            where="post",
            color="tab:red",
            label="best so far",
        )
    for index, (name, score) in enumerate(report["baselines"].items()):
        axes.axhline(
            score, linestyle="--", linewidth=1, color=f"C{(index + 2) % 10}", label=f"baseline {name}"
        )
    axes.set_xlabel("turn")
    axes.set_ylabel("validation accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"w4s optimize: {report['task']}")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)
