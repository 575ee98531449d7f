"""What the components share: stage configurations from component parameters, the meta-agent a
stage starts from, and pictures as HTML artifacts.

A component's parameters are the handful of fields a pipeline sets per run (model, task, turns...)
plus one ``*_config`` dict per stage configuration for the rest; both become the stage's config
dataclass here, validated the same way as the command line's (a bad key is one line naming it).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from pathlib import Path
from typing import Any, TypeVar

from w4s.config import Config
from w4s.errors import ConfigError
from w4s.llm.config import EndpointConfig
from w4s.tracking.store import TrackingConfig

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Config)


def config(cls: type[C], overrides: dict | None, **fields: Any) -> C:
    """``cls`` from a component's ``*_config`` dict, then its explicit parameters (those not None or
    empty: a pipeline leaves them empty to keep the stage's default)."""
    values = dict(overrides or {})
    values.update({key: value for key, value in fields.items() if value not in (None, "")})
    # KFP carries a dict parameter as a protobuf Struct, whose numbers are all doubles: 1 arrives as 1.0
    for field in dataclasses.fields(cls):
        value = values.get(field.name)
        kind = str(field.type)
        if isinstance(value, float) and value.is_integer() and "int" in kind and "float" not in kind:
            values[field.name] = int(value)
    try:
        return cls.from_dict(values)
    except TypeError as exc:  # a value of the wrong kind for a field
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def endpoint(model: str, base_url: str = "", overrides: dict | None = None, **fields: Any) -> EndpointConfig:
    return config(EndpointConfig, overrides, model=model, base_url=base_url or None, **fields)


def tracking(uri: str = "", register: bool = False) -> TrackingConfig:
    """Tracking for a stage: the store named, else ``MLFLOW_TRACKING_URI``, else the embedded one."""
    return TrackingConfig(tracking_uri=uri or None, register=register)


def starting_meta_agent(meta_model: str, base_model: str, tracking_uri: str = "") -> tuple[str, str]:
    """The meta-agent a collection starts from, and why: ``meta_model`` (a registry reference such
    as ``mlflow:w4s-meta-agent@champion``, ``local:PATH`` or an endpoint's model name); a reference
    that names nothing yet (the first run of a pipeline) falls back to ``base_model``."""
    from w4s.api import registry_of
    from w4s.tracking.registry import is_reference, parse_reference

    if not is_reference(meta_model):
        return meta_model, "as given"
    registry = registry_of(tracking(tracking_uri))
    reference = parse_reference(meta_model)
    try:
        registry.version(reference)
    except ConfigError as exc:
        if not base_model:
            raise
        log.info("%s: %s; starting from the base model %s", meta_model, exc, base_model)
        return local_model(base_model), f"{meta_model} does not exist yet: the base model"
    return meta_model, "the registered meta-agent"


def local_model(model: str) -> str:
    """``local:...`` for a model folder, a pulled model's name, or a Hugging Face id (which the local
    backend loads from the hub where it can)."""
    if model.startswith("local:") or model.startswith("mlflow:"):
        return model
    return f"local:{model}"


def picture_html(png: str | Path, title: str) -> str:
    """A PNG as a self-contained HTML page (KFP's UI shows HTML artifacts inline)."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h3>{title}</h3><img alt='{title}' src='data:image/png;base64,{data}'></body></html>\n"
    )


def component_logging() -> None:
    """Plain timestamped log lines, as the CLI writes them without a terminal (a pod has none)."""
    import os
    import sys

    root = logging.getLogger()
    if not root.handlers:  # KFP's executor has its own handler: use it, never a second one
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "filelock", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
