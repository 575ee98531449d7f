"""`w4s serve` when what it depends on is not there: the executor down while serving (502, then served
again once it is back), and a registry that cannot be read yet (/readyz 503 until it can)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.conftest import ScriptedServer
from tests.serve.conftest import free_port, get, post

WORKFLOW = """
def solver(agent, task):
    return agent.call_llm([{"role": "user", "content": task}], temperature=0.0)[0]
"""


@pytest.fixture
def workflow(tmp_path):
    path = tmp_path / "one_call.py"
    path.write_text(WORKFLOW)
    return path


def ask(url: str, model: str, text: str, key: str = "client-key") -> tuple[int, dict, dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
    return post(f"{url}/chat/completions", body, {"Authorization": f"Bearer {key}"})


def test_the_executor_down_while_serving_is_a_502_then_served_again(serve, workflow, tmp_path):
    port = free_port()
    executor = ScriptedServer({"default": "The answer is 4."}, port=port)
    keys = tmp_path / "keys.txt"
    keys.write_text("client-key\n")
    try:
        server = serve(
            ["--workflow", f"gsm8k={workflow}", "--no-tracking", "--executor-base-url", executor.url,
             "--api-keys-file", str(keys), "--executor-connect-retries", "1", "--executor-max-retries", "1",
             "--executor-backoff-s", "0.05"]
        )  # fmt: skip
        status, _, body = ask(server.url, "w4s/gsm8k", "2+2?")
        assert status == 200 and body["choices"][0]["message"]["content"] == "The answer is 4."

        executor.stop()  # down: connections refused
        down = [ask(server.url, "w4s/gsm8k", "2+2?") for _ in range(2)]
        executor = ScriptedServer({"faults": [{"kind": "500", "count": 10}]}, port=port)  # up, but failing
        down.append(ask(server.url, "w4s/gsm8k", "2+2?"))
        for status, _, body in down:
            assert status == 502
            assert body == {
                "error": {
                    "message": "the executor is unavailable", "type": "upstream_error",
                    "code": "executor_unavailable", "param": None,
                }
            }  # fmt: skip

        executor.script(default="The answer is 4.")  # back: the next request is served
        status, _, body = ask(server.url, "w4s/gsm8k", "2+2?")
        assert status == 200 and body["choices"][0]["message"]["content"] == "The answer is 4."
        assert get(f"{server.base}/readyz")[0] == 200 and get(f"{server.base}/healthz")[0] == 200

        metrics = server.metrics()
        assert 'w4s_serve_errors_total{kind="executor_unavailable"} 3.0' in metrics
        assert 'w4s_serve_requests_total{model="w4s/gsm8k",status="502"} 3.0' in metrics
        assert 'w4s_serve_requests_total{model="w4s/gsm8k",status="200"} 2.0' in metrics
        # The cause is in the log, the keys are nowhere.
        assert "executor" in server.output() and "sk-executor-secret" not in server.output()
    finally:
        executor.stop()


def test_readyz_is_503_until_every_listed_workflow_is_loaded(serve, executor, workflow, tmp_path):
    # The registry cannot be read yet (its folder is a file; its first read also imports MLflow, in the
    # background): the explicit workflow is served, /readyz says 503, and a model the registry may list
    # is "loading"; once the store can be created and read, 200.
    blocked = tmp_path / "store"
    blocked.write_text("not a folder")
    server = serve(
        ["--workflow", f"gsm8k={workflow}", "--tracking-uri", f"sqlite:///{blocked}/mlflow.db",
         "--poll-s", "0.2", "--executor-base-url", executor.url],
        wait=False,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        assert server.proc.poll() is None and time.monotonic() < deadline, server.output()
        try:
            listed = json.loads(get(f"{server.url}/models")[1])["data"]
        except OSError:
            listed = []
        if listed:
            break
        time.sleep(0.05)
    assert [m["id"] for m in listed] == ["w4s/gsm8k"]
    status, body = get(f"{server.base}/readyz")
    assert status == 503 and json.loads(body)["status"] == "loading"
    assert get(f"{server.base}/healthz")[0] == 200

    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    reply = client.chat.completions.create(model="w4s/gsm8k", messages=[{"role": "user", "content": "2+2"}])
    assert reply.choices[0].message.content == "Let me think. The answer is 4."
    status, headers, body = ask(server.url, "w4s/svamp", "2+2")
    assert status == 503 and headers["retry-after"] == "1" and body["error"]["code"] == "model_loading"
    assert get(f"{server.base}/readyz")[0] == 503  # still: the registry has not been read

    blocked.unlink()
    while get(f"{server.base}/readyz")[0] != 200:
        assert server.proc.poll() is None and time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    assert json.loads(get(f"{server.base}/readyz")[1]) == {"status": "ready", "models": ["w4s/gsm8k"]}
    status, _, body = ask(server.url, "w4s/svamp", "2+2")  # the registry has no champion for it
    assert status == 404 and body["error"]["code"] == "model_not_found"
