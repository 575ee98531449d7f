"""Take the MLflow UI screenshots in docs/ (``docs/img/mlflow-run.png``, ``docs/img/mlflow-trace.png``).

Starts a real ``mlflow server`` (tests/servers) and the scripted OpenAI-compatible executor, runs
``w4s evaluate`` through the CLI with every sample traced, then photographs the run's page and one
trace with headless Chromium (Debian's ``chromium``). Usage: python scripts/mlflow_screenshots.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ScriptedServer  # noqa: E402
from tests.servers.mlflow_server import MlflowServer  # noqa: E402

OUT = REPO / "docs" / "img"
LIMIT = 12


def shoot(url: str, path: Path, size: str = "1600,1000") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("headless Chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="w4s-chromium-") as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
             f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip


def replies(data_dir: str) -> list[dict]:
    """Scripted replies for the photographed samples: right for most, wrong for a few."""
    import re

    from w4s.evaluation import select
    from w4s.tasks import get_task

    task = get_task("gsm8k")
    rules = []
    for n, sample in enumerate(select(task.load("test", data_dir), LIMIT, 0)):
        answer = f"{sample.expected:g}" if n % 4 else f"{sample.expected + 1:g}"
        reply = f"Let me work through it step by step, then check the arithmetic. The answer is {answer}."
        rules.append({"match": re.escape(sample.prompt[:60]), "reply": reply})
    return rules


def main() -> None:
    data_dir = os.environ.get("W4S_DATA_DIR") or str(REPO.parent / "shared" / "datasets")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="w4s-shots-") as scratch:
        root = Path(scratch)
        mlflow = MlflowServer.start(root / "mlflow")
        executor = ScriptedServer(
            {"rules": replies(data_dir), "default": "The answer is 0.", "latency_ms": 50}
        )
        try:
            env = {
                **os.environ, "W4S_HOME": str(root / "home"), "W4S_EXECUTOR_API_KEY": "k",
                "MLFLOW_TRACKING_URI": mlflow.url, "W4S_DATA_DIR": data_dir,
            }  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "w4s.cli", "evaluate", "cot_sc", "--task", "gsm8k", "--split", "test",
                 "--limit", str(LIMIT), "--trace-sample-rate", "1", "--executor-base-url", executor.url,
                 "--executor-cache-path", "off",
                 "--json", str(root / "evaluation.json")],
                check=True, env=env, cwd=REPO,
            )  # fmt: skip
            from mlflow import MlflowClient

            client = MlflowClient(mlflow.url)
            experiment = client.get_experiment_by_name("w4s/gsm8k")
            run = client.search_runs([experiment.experiment_id])[0]
            traces = client.search_traces(locations=[experiment.experiment_id], max_results=1)
            base = f"{mlflow.url}/#/experiments/{experiment.experiment_id}"
            shoot(f"{base}/runs/{run.info.run_id}", OUT / "mlflow-run.png")
            trace_id = traces[0].info.trace_id
            shoot(
                f"{base}/traces?selectedEvaluationId={trace_id}&selectedTraceId={trace_id}",
                OUT / "mlflow-trace.png",
            )
            print(json.dumps({"run": run.info.run_id, "trace": trace_id}))
        finally:
            executor.stop()
            mlflow.stop()


if __name__ == "__main__":
    main()
