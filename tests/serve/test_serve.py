"""`w4s serve` through the official OpenAI client: a real uvicorn server, the real sandbox, the scripted
executor behind the gateway."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

from tests.conftest import REPO
from tests.serve.conftest import get, post


def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is and read the reply until the server closes or stops sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:  # the server answered and closed before reading it all
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                part = sock.recv(65536)
                if not part:
                    break
                data += part
        except OSError:
            pass
        return data


WORKFLOW = """
import time


def solver(agent, task):
    if task == "boom":
        raise RuntimeError("internal detail sk-executor-secret /etc/w4s")
    if task.startswith("sleep "):
        time.sleep(float(task.split()[1]))
        return "slept"
    if task == "data":
        return {"total": 4, "steps": [1, 2]}
    if task == "die":
        import os

        os._exit(3)
    return agent.call_llm([{"role": "user", "content": task}], temperature=0.0)[0]
"""


@pytest.fixture
def workflow(tmp_path):
    path = tmp_path / "echo_workflow.py"
    path.write_text(WORKFLOW)
    return path


def test_chat_models_stream_auth_and_metrics(serve, executor, workflow, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# clients\nclient-key-1\n\nclient-key-2\n")
    server = serve(
        ["--workflow", f"gsm8k={workflow}", "--workflow", "svamp=cot", "--no-tracking",
         "--executor-base-url", executor.url, "--api-keys-file", str(keys)]
    )  # fmt: skip
    client = openai.OpenAI(base_url=server.url, api_key="client-key-2", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["w4s/gsm8k", "w4s/svamp"]

    reply = client.chat.completions.create(
        model="w4s/gsm8k",
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "What is 2+2?"}],
    )
    assert reply.choices[0].message.content == "Let me think. The answer is 4."
    assert reply.choices[0].finish_reason == "stop" and reply.model == "w4s/gsm8k"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 7, 18)

    shipped = client.chat.completions.create(
        model="w4s/svamp", messages=[{"role": "user", "content": "2+2?"}]
    )
    assert shipped.choices[0].message.content == "4" and shipped.usage.total_tokens == 18

    data = client.chat.completions.create(model="w4s/gsm8k", messages=[{"role": "user", "content": "data"}])
    assert json.loads(data.choices[0].message.content) == {"total": 4, "steps": [1, 2]}
    assert data.usage.total_tokens == 0  # this run made no executor call

    chunks = list(
        client.chat.completions.create(
            model="w4s/gsm8k", messages=[{"role": "user", "content": "again"}], stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me think. The answer is 4."
    assert chunks[-1].usage.total_tokens == 18

    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    assert denied.value.body["code"] == "invalid_api_key"
    status, _, body = post(f"{server.url}/chat/completions", b"{}")
    assert status == 401 and body["error"]["type"] == "invalid_request_error"

    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="w4s/nope", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["code"] == "model_not_found"

    auth = {"Authorization": "Bearer client-key-1"}
    status, _, body = post(f"{server.url}/chat/completions", b"not json", auth)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, _, body = post(
        f"{server.url}/chat/completions", json.dumps({"model": "w4s/gsm8k", "messages": []}).encode(), auth
    )
    assert status == 400 and body["error"]["code"] == "invalid_messages"
    # A body declared too large is refused before it is read; one sent in chunks, once it grows too large.
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-key-1\r\n"
    declared = raw(server.port, (head + f"Content-Length: {2 << 20}\r\n\r\n").encode())
    chunk = b"x" * (1 << 16)
    chunked = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + (
        b"%x\r\n%s\r\n" % (len(chunk), chunk)
    ) * 20
    for reply in (declared, raw(server.port, chunked + b"0\r\n\r\n")):
        assert reply.startswith(b"HTTP/1.1 413") and b'"code":"request_too_large"' in reply

    assert get(f"{server.base}/healthz")[0] == 200
    metrics = server.metrics()
    assert 'w4s_serve_requests_total{model="w4s/gsm8k",status="200"} 3.0' in metrics
    assert 'w4s_serve_executor_tokens_total{kind="prompt",model="w4s/gsm8k"} 22.0' in metrics
    assert 'w4s_serve_errors_total{kind="model_not_found"} 1.0' in metrics
    assert 'w4s_serve_errors_total{kind="request_too_large"} 2.0' in metrics
    assert 'w4s_serve_request_seconds_count{model="w4s/svamp"} 1.0' in metrics
    assert 'w4s_serve_request_seconds_bucket{le="+Inf",model="w4s/gsm8k"} 3.0' in metrics
    cost = re.search(r'w4s_serve_executor_cost_usd_total\{model="w4s/gsm8k"\} (\S+)', metrics)
    assert cost is not None and float(cost.group(1)) > 0  # gpt-4o-mini's prices, 22 + 14 tokens
    assert "sk-executor-secret" not in server.output()


def test_failures_timeouts_and_the_concurrency_limit(serve, executor, workflow):
    server = serve(
        ["--workflow", f"gsm8k={workflow}", "--no-tracking", "--executor-base-url", executor.url,
         "--max-concurrency", "1", "--request-timeout-s", "2"]
    )  # fmt: skip
    client = openai.OpenAI(base_url=server.url, api_key="anything", max_retries=0)

    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="w4s/gsm8k", messages=[{"role": "user", "content": "boom"}])
    error = failed.value.body
    assert set(error) >= {"message", "type", "code"} and error["code"] == "workflow_error"
    assert error["message"] == "the workflow failed (RuntimeError)"
    assert (
        "sk-executor-secret" not in failed.value.response.text
        and "/etc/w4s" not in failed.value.response.text
    )
    # A run the sandbox ended (the job exited without an answer): a 500, counted as a sandbox failure.
    with pytest.raises(openai.InternalServerError) as died:
        client.chat.completions.create(model="w4s/gsm8k", messages=[{"role": "user", "content": "die"}])
    assert died.value.body["code"] == "workflow_error"
    assert died.value.body["message"] == "the workflow failed (EarlyExit)"
    assert 'w4s_serve_sandbox_failures_total{model="w4s/gsm8k"} 1.0' in server.metrics()

    # A run that sleeps past the timeout: while it is in flight the next request is refused with
    # Retry-After (max concurrency 1), then it ends as a 504.
    results: list = []

    def slow() -> None:
        try:
            client.chat.completions.create(
                model="w4s/gsm8k", messages=[{"role": "user", "content": "sleep 30"}]
            )
        except openai.APIStatusError as exc:
            results.append(exc)

    first = threading.Thread(target=slow)
    first.start()
    while "w4s_serve_in_flight 1.0" not in server.metrics():
        time.sleep(0.01)
    status, headers, body = post(
        f"{server.url}/chat/completions",
        json.dumps({"model": "w4s/gsm8k", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    )
    first.join()
    assert status == 429 and headers["retry-after"] == "1" and body["error"]["code"] == "rate_limit_exceeded"
    assert results[0].status_code == 504 and results[0].body["code"] == "timeout"
    # Still serving after all of that.
    ok = client.chat.completions.create(model="w4s/gsm8k", messages=[{"role": "user", "content": "2+2"}])
    assert ok.choices[0].message.content.endswith("The answer is 4.")
    metrics = server.metrics()
    assert 'w4s_serve_errors_total{kind="workflow_error"} 2.0' in metrics
    assert 'w4s_serve_errors_total{kind="timeout"} 1.0' in metrics
    assert 'w4s_serve_errors_total{kind="rate_limit_exceeded"} 1.0' in metrics


def test_a_degraded_sandbox_is_refused_unless_allowed(workflow):
    refused = subprocess.run(
        [sys.executable, "-m", "w4s.cli", "serve", "--workflow", f"gsm8k={workflow}", "--no-tracking",
         "--sandbox-isolation", "process", "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    assert "--allow-degraded-sandbox" in refused.stderr


def test_bad_settings_are_one_line_errors(tmp_path):
    def w4s_serve(*args):
        return subprocess.run(
            [sys.executable, "-m", "w4s.cli", "serve", "--no-tracking", "--port", "0", *args],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    missing = w4s_serve("--workflow", "gsm8k=/nonexistent/workflow.py")
    assert missing.returncode == 2 and "neither a file nor a shipped" in missing.stderr
    unknown = w4s_serve("--workflow", "nosuchtask=cot")
    assert unknown.returncode == 2 and "unknown task" in unknown.stderr
    malformed = w4s_serve("--workflow", "cot")
    assert malformed.returncode == 2 and "TASK=PATH" in malformed.stderr
    empty = tmp_path / "keys.txt"
    empty.write_text("\n")
    no_keys = w4s_serve("--workflow", "gsm8k=cot", "--api-keys-file", str(empty))
    assert no_keys.returncode == 2 and "holds no key" in no_keys.stderr


def test_a_workflow_that_does_not_compile_or_no_executor_key_stops_the_start_in_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def solver(agent, task)\n    return 1\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "W4S_EXECUTOR_API_KEY", "OPENAI_BASE_URL")
    }

    def w4s_serve(*args, key: bool = True):
        return subprocess.run(
            [sys.executable, "-m", "w4s.cli", "serve", "--no-tracking", "--port", "0", *args],
            cwd=REPO, capture_output=True, text=True, timeout=60,
            env={**env, "OPENAI_API_KEY": "sk-executor-secret"} if key else env,
        )  # fmt: skip

    does_not_compile = w4s_serve("--workflow", f"gsm8k={broken}")
    assert does_not_compile.returncode == 2, does_not_compile.stderr
    assert "w4s: error: the workflow" in does_not_compile.stderr and "SyntaxError" in does_not_compile.stderr
    # It compiles, but every request would fail before its solver runs: refused the same way.
    for source, kind in (
        ("raise RuntimeError('at import')\ndef solver(agent, task):\n    return 1\n", "RuntimeError"),
        ("def solve(agent, task):\n    return 1\n", "NameError"),
    ):
        broken.write_text(source)
        fails_at_import = w4s_serve("--workflow", f"gsm8k={broken}")
        assert fails_at_import.returncode == 2, fails_at_import.stderr
        assert "w4s: error: the workflow" in fails_at_import.stderr and kind in fails_at_import.stderr
    no_key = w4s_serve("--workflow", "gsm8k=cot", key=False)
    assert no_key.returncode == 2, no_key.stderr
    assert "w4s: error: no API key" in no_key.stderr and "Traceback" not in no_key.stderr
