"""Perf suite for MLflow tracking and the registry, each against its named baseline in one run.

1. Tracking overhead, through the CLI a user runs: ``w4s evaluate`` (math/cot on gsm8k test, 800
   samples, concurrency 32, cache off, the scripted OpenAI-compatible server in its own process)
   recording to a local ``mlflow server`` (SQLite, one worker, artifacts proxied to a folder) at the
   default trace sample rate, against the same command with ``--no-tracking``; alternating, each
   ``--repeats`` times; wall time and peak RSS of the whole process. At two executor latencies: 200 ms
   (an API answering fast) and 0 (the fixed cost laid bare). Target: <= 1.05x wall time.
2. Registering a 135M checkpoint (the pulled smollm2-135m folder) as a ``w4s-meta-agent`` version
   with its files on S3 (``weed mini``), against a plain boto3 upload of the same folder to the same
   bucket (``upload_file`` per file, boto3's default transfer settings, as ``aws s3 cp --recursive``):
   seconds and MB/s. Both the client writing to S3 itself (an experiment whose artifact location is
   the bucket) and the server proxying artifacts to it. Target: <= 1.2x.

Usage: python perf/tracking_speed.py [--repeats 5] [--samples 800]
Writes perf/results/tracking_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ScriptedServer  # noqa: E402
from tests.servers.mlflow_server import MlflowServer  # noqa: E402
from tests.servers.s3_server import S3Server  # noqa: E402


def timed_cli(args: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one ``w4s`` process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "w4s.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"w4s {' '.join(args)} failed:\n{stderr[-3000:]}")
    if "--no-tracking" not in args and "MLflow run" not in stderr:
        raise SystemExit(f"the run was not recorded:\n{stderr[-3000:]}")
    return elapsed, usage.ru_maxrss // 1024


def tracking_overhead(args, data_dir: str, root: Path) -> dict:
    mlflow = MlflowServer.start(root / "mlflow")
    executor = ScriptedServer({"default": "The answer is 42.", "latency_ms": 0})
    results = {}
    try:
        base = ["evaluate", "cot", "--task", "gsm8k", "--split", "test", "--limit", str(args.samples)]
        base += ["--concurrency", "32", "--executor-concurrency", "32", "--executor-cache-path", "off"]
        base += ["--executor-base-url", executor.url]
        env = {"W4S_DATA_DIR": data_dir, "W4S_EXECUTOR_API_KEY": "k", "MLFLOW_TRACKING_URI": mlflow.url}
        timed_cli([*base, "--limit", "8"], env)  # warm the page cache and the server's first request
        for latency in (200, 0):
            executor.script(default="The answer is 42.", latency_ms=latency)
            off, on = [], []
            for _ in range(args.repeats):
                off.append(timed_cli([*base, "--no-tracking"], env))
                on.append(timed_cli(base, env))
            off_s, on_s = statistics.median(t for t, _ in off), statistics.median(t for t, _ in on)
            results[f"latency_{latency}ms"] = {
                "no_tracking_seconds": [round(t, 3) for t, _ in off],
                "tracking_seconds": [round(t, 3) for t, _ in on],
                "ratio_median": round(on_s / off_s, 3),
                "no_tracking_peak_rss_mib": max(m for _, m in off),
                "tracking_peak_rss_mib": max(m for _, m in on),
                "target": "<= 1.05",
            }
    finally:
        executor.stop()
        mlflow.stop()
    return results


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def boto3_upload(s3: S3Server, folder: Path, prefix: str) -> float:
    client = s3.client()
    started = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return time.perf_counter() - started


def registration(args, root: Path) -> dict:
    from w4s.llm import models
    from w4s.tracking.registry import Registry

    folder = models.model_dir("smollm2-135m")
    if not (folder / "config.json").is_file():
        models.pull("smollm2-135m")
    size = folder_bytes(folder)
    s3 = S3Server.start(root / "s3")
    os.environ.update(s3.env)  # the client's keys and endpoint (direct writes)
    proxied = MlflowServer.start(
        root / "mlflow-s3", artifacts_destination=s3.artifacts_uri("proxied"), env=s3.env
    )
    direct = MlflowServer.start(root / "mlflow-direct")
    results: dict = {"model": "smollm2-135m", "megabytes": round(size / 1e6, 1)}
    try:
        direct_registry = Registry(direct.url)
        direct_registry.client.create_experiment(
            "w4s/meta-agent", artifact_location=s3.artifacts_uri("direct")
        )
        proxied_registry = Registry(proxied.url)
        runs: dict[str, list[float]] = {"boto3": [], "w4s_direct": [], "w4s_proxied": []}
        for n in range(args.repeats):
            runs["boto3"].append(boto3_upload(s3, folder, f"plain/{n}"))
            for key, registry in (("w4s_direct", direct_registry), ("w4s_proxied", proxied_registry)):
                started = time.perf_counter()
                registry.register_meta_agent(
                    folder, base_model="smollm2-135m", temperature=0.4, lora=False, data_runs=[]
                )
                runs[key].append(time.perf_counter() - started)
        baseline = statistics.median(runs["boto3"])
        for key, seconds in runs.items():
            median = statistics.median(seconds)
            results[key] = {
                "seconds": [round(s, 3) for s in seconds],
                "median": round(median, 3),
                "megabytes_per_second": round(size / 1e6 / median, 1),
                "ratio_to_boto3": round(median / baseline, 3),
            }
        results["target"] = "<= 1.2"
    finally:
        proxied.stop()
        direct.stop()
        s3.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("W4S_DATA_DIR") or str(REPO.parent / "shared" / "datasets")
    )
    parser.add_argument("--samples", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["tracking", "registry"], help="run one part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="w4s-perf-") as scratch:
        root = Path(scratch)
        os.environ["W4S_HOME"] = str(root / "home")  # never the user's store
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
        if args.only in (None, "tracking"):
            result["tracking"] = tracking_overhead(args, args.data_dir, root)
        if args.only in (None, "registry"):
            result["registration"] = registration(args, root)
    out = HERE / "results" / "tracking_speed.json"
    out.parent.mkdir(exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() and args.only else {}
    out.write_text(json.dumps({**previous, **result}, indent=2) + "\n")
    for name, row in result.get("tracking", {}).items():
        print(
            f"w4s evaluate, {args.samples} samples, executor {name.replace('_', ' ')}: tracking "
            f"{statistics.median(row['tracking_seconds']):.2f} s vs --no-tracking "
            f"{statistics.median(row['no_tracking_seconds']):.2f} s -> {row['ratio_median']:.3f}x (target <= 1.05); "
            f"peak RSS {row['tracking_peak_rss_mib']} vs {row['no_tracking_peak_rss_mib']} MiB"
        )
    reg = result.get("registration")
    if reg:
        for key in ("boto3", "w4s_direct", "w4s_proxied"):
            row = reg[key]
            print(
                f"{reg['model']} ({reg['megabytes']} MB) {key}: {row['median']:.2f} s, "
                f"{row['megabytes_per_second']} MB/s, {row['ratio_to_boto3']:.3f}x boto3 (target <= 1.2)"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
