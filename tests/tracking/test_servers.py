"""The servers the tracking tests run against are real: runs, params, metrics and artifacts land where
each fixture says (the SQLite or PostgreSQL store, a local folder or the S3 bucket)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import botocore.exceptions
import pytest
from mlflow import MlflowClient

from tests.servers.mlflow_server import MlflowServer, ServerStartError, http_ok, unique_name


def log_run(client: MlflowClient, experiment_id: str, tmp_path) -> str:
    """One finished run with a param, a metric (two steps) and an artifact; returns its id."""
    run = client.create_run(experiment_id, run_name="smoke")
    run_id = run.info.run_id
    client.log_param(run_id, "turns", "3")
    client.log_metric(run_id, "score", 0.25, step=0)
    client.log_metric(run_id, "score", 0.75, step=1)
    artifact = tmp_path / "best_workflow.py"
    artifact.write_text(f"# run {run_id}\ndef solver(agent, task):\n    return {{'answer': task}}\n")
    client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id)
    return run_id


def check_run(client: MlflowClient, run_id: str, tmp_path) -> None:
    """What ``log_run`` logged reads back through ``client``."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"turns": "3"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "score")] == [(0, 0.25), (1, 0.75)]
    assert [f.path for f in client.list_artifacts(run_id)] == ["best_workflow.py"]
    downloaded = client.download_artifacts(run_id, "best_workflow.py", str(tmp_path / "down"))
    assert Path(downloaded).read_text().startswith(f"# run {run_id}\n")


def test_mlflow_server_records_a_run_with_local_artifacts(mlflow_server, tmp_path):
    client = mlflow_server.client()
    experiment_id = client.create_experiment(unique_name("w4s/smoke"))
    run_id = log_run(client, experiment_id, tmp_path)
    check_run(MlflowClient(tracking_uri=mlflow_server.url), run_id, tmp_path)
    # proxied: the client saw only mlflow-artifacts:/ URIs; the server wrote the file into its folder
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    on_disk = mlflow_server.root / "artifacts" / experiment_id / run_id / "artifacts" / "best_workflow.py"
    assert on_disk.read_text().startswith(f"# run {run_id}\n")
    # and the run is a row of the server's SQLite store
    with contextlib.closing(sqlite3.connect(mlflow_server.root / "mlflow.db")) as db:
        assert db.execute("select value from params where run_uuid = ?", (run_id,)).fetchall() == [("3",)]


def test_a_client_finds_the_server_through_its_env(mlflow_server, use_env):
    use_env(mlflow_server)
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.url
    name = unique_name("w4s/env")
    MlflowClient().create_experiment(name)  # no URI given: MLFLOW_TRACKING_URI
    assert mlflow_server.client().get_experiment_by_name(name) is not None


def test_mlflow_server_s3_puts_artifacts_in_the_bucket(mlflow_server_s3, s3_server, tmp_path):
    assert (
        "AWS_SECRET_ACCESS_KEY" not in os.environ
        or os.environ["AWS_SECRET_ACCESS_KEY"] != s3_server.secret_key
    )
    client = mlflow_server_s3.client()
    experiment_id = client.create_experiment(unique_name("w4s/smoke-s3"))
    run_id = log_run(client, experiment_id, tmp_path)  # the client holds no S3 keys: the server proxies
    check_run(client, run_id, tmp_path)
    key = f"mlflow/{experiment_id}/{run_id}/artifacts/best_workflow.py"
    assert s3_server.keys(f"mlflow/{experiment_id}/") == [key]
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    assert body.decode().startswith(f"# run {run_id}\n")
    assert not (mlflow_server_s3.root / "artifacts").exists()


def test_a_client_can_write_artifacts_to_s3_itself(mlflow_server_s3, s3_server, use_env, tmp_path):
    """An experiment whose artifact location is an s3:// URI: the client's own boto3 writes there."""
    use_env(s3_server)
    client = mlflow_server_s3.client()
    prefix = f"direct/{unique_name('exp')}"
    experiment_id = client.create_experiment(
        unique_name("w4s/direct"), artifact_location=s3_server.artifacts_uri(prefix)
    )
    run_id = log_run(client, experiment_id, tmp_path)
    check_run(client, run_id, tmp_path)
    assert s3_server.keys(prefix + "/") == [f"{prefix}/{run_id}/artifacts/best_workflow.py"]


def test_s3_server_enforces_its_credentials(s3_server):
    assert (
        s3_server.client().head_bucket(Bucket=s3_server.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    )
    for access_key, secret_key, code in [
        (s3_server.access_key, "not-the-secret", "SignatureDoesNotMatch"),
        ("someone-else", s3_server.secret_key, "InvalidAccessKeyId"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            s3_server.client(access_key=access_key, secret_key=secret_key).list_objects_v2(
                Bucket=s3_server.bucket
            )
        assert refused.value.response["Error"]["Code"] == code


def test_embedded_sqlite_store_needs_no_server(mlflow_embedded, tmp_path):
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["W4S_HOME"] == str(mlflow_embedded.home)
    client = mlflow_embedded.client()
    experiment_id = client.create_experiment(
        unique_name("w4s/embedded"), artifact_location=(mlflow_embedded.artifact_root / "smoke").as_uri()
    )
    run_id = log_run(client, experiment_id, tmp_path)
    check_run(MlflowClient(tracking_uri=mlflow_embedded.tracking_uri), run_id, tmp_path)
    assert (mlflow_embedded.artifact_root / "smoke" / run_id / "artifacts" / "best_workflow.py").is_file()
    assert (mlflow_embedded.home / "mlflow" / "mlflow.db").is_file()


def children(pid: int) -> list[int]:
    """The PIDs of the processes ``pid`` started (Linux: /proc)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever inherited it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stop_ends_the_whole_process_group(start_mlflow_server):
    server = start_mlflow_server()
    assert http_ok(f"{server.url}/health")
    workers = children(server.pid)
    assert workers  # `mlflow server` runs uvicorn as a child process
    server.stop()
    assert server.proc.returncode is not None
    assert not [pid for pid in workers if alive(pid)]
    assert not http_ok(f"{server.url}/health", timeout_s=1)
    server.stop()  # idempotent


def test_a_server_that_cannot_start_says_why(tmp_path):
    with pytest.raises(ServerStartError) as failed:
        MlflowServer(tmp_path / "bad", backend_store_uri="nosuchdb://nowhere", timeout_s=60)
    message = str(failed.value)
    assert "mlflow server exited with status" in message
    assert "nosuchdb" in message  # the server's own complaint, from its log
    assert not alive(failed.value.pid)  # and nothing of it is left running


@pytest.mark.slow
def test_production_setup_postgres_store_and_s3_artifacts(
    mlflow_server_postgres, postgres_server, s3_server, tmp_path
):
    client = mlflow_server_postgres.client()
    experiment_id = client.create_experiment(unique_name("w4s/smoke-pg"))
    run_id = log_run(client, experiment_id, tmp_path)
    check_run(client, run_id, tmp_path)
    # the run is rows in PostgreSQL ...
    with contextlib.closing(postgres_server.connect("mlflow")) as conn, conn.cursor() as cur:
        cur.execute("select key, value from params where run_uuid = %s", (run_id,))
        assert cur.fetchall() == [("turns", "3")]
        cur.execute("select count(*) from metrics where run_uuid = %s and key = 'score'", (run_id,))
        assert cur.fetchone() == (2,)
    # ... and its artifact an object in the bucket
    assert s3_server.keys(f"mlflow-pg/{experiment_id}/") == [
        f"mlflow-pg/{experiment_id}/{run_id}/artifacts/best_workflow.py"
    ]
