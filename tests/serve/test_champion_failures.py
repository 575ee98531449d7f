"""Champions that cannot be served: a stored source changed after it was registered (its sha256 no longer
matches, or it is not even UTF-8) and a source that does not load. Each is refused with the version
served before it kept, the other tasks are served throughout, and the registry is still polled after."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from tests.serve.conftest import evaluation, get
from w4s.tracking.registry import WORKFLOW_FILE, Registry, workflow_model_name

GOOD = """
def solver(agent, task):
    return "{label}"
"""

DOES_NOT_LOAD = """
def solver(agent, task)
    return "never"
"""  # a syntax error: the sandbox reports it when it starts

FAILS_AT_IMPORT = """
import os
os.environ["W4S_SECRET"]  # a KeyError when the module runs: it compiles, and every request would fail
def solver(agent, task):
    return "never"
"""


def champion(registry: Registry, task: str, source: str, home: Path, tamper: bytes | None = None) -> str:
    """Register ``source`` for ``task`` (then overwrite its stored file with ``tamper``) and make it the
    champion."""
    version = registry.register_workflow(
        task=task, source=source, test_evaluation=evaluation(task), valid_score=0.5, origin="constructed"
    )
    if tamper is not None:
        model_id = version.source.removeprefix("models:/")
        (stored,) = (home / "mlflow" / "artifacts").glob(f"*/models/{model_id}/**/{WORKFLOW_FILE}")
        stored.write_bytes(tamper)
    name = workflow_model_name(task)
    assert registry.move_champion(name, str(version.version), expected=registry.aliases(name).get("champion"))
    return str(version.version)


def ask(client, task: str) -> str:
    reply = client.chat.completions.create(model=f"w4s/{task}", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


def test_a_champion_that_cannot_be_served_keeps_the_old_one_and_the_others(
    serve, executor, tmp_path, monkeypatch
):
    home = tmp_path / "w4s-home"
    monkeypatch.setenv("W4S_HOME", str(home))
    registry = Registry()
    champion(registry, "gsm8k", GOOD.format(label="gsm8k one"), home)
    # Already broken when the server starts: its stored file is not UTF-8 any more.
    champion(registry, "svamp", GOOD.format(label="x"), home, tamper=b"\xff\xfe not text")

    server = serve(
        ["--executor-base-url", executor.url, "--poll-s", "0.2"], env={"W4S_HOME": str(home)}, wait=False
    )
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    deadline = time.monotonic() + 60

    def wait_for(line: str) -> None:
        while line not in server.output():
            assert server.proc.poll() is None and time.monotonic() < deadline, server.output()
            time.sleep(0.05)

    wait_for("serving w4s/gsm8k")
    wait_for("cannot load w4s-workflow-svamp version 1")
    assert ask(client, "gsm8k") == "gsm8k one"
    assert get(f"{server.base}/readyz")[0] == 503  # a listed champion is not loaded

    second = champion(registry, "svamp", GOOD.format(label="svamp two"), home)
    wait_for(f"serving w4s/svamp: w4s-workflow-svamp/{second}")
    assert ask(client, "svamp") == "svamp two"
    assert get(f"{server.base}/readyz")[0] == 200

    # Moved to a version whose stored source was changed, then to one not UTF-8, then to one that does not
    # compile, then to one that raises when its module runs: each is refused and "svamp two" stays served (and /readyz stays 200).
    changed = champion(
        registry, "svamp", GOOD.format(label="three"), home, tamper=GOOD.format(label="evil!").encode()
    )
    wait_for(f"cannot load w4s-workflow-svamp version {changed}")
    not_text = champion(registry, "svamp", GOOD.format(label="four"), home, tamper=b"\xff\xfe not text")
    wait_for(f"cannot load w4s-workflow-svamp version {not_text}")
    broken = champion(registry, "svamp", DOES_NOT_LOAD, home)
    wait_for(f"cannot load w4s-workflow-svamp version {broken}")
    fails = champion(registry, "svamp", FAILS_AT_IMPORT, home)
    wait_for(f"cannot load w4s-workflow-svamp version {fails}")
    time.sleep(0.5)  # a few more polls
    assert ask(client, "svamp") == "svamp two" and ask(client, "gsm8k") == "gsm8k one"
    assert get(f"{server.base}/readyz")[0] == 200
    assert f'w4s_serve_workflow_version{{model="w4s/svamp"}} {float(second)}' in server.metrics()
    assert server.output().count(f"cannot load w4s-workflow-svamp version {broken}") == 1  # not retried
    assert server.output().count(f"cannot load w4s-workflow-svamp version {fails}") == 1

    # The registry is still polled: a good champion is served again.
    sixth = champion(registry, "svamp", GOOD.format(label="svamp six"), home)
    wait_for(f"serving w4s/svamp: w4s-workflow-svamp/{sixth}")
    assert ask(client, "svamp") == "svamp six"
    assert "evil!" not in server.output()
