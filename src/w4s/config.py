"""Stage configuration: dataclasses with help text and validation, from YAML and the command line.

Each stage declares one dataclass whose fields use :func:`option`. :func:`load` builds it from a
YAML file, then applies ``key=value`` overrides (or parsed CLI flags), then validates it, so the
defaults live in exactly one place: the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from w4s.errors import ConfigError

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    check: Callable[[Any], bool] | None = None,
    why: str = "",
    flag: str | None = None,
) -> Any:
    """A config field: ``check(value)`` must hold, else ``why`` tells the user what is allowed.

    ``flag`` names its command-line flag where the generated ``--<prefix><field>`` would read badly.
    """
    if check is positive and not why:
        why = "must be a finite number greater than 0"
    if check is non_negative and not why:
        why = "must be a finite number, 0 or more"
    return dataclasses.field(
        default=default, metadata={"help": help, "check": check, "why": why, "flag": flag}
    )


def positive(value) -> bool:
    """Greater than 0 and finite (``inf`` is not a limit, and NaN compares false to everything)."""
    return value > 0 and math.isfinite(value)


def non_negative(value) -> bool:
    return value >= 0 and math.isfinite(value)


def validate(cfg) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        expected = hints[f.name]
        origin = typing.get_origin(expected)
        allowed = typing.get_args(expected) if origin in (typing.Union, types.UnionType) else (expected,)
        allowed_types = tuple(typing.get_origin(a) or a for a in allowed)
        if float in allowed_types and type(value) is int:
            value = float(value)
            setattr(cfg, f.name, value)
        if not isinstance(value, allowed_types) or (type(value) is bool and bool not in allowed_types):
            names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed_types)
            raise ConfigError(f"{type(cfg).__name__}.{f.name} must be {names}, got {value!r}")
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name}={value!r} is invalid: {f.metadata.get('why') or f.metadata['help']}"
            )


def load(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from an optional YAML file and overrides; raise ConfigError on bad input."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of {cls.__name__} fields")
        values.update(loaded)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    cfg = cls(**values)
    validate(cfg)
    return cfg


def _parse_flag(expected):
    """Strings stay as typed (so 'off' or 'no' are not booleans); numbers parse as numbers (YAML would
    read 1e-4 as a string); everything else as a YAML scalar or list."""
    origin = typing.get_origin(expected)
    allowed = typing.get_args(expected) if origin in (typing.Union, types.UnionType) else (expected,)
    if str in allowed:
        return str

    def parse(text: str):
        if text.strip().lower() in ("null", "none", "~"):
            return None
        for kind in (int, float):
            if kind in allowed:
                try:
                    return kind(text)
                except ValueError:
                    continue
        return yaml.safe_load(text)

    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--flag`` per field (default None: unset flags do not override YAML)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + (f.metadata.get("flag") or prefix + f.name.replace("_", "-"))
        if hints[f.name] is bool:  # `--flag` alone means true; `--flag false` turns it off
            parser.add_argument(
                flag,
                dest=prefix.replace("-", "_") + f.name,
                type=yaml.safe_load,
                nargs="?",
                const=True,
                default=None,
                help=f"{f.metadata.get('help', '')} (default: {f.default})",
            )
            continue
        parser.add_argument(
            flag,
            dest=prefix.replace("-", "_") + f.name,
            type=_parse_flag(hints[f.name]),
            default=None,
            help=f"{f.metadata.get('help', '')} (default: {f.default})",
        )


def overrides_from(namespace: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    return {
        f.name: getattr(namespace, prefix.replace("-", "_") + f.name, None) for f in dataclasses.fields(cls)
    }
