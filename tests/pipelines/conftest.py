"""Fixtures for the Kubeflow Pipelines tests: the scripted KFP API server and a small compiled pipeline.

``kfp_server`` (per test) is ``tests/servers/kfp_scripted.py`` running in a process group of its own on a
free loopback port, stopped by that group after the test: ``.url`` (the ``--host`` to give),
``.requests()`` (everything a client sent), ``.control(require_token=..., faults=[...], set_run={...})``.
``echo_package`` (per package) is a one-step pipeline compiled with ``kfp.compiler`` to YAML, taking
``text: str``, ``repeat: int = 2``, ``scale: float = 0.5`` and ``loud: bool = False``.

No ``from __future__ import annotations`` here: kfp reads the components' annotations as types.
"""

from pathlib import Path

import pytest

from tests.servers.kfp_scripted import KfpServer


@pytest.fixture
def kfp_server():
    server = KfpServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def echo_package(tmp_path_factory) -> Path:
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def echo(text: str, repeat: int) -> str:
        return text * repeat

    @dsl.pipeline(name="w4s-test-echo", description="one step, for the client tests")
    def echo_pipeline(text: str, repeat: int = 2, scale: float = 0.5, loud: bool = False):
        echo(text=text, repeat=repeat)

    path = tmp_path_factory.mktemp("kfp-package") / "echo.yaml"
    compiler.Compiler().compile(echo_pipeline, str(path))
    return path
