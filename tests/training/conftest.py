"""Fixtures of the training tests: a real S3 server for the checkpoint mirror (``checkpoint_uri``).

``s3_server`` is ``weed mini`` (SeaweedFS) as in ``tests/tracking/conftest.py``: started on first use,
shared by this package's tests (each uses a prefix of its own), stopped after the last one.
"""

from __future__ import annotations

import pytest

from tests.servers.s3_server import S3Server


@pytest.fixture(scope="package")
def s3_server(tmp_path_factory):
    server = S3Server.start(tmp_path_factory.mktemp("s3-server"))
    yield server
    server.stop()
