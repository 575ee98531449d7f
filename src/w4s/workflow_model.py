"""The MLflow pyfunc of a registered workflow (models-from-code: MLflow stores this file with the
model and runs it when the model is loaded; the w4s package must be installed where it loads).

``predict`` runs the workflow on its inputs through the sandbox and the executor gateway, and returns
one answer per input. Inputs: a list of task texts, a pandas DataFrame with a ``prompt`` column, or a
dict ``{"prompt": [...]}``. The executor is the one the workflow was scored with (the model config's
``executor``: model name, base URL and settings, never a key); override any field at load time,
``mlflow.pyfunc.load_model(uri, model_config={"executor": {"model": ..., "base_url": ...}})``.
The API key comes from the environment variables the endpoint names (``W4S_EXECUTOR_API_KEY`` or
``OPENAI_API_KEY`` by default), where the model is served.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

# MLflow asks for type hints on predict to validate inputs itself; w4s takes lists, frames and dicts.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class WorkflowModel(PythonModel):
        """A w4s workflow as an MLflow model."""

        def load_context(self, context) -> None:
            from w4s.errors import ConfigError
            from w4s.llm.config import EndpointConfig
            from w4s.sandbox.config import SandboxConfig

            config = dict(context.model_config or {})
            source = Path(context.artifacts["workflow"]).read_text()
            expected = config.get("source_sha256")
            if expected and hashlib.sha256(source.encode()).hexdigest() != expected:
                raise ConfigError(
                    f"the workflow source in this model does not match its sha256 {expected}; the stored "
                    "artifact was changed: register the workflow again"
                )
            self.source = source
            self.task = config["task"]
            self.name = config.get("name", "workflow")
            self.executor = EndpointConfig.from_dict({**(config.get("executor") or {}), "version": 1})
            self.sandbox = SandboxConfig.from_dict({**(config.get("sandbox") or {}), "version": 1})
            self.concurrency = int(config.get("concurrency", 8))

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list:
            from w4s import api

            prompts = _prompts(model_input)
            answers = api.run(
                api.Workflow(self.name, self.source),
                self.task,
                prompts,
                self.executor,
                self.sandbox,
                concurrency=self.concurrency,
            )
            return [{"answer": a.answer, "error": a.error} for a in answers]


def _prompts(model_input: Any) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", model_input.get("inputs"))
        return [value] if isinstance(value, str) else [str(v) for v in value]
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        column = "prompt" if "prompt" in columns else columns[0]
        return [str(v) for v in model_input[column].tolist()]
    return [str(v) for v in model_input]


mlflow.models.set_model(WorkflowModel())
