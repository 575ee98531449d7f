"""The core install is light: evaluating and optimizing against an API needs no torch, transformers,
peft, trl, accelerate, gguf or matplotlib, at import time or at install time; and code that needs an
extra says which, in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
import venv
from pathlib import Path

import pytest

from tests.test_evaluation import evaluate_args, math_rules
from w4s.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "gguf", "matplotlib")
CORE_MODULES = ("w4s", "w4s.evaluation", "w4s.optimizer.loop", "w4s.sandbox", "w4s.llm.gateway", "w4s.cli")

# The extras' own modules, as a core install lacks them.
EXTRA_MODULES = {
    "mlflow": ("mlflow", "boto3"),
    "kfp": ("kfp", "kfp_server_api"),
    "serve": ("fastapi", "starlette", "uvicorn", "prometheus_client"),
}


def blocker(modules: tuple[str, ...]) -> str:
    """Code to put in front of a subprocess's own: importing any of ``modules`` (or a submodule)
    raises ImportError."""
    return textwrap.dedent(
        f"""
        import sys

        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {modules!r}:
                    raise ImportError(f"blocked for this test: {{name}}", name=name)
                return None

        sys.meta_path.insert(0, _Block())
        """
    )


def run_blocked(
    code: str, env: dict | None = None, blocked: tuple[str, ...] = HEAVY
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", blocker(blocked) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_core_modules_import_without_the_heavy_stacks():
    done = run_blocked(
        f"""
        import importlib
        for name in {CORE_MODULES!r}:
            importlib.import_module(name)
        from w4s.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        heavy = sorted(m for m in sys.modules if m.partition(".")[0] in {HEAVY!r})
        assert not heavy, heavy
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluate" in done.stdout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["evaluate", "cot", "--task", "gsm8k", "--executor-model", "local:smollm2-135m"], "local"),
        (["models", "pull", "smollm2-135m", "--force"], "local"),
        (["train", "--trajectories", "t.jsonl", "--base-model", "m", "--output", "{tmp}/out"], "train"),
        (["registry", "show", "--tracking-uri", "http://127.0.0.1:9"], "mlflow"),
        (["pipeline", "compile", "rlao-training", "--out", "{tmp}/p.yaml"], "kfp"),
        (["pipeline", "run", "workflow-optimization", "--local"], "kfp"),
        (["serve"], "serve"),
    ],
    ids=["local-model", "models-pull", "train", "mlflow", "pipeline-compile", "pipeline-run", "serve"],
)
def test_a_missing_extra_is_one_line_naming_it(argv, extra, tmp_path, data_dir):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = run_blocked(
        f"""
        from w4s.cli import main
        sys.exit(main({argv!r}))
        """,
        env={"W4S_CACHE_DIR": str(tmp_path / "cache"), "W4S_DATA_DIR": str(data_dir)},
        blocked=(*HEAVY, *EXTRA_MODULES.get(extra, ())),
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("w4s: error:")]
    assert len(errors) == 1 and f"pip install 'w4s[{extra}]'" in errors[0], done.stderr[-3000:]
    assert f"the '{extra}' extra" in errors[0] and "Traceback" not in done.stderr


@pytest.fixture
def venv_dir():
    """A folder for a fresh venv, outside /tmp: the sandbox mounts its own /tmp, so an interpreter that
    lives under /tmp cannot run workflows (the sandbox cannot see it)."""
    path = Path(tempfile.mkdtemp(prefix="w4s-core-venv-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_core_install_evaluates_without_torch(tmp_path, venv_dir, data_dir, executor_server):
    """``pip install w4s`` (no extras) into a fresh venv: no torch there, and `w4s evaluate` against an
    OpenAI-compatible server scores a shipped workflow and writes its JSON."""
    env_dir = venv_dir / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    def in_venv(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,  # not the checkout: w4s must come from the venv's own install
            env={**os.environ, "OPENAI_API_KEY": "sk-test", "PYTHONPATH": ""},
        )

    for name in HEAVY:
        absent = in_venv(python, "-c", f"import {name}")
        assert absent.returncode != 0 and "ModuleNotFoundError" in absent.stderr, name

    imported = in_venv(
        python,
        "-c",
        f"import importlib, w4s; [importlib.import_module(m) for m in {CORE_MODULES!r}]; print(w4s.__file__)",
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert str(env_dir) in imported.stdout  # the installed copy, not src/ of the checkout

    helped = in_venv(str(env_dir / "bin" / "w4s"), "--help")
    assert helped.returncode == 0 and "evaluate" in helped.stdout, helped.stderr[-3000:]

    samples = get_task("gsm8k").load("validation", data_dir)
    executor_server.script(rules=math_rules(samples))
    evaluated = in_venv(
        str(env_dir / "bin" / "w4s"),
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "2",
        "--data-dir",
        str(data_dir),
        *evaluate_args(executor_server, tmp_path),
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["task"], result["split"], len(result["samples"])) == ("gsm8k", "validation", 2)
    assert result["score"] == 1.0 and result["usage"]["llm_calls"] >= 2

    library = in_venv(
        python,
        "-c",
        textwrap.dedent(
            f"""
            import json, sys
            import w4s
            result = w4s.evaluate(
                "cot",
                "gsm8k",
                w4s.EvaluationConfig(limit=2),
                w4s.ExecutorConfig(base_url={executor_server.url!r}, cache_path="off", backoff_s=0.01),
                data_dir={str(data_dir)!r},
            )
            assert "torch" not in sys.modules
            print(json.dumps(result.to_dict()))
            """
        ),
    )
    assert library.returncode == 0, library.stderr[-3000:]
    result = json.loads(library.stdout.strip().splitlines()[-1])
    assert result["score"] == 1.0 and len(result["samples"]) == 2


def test_the_local_extra_brings_a_transformers_that_takes_dtype():
    """w4s.llm.models.load passes ``dtype=`` to ``from_pretrained``, which transformers reads from 4.56
    on (before, it was ``torch_dtype``, and ``dtype`` never set the weights' dtype): the 'local' extra
    must not allow an older one."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("local", "train"):
        (spec,) = [r for r in extras[extra] if re.match(r"transformers\b", r)]
        floor = re.search(r">=\s*([0-9.]+)", spec)
        assert floor, f"{extra}: {spec} has no lower bound"
        assert tuple(int(p) for p in floor.group(1).split(".")[:2]) >= (4, 56), f"{extra}: {spec}"
