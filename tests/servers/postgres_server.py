"""A real PostgreSQL server for tests (Debian's ``postgresql`` package, or any ``initdb``/``postgres``).

A throwaway cluster: ``initdb`` into a fresh folder under the system temp dir, then ``postgres`` itself
(not ``pg_ctl``, so the PID is the postmaster's) on a free loopback port, its Unix socket in that
folder, durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``: the data dies with the
test). Trust authentication for the superuser ``w4s``, on loopback only. ``stop()`` asks the
postmaster for a fast shutdown by its PID (SIGINT: SIGKILL would leave its shared memory behind), then
removes the folder.

The binaries: ``initdb`` and ``postgres`` on PATH, else the newest ``/usr/lib/postgresql/<v>/bin``, where
Debian puts them (its PATH holds only the client wrappers). PostgreSQL refuses to run as root: as root
the cluster belongs to, and the server runs as, the ``postgres`` user the package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.servers.mlflow_server import (
    LOOPBACK,
    ServerProcess,
    ServerStartError,
    free_port,
    start_with_retries,
)

SUPERUSER = "w4s"


def pg_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres``."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).resolve().parent / "postgres").is_file():
        return Path(on_path).resolve().parent
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").is_file()]
    if versions:
        return max(versions, key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    raise ServerStartError(
        "no PostgreSQL server binaries (initdb, postgres) on PATH or under /usr/lib/postgresql/*/bin: "
        "install Debian's postgresql package (bash scripts/setup.sh does)"
    )


def _run_as() -> dict:
    """Popen arguments that drop root to the ``postgres`` user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerStartError(
            "PostgreSQL refuses to run as root and there is no `postgres` user to run it as: install "
            "Debian's postgresql package, or run the tests as an ordinary user"
        ) from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class PostgresServer(ServerProcess):
    """``postgres`` on ``port``; ``uri(db)`` is the SQLAlchemy URI MLflow takes."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: roll back sessions, stop cleanly
    stop_pid_only = True

    def __init__(self, *, timeout_s: float = 60.0):
        bindir = pg_bindir()
        as_user = _run_as()
        # under the system temp dir, not pytest's 0700 folders: the postgres user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="w4s-pg-"))
        if as_user:
            os.chown(self.root, as_user["user"], as_user["group"])
        self.data_dir = self.root / "data"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        init_log = self.root / "initdb.log"
        with open(init_log, "wb") as log:
            done = subprocess.run(
                [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust"]
                + ["-E", "UTF8", "--locale=C", "--no-sync"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                timeout=timeout_s,
                **as_user,
            )
        if done.returncode != 0:
            tail = "\n".join(init_log.read_text(errors="replace").splitlines()[-15:])
            shutil.rmtree(self.root, ignore_errors=True)
            raise ServerStartError(f"initdb failed (status {done.returncode}); its output:\n{tail}")
        argv = [
            str(bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        self._spawn(argv, env, self.root / "postgres.log", cwd=self.root, **as_user)
        self.startup_s = self.wait_ready(self._accepts, timeout_s, poll_s=0.05)

    @classmethod
    def start(cls, **kwargs) -> PostgresServer:
        return start_with_retries(lambda: cls(**kwargs))  # type: ignore[return-value]

    def connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=LOOPBACK, port=self.port, user=SUPERUSER, dbname=dbname, connect_timeout=5
        )

    def _accepts(self) -> bool:
        import psycopg2

        try:
            self.connect().close()
        except psycopg2.OperationalError:
            return False  # not listening yet, or "the database system is starting up"
        return True

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URI."""
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)

    def uri(self, dbname: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@{LOOPBACK}:{self.port}/{dbname}"

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
