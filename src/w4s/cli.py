"""The `w4s` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from w4s import __version__
from w4s.errors import ConfigError, InfrastructureError, W4SError

log = logging.getLogger("w4s")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, console=_stderr_console())],
    )


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _sandbox_config(args):
    from w4s import config
    from w4s.sandbox.config import SandboxConfig

    return config.load(SandboxConfig, args.config, config.overrides_from(args, SandboxConfig, "sandbox-"))


def _write_json(path: str | None, payload) -> None:
    if path:
        target = Path(path).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(payload, indent=2) + "\n")
        log.info("wrote %s", target)


def cmd_sandbox_doctor(args) -> int:
    from rich.table import Table

    from w4s.sandbox import doctor

    cfg = _sandbox_config(args)
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
