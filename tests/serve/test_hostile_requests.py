"""`w4s serve` against hostile or odd clients: request bodies that are not what they should be, a body
sent too slowly, keys that are rotated while serving, and a workflow naming its own exception type."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.serve.conftest import post

WORKFLOW = """
def solver(agent, task):
    if task == "odd type":
        raise type("Leaked /etc/w4s sk-executor-secret", (Exception,), {})("detail")
    return "answer: " + task
"""


@pytest.fixture
def workflow(tmp_path):
    path = tmp_path / "hostile_workflow.py"
    path.write_text(WORKFLOW)
    return path


def chat(server, body: bytes | dict, key: str = "key-one") -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return post(f"{server.url}/chat/completions", data, {"Authorization": f"Bearer {key}"})


def user(content, model: str = "w4s/gsm8k") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def test_malformed_bodies_are_400_not_500(serve, executor, workflow, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("key-one\n")
    server = serve(
        ["--workflow", f"gsm8k={workflow}", "--no-tracking", "--executor-base-url", executor.url,
         "--api-keys-file", str(keys)]
    )  # fmt: skip
    for nested in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        status, _, body = chat(server, nested)
        assert status == 400 and body["error"]["code"] == "invalid_json"
    bad_parts = ([{"type": "text", "text": 5}], [{"type": "text", "text": None}], [{"type": "text"}])
    for content in (*bad_parts, "\ud800 a lone surrogate"):
        status, _, body = chat(server, user(content))
        assert status == 400 and body["error"]["code"] == "invalid_messages", content
    parts = [
        {"type": "text", "text": "2+"},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "2"},
    ]
    status, _, body = chat(server, user(parts))
    assert status == 200 and body["choices"][0]["message"]["content"] == "answer: 2+2"
    # "stream": "false" is a truthy string: refused, not taken as a request to stream.
    for flag in ("false", 0, 1, [], {}):
        status, _, body = chat(server, {**user("2+2"), "stream": flag})
        assert status == 400 and body["error"]["code"] == "invalid_stream", flag
    status, _, body = chat(server, {**user("2+2"), "stream": False})
    assert status == 200 and body["object"] == "chat.completion"

    # The workflow chooses its exception's type name: a name that is not a plain identifier stays out
    # of the reply.
    status, _, body = chat(server, user("odd type"))
    assert status == 500 and body["error"]["message"] == "the workflow failed (Error)"
    metrics = server.metrics()
    assert 'w4s_serve_errors_total{kind="invalid_json"} 2.0' in metrics
    assert 'w4s_serve_errors_total{kind="invalid_messages"} 4.0' in metrics
    assert "internal_error" not in metrics
    assert "Exception in ASGI application" not in server.output()


def test_a_body_sent_too_slowly_is_408(serve, executor, workflow, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("key-one\n")
    server = serve(
        ["--workflow", f"gsm8k={workflow}", "--no-tracking", "--executor-base-url", executor.url,
         "--api-keys-file", str(keys), "--request-timeout-s", "1"]
    )  # fmt: skip
    body = json.dumps(user("2+2")).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-one\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    started = time.monotonic()
    reply = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        for byte in body:  # one byte every 0.2 s: the whole body would take seconds
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                reply += sock.recv(65536)
            except TimeoutError:
                continue
            if reply:
                break
            assert time.monotonic() - started < 10
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"code":"request_timeout"' in reply and time.monotonic() - started < 5
    assert 'w4s_serve_errors_total{kind="request_timeout"} 1.0' in server.metrics()

    # A client that leaves halfway through its body: counted, not logged as a server error.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body[:10])
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while 'w4s_serve_errors_total{kind="client_disconnected"} 1.0' not in server.metrics():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    assert "Traceback" not in server.output()


def test_the_keys_file_is_reread_when_it_changes(serve, executor, workflow, tmp_path):
    keys = tmp_path / "keys.txt"
    # A byte-order mark (a file saved by some editors) and a key that is not ASCII.
    keys.write_bytes("\ufeffkey-one\nclé-deux\n".encode())
    server = serve(
        ["--workflow", f"gsm8k={workflow}", "--no-tracking", "--executor-base-url", executor.url,
         "--api-keys-file", str(keys)]
    )  # fmt: skip
    assert chat(server, user("hi"), "key-one")[0] == 200
    raw = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer clé-deux\r\n"
    body = json.dumps(user("hi")).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")

    def wait_for(key: str, status: int) -> None:
        deadline = time.monotonic() + 10
        while chat(server, user("hi"), key)[0] != status:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)

    keys.write_text("# rotated\nkey-three\n")  # key-one revoked, key-three added: seen within a second or so
    wait_for("key-three", 200)
    wait_for("key-one", 401)
    keys.write_text("\n")  # emptied (or half-written): the keys read before still hold, nobody else gets in
    time.sleep(1.5)
    assert chat(server, user("hi"), "key-three")[0] == 200
    assert chat(server, user("hi"), "anyone")[0] == 401
    keys.unlink()  # gone: the same
    time.sleep(1.5)
    assert chat(server, user("hi"), "key-three")[0] == 200
    assert chat(server, user("hi"), "anyone")[0] == 401
    output = server.output()
    assert "holds no key" in output and "cannot read the API keys file" in output
    assert "key-three" not in output and "key-one" not in output
