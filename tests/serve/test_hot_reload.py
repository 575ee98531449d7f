"""Champions from the registry (a real embedded MLflow store): listed, served, and hot-swapped when the
champion alias moves, with a request in flight finishing on the version it started on."""

from __future__ import annotations

import threading
import time

import openai

from tests.serve.conftest import evaluation, get
from w4s.tracking.registry import Registry, workflow_model_name

TASK = "svamp"

SOURCE = """
import time


def solver(agent, task):
    if task.startswith("sleep "):
        time.sleep(float(task.split()[1]))
    return "{label}"
"""


def register(registry: Registry, label: str) -> str:
    version = registry.register_workflow(
        task=TASK, source=SOURCE.format(label=label), test_evaluation=evaluation(TASK), valid_score=0.5,
        origin="constructed",
    )  # fmt: skip
    return str(version.version)


def ask(client, text: str) -> str:
    reply = client.chat.completions.create(model=f"w4s/{TASK}", messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content


def test_a_moved_champion_is_served_after_the_next_poll(serve, executor, tmp_path, monkeypatch):
    home = tmp_path / "w4s-home"  # a store of this test's own (W4S_HOME's embedded default)
    monkeypatch.setenv("W4S_HOME", str(home))
    registry = Registry()
    name = workflow_model_name(TASK)
    first = register(registry, "first")
    assert registry.move_champion(name, first, expected=None)
    register(registry, "not yet")  # a challenger is not served

    server = serve(["--executor-base-url", executor.url, "--poll-s", "0.2"], env={"W4S_HOME": str(home)})
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == [f"w4s/{TASK}"]
    assert get(f"{server.base}/readyz")[0] == 200
    assert ask(client, "hello") == "first"
    assert f'w4s_serve_workflow_version{{model="w4s/{TASK}"}} {float(first)}' in server.metrics()

    # A request runs on the first version (it sleeps) while the champion moves.
    slow: list[str] = []
    in_flight = threading.Thread(target=lambda: slow.append(ask(client, "sleep 4")))
    in_flight.start()
    while "w4s_serve_in_flight 1.0" not in server.metrics():
        time.sleep(0.01)
    second = register(registry, "second")
    assert registry.move_champion(name, second, expected=first)
    deadline = time.monotonic() + 60
    while ask(client, "hello") != "second":
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    in_flight.join()
    assert slow == ["first"]  # it finished on the version it started on
    assert f'w4s_serve_workflow_version{{model="w4s/{TASK}"}} {float(second)}' in server.metrics()
    assert "replacing" in server.output()
