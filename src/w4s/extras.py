"""Optional dependency groups (the package's extras) and the one-line error when one is missing.

The core install evaluates and optimizes against an OpenAI-compatible API; in-process models, training,
MLflow, Kubeflow, serving and plots each need an extra (``pip install 'w4s[local]'`` and so on). Code
that needs one calls :func:`require` where it starts, then imports as usual.
"""

from __future__ import annotations

import importlib

from w4s.errors import ConfigError

USES = {
    "local": "local models need",
    "train": "w4s train needs",
    "mlflow": "MLflow tracking needs",
    "kfp": "Kubeflow pipelines need",
    "serve": "w4s serve needs",
    "plot": "plots need",
}


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Import ``modules``, or raise a one-line :class:`ConfigError` naming the extra that installs them.

    ``what`` says who needs it, verb included ("w4s models pull needs"; default: the extra's usual use).
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = exc.name or name
            raise ConfigError(
                f"{what or USES.get(extra, 'this needs')} the '{extra}' extra (no module {missing!r}): "
                f"pip install 'w4s[{extra}]'"
            ) from None
