"""Stage configuration: dataclasses with help text and validation, from YAML and the command line.

Each stage declares one dataclass that subclasses :class:`Config` and whose fields use :func:`option`.
:func:`load` builds it from a YAML file (or a section of one), then applies ``key=value`` overrides
(or parsed CLI flags), then validates it, so the defaults live in exactly one place: the dataclass.
``to_dict``/``from_dict`` give the same settings as a versioned, JSON-safe dict (a Kubeflow
component's parameters, an MLflow params dict).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

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


class Config:
    """Base of every stage's configuration dataclass: versioned, JSON-safe ``to_dict``/``from_dict``."""

    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict:
        """``{"version": N, field: value, ...}``: only JSON types (the fields' own types are)."""
        return {
            "version": self.VERSION,
            **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)},
        }

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Inverse of :meth:`to_dict`, validated; a dict from a newer w4s or with unknown keys is refused."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} must be a mapping of its fields, got {type(data).__name__}")
        values = dict(data)
        check_version(cls, values.pop("version", cls.VERSION))
        _refuse_unknown(cls, values)
        cfg = cls(**values)
        validate(cfg)
        return cfg


def check_version(cls: type, version: object) -> None:
    """A versioned dict (a config, a result) must come from this w4s or an older one."""
    newest = getattr(cls, "VERSION", 1)
    if type(version) is not int or not 1 <= version <= newest:
        raise ConfigError(
            f"{cls.__name__} version {version!r} is not one this w4s reads (1 to {newest}); upgrade w4s"
        )


def read_record(path: str | Path, file_name: str, what: str) -> dict:
    """A JSON object written by w4s (``path``, or ``path``/``file_name`` for a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({type(exc).__name__}); is it {what}?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not {what}")
    return data


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _refuse_unknown(cls: type, values: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )


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


def read_yaml(path: str | Path) -> dict:
    """A YAML file that must hold a mapping; one-line ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return loaded


def sections(path: str | Path | None, names: tuple[str, ...]) -> dict[str, dict]:
    """A command's config file: a YAML mapping of sections (``evaluation:``, ``executor:`` ...), one
    per configuration the command takes; each section holds that dataclass's fields."""
    if path is None:
        return {}
    loaded = read_yaml(path)
    unknown = sorted(set(loaded) - set(names))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown section(s) {', '.join(map(str, unknown))}; this command reads "
            f"{', '.join(names)} (each a mapping of that configuration's fields)"
        )
    for name, section in loaded.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"config file {path}: section {name} must be a mapping of its fields")
    return {name: section or {} for name, section in loaded.items()}


def load(
    cls: type[T],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from a YAML file of its fields (``path``) or already-read ``values`` (a section of
    a command's config file), then ``overrides`` (None: not set); raise ConfigError on bad input."""
    merged: dict[str, Any] = {}
    if path is not None:
        merged.update(read_yaml(path))
    if values is not None:
        if not isinstance(values, Mapping):
            raise ConfigError(f"the {cls.__name__} settings must be a mapping of its fields")
        merged.update(values)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    _refuse_unknown(cls, merged)
    cfg = cls(**merged)
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


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, prefix: str = "", only: tuple[str, ...] | None = None
) -> None:
    """Add one ``--flag`` per field (``only``: these fields; default None: unset flags do not
    override the config file)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
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


def overrides_from(
    namespace: argparse.Namespace, cls: type, prefix: str = "", only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The flags :func:`add_arguments` added for ``cls`` (``only``: the same fields it was given)."""
    return {
        f.name: getattr(namespace, prefix.replace("-", "_") + f.name, None)
        for f in dataclasses.fields(cls)
        if only is None or f.name in only
    }
