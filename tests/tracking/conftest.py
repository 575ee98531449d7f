"""Real MLflow, S3 and PostgreSQL servers for the tracking and registry tests (no mocks of either).

Every server runs on free loopback ports in a process group of its own and is stopped by that group
(PostgreSQL: by its postmaster's PID); see ``tests/servers/``. The servers are shared by the tests of
this package (``scope="package"``: started on first use, stopped when the package's last test is done),
so a test names its experiments and registered models uniquely (``unique_name`` in
``tests/servers/mlflow_server.py``) and never assumes an empty store. A test that must stop or break a
server starts its own with ``start_mlflow_server``.

No fixture changes ``os.environ`` for longer than one test. The server fixtures change nothing: they
give each server its environment (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, S3 endpoint and keys) and
yield objects whose ``env`` says what a *client* needs. ``use_env(server)`` applies that to the current
test (monkeypatch, undone after it), and a subprocess gets ``{**os.environ, **server.env}``.

==========================  =======  ====================================================================
fixture                     scope    yields
==========================  =======  ====================================================================
``mlflow_server``           package  ``MlflowServer``: SQLite store, artifacts proxied to a local folder;
                                     ``.url`` (the tracking URI), ``.client()``, ``.env``
``s3_server``               package  ``S3Server``: ``weed mini`` with ``.bucket`` created; ``.endpoint_url``,
                                     ``.access_key``/``.secret_key``, ``.client()`` (boto3), ``.keys(prefix)``,
                                     ``.env`` (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_*``)
``mlflow_server_s3``        package  ``MlflowServer``: SQLite store, artifacts proxied to
                                     ``s3://<bucket>/mlflow`` on ``s3_server``
``postgres_server``         package  ``PostgresServer``: ``.uri(db)``, ``.create_database(name)``, ``.connect()``
``mlflow_server_postgres``  package  ``MlflowServer`` as in production: PostgreSQL store, artifacts proxied
                                     to ``s3://<bucket>/mlflow-pg`` on ``s3_server`` (for ``slow`` tests)
``start_mlflow_server``     test     ``start(**kwargs) -> MlflowServer``: a private server, stopped after
                                     the test (for tests that kill it)
``mlflow_embedded``         test     ``EmbeddedStore``: no server; ``W4S_HOME`` set to a temp folder,
                                     ``MLFLOW_TRACKING_URI`` unset; ``.tracking_uri`` (``sqlite:///…``)
``use_env``                 test     ``use_env(server)``: ``server.env`` into this test's environment
==========================  =======  ====================================================================

Why proxied artifacts (``--serve-artifacts --artifacts-destination``, MLflow 3's default) rather than
clients writing to S3 themselves (``--default-artifact-root s3://…``): it is what a shared tracking server
usually runs, clients then need only the tracking URI (no S3 keys on every laptop and pod), and the
server is the one place that holds storage credentials. Direct writes still work against the same
servers: an experiment created with ``artifact_location=s3_server.artifacts_uri(...)`` is written by the
client's own boto3, given ``use_env(s3_server)`` (``test_servers.py`` does both).
"""

from __future__ import annotations

import pytest

from tests.servers.mlflow_server import EmbeddedStore, MlflowServer
from tests.servers.postgres_server import PostgresServer
from tests.servers.s3_server import S3Server


@pytest.fixture(scope="package")
def mlflow_server(tmp_path_factory):
    server = MlflowServer.start(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(scope="package")
def s3_server(tmp_path_factory):
    server = S3Server.start(tmp_path_factory.mktemp("s3-server"))
    yield server
    server.stop()


@pytest.fixture(scope="package")
def mlflow_server_s3(tmp_path_factory, s3_server):
    server = MlflowServer.start(
        tmp_path_factory.mktemp("mlflow-server-s3"),
        artifacts_destination=s3_server.artifacts_uri("mlflow"),
        env=s3_server.env,
    )
    yield server
    server.stop()


@pytest.fixture(scope="package")
def postgres_server():
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def mlflow_server_postgres(tmp_path_factory, postgres_server, s3_server):
    server = MlflowServer.start(
        tmp_path_factory.mktemp("mlflow-server-postgres"),
        backend_store_uri=postgres_server.create_database("mlflow"),
        artifacts_destination=s3_server.artifacts_uri("mlflow-pg"),
        env=s3_server.env,
    )
    yield server
    server.stop()


@pytest.fixture
def start_mlflow_server(tmp_path):
    """``start(**MlflowServer kwargs)``: a server of this test's own, stopped when the test ends."""
    started: list[MlflowServer] = []

    def start(**kwargs) -> MlflowServer:
        server = MlflowServer.start(tmp_path / f"mlflow-server-{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mlflow_embedded(tmp_path, monkeypatch) -> EmbeddedStore:
    """The embedded mode: no server, a SQLite store under a temporary ``W4S_HOME``."""
    store = EmbeddedStore(tmp_path / "w4s-home")
    for name in store.unset:
        monkeypatch.delenv(name, raising=False)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    return store


@pytest.fixture
def use_env(monkeypatch):
    """``use_env(server)``: set ``server.env`` for this test only; returns the server."""

    def use(server):
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        return server

    return use
