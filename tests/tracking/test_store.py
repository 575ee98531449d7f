"""MLflow's process-wide URI is borrowed for a block and always given back."""

from __future__ import annotations

import os
import threading

import pytest

from w4s.errors import InfrastructureError
from w4s.tracking.store import fluent_uri

NAMES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def test_overlapping_blocks_on_threads_put_back_what_was_there(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = {name: os.environ.get(name) for name in NAMES}
    inside = threading.Barrier(2)
    leave_first = threading.Event()
    seen: list[str] = []

    def block(first: bool) -> None:
        with fluent_uri(uri):
            inside.wait(timeout=30)  # both are inside at once
            seen.append(mlflow.get_tracking_uri())
            if first:
                leave_first.set()  # the first to enter leaves first
            else:
                leave_first.wait(timeout=30)
                seen.append(os.environ["MLFLOW_TRACKING_URI"])  # still borrowed by this one

    threads = [threading.Thread(target=block, args=(first,)) for first in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == [uri, uri, uri]
    assert {name: os.environ.get(name) for name in NAMES} == before


def test_overlapping_blocks_on_two_stores_are_refused(tmp_path):
    with fluent_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        with pytest.raises(InfrastructureError, match="already using the MLflow store"):
            with fluent_uri(f"sqlite:///{tmp_path / 'b.db'}"):
                pass
    assert all(os.environ.get(name) is None for name in NAMES)


def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path):
    """The first open of a SQLite store creates and migrates its schema. Four processes doing it at once
    (the parallel tasks of a local pipeline, the ranks of a training launch) all open it, and it stays
    usable: without a lock, three of four died on "table _alembic_tmp_... already exists" and the
    database was left half-migrated for every later command."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "import sys; from w4s.tracking.store import open_client; open_client(sys.argv[1]); print('opened')"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err[-500:] for _, err in results]
    assert all(out.strip() == "opened" for out, _ in results)
    from w4s.tracking.store import open_client

    assert open_client(uri).search_experiments()  # the Default experiment: the schema is whole
