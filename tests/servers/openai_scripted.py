"""A scripted OpenAI-compatible chat server: the one permitted fake, at the executor boundary.

Real HTTP on loopback, in its own process. Deterministic replies from a script, injected latency
and faults (429 with Retry-After, 500, hanging requests, malformed bodies, empty choices), and an
option to ignore ``n`` like llama.cpp and ``transformers serve``.

Run: python -m tests.servers.openai_scripted --script FILE.json   (prints "PORT <n>" when ready)
Control: POST /_script with a new script (resets counters); GET /_stats (requests, faults served,
requests per model, the largest max_tokens and n asked for, [model, seed] of every request, the most requests in
flight at once).

Script keys (all optional):
  latency_ms      delay before every reply
  table           {exact last user message: reply}
  rules           [{"match": regex on the last user message, "reply": text ({index}: the choice
                    index) or "replies": [text per choice index]}]
  default         "echo" (reply "echo:<message>") or a fixed text
  ignore_n        return one choice whatever n asks
  usage           {"prompt_tokens": x, "completion_tokens": y}: report these instead of the real counts
                  (any JSON value: negative, huge, a string)
  reply_size      pad every reply text with "x" to this many characters
  faults          [{"kind": "429"|"500"|"hang"|"malformed"|"empty"|"status", "count": k,
                    "retry_after": s, "hang_s": s, "status": code}], consumed in order, one per request
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"script": {}, "lock": threading.Lock()}
_COUNTERS = {
    "requests": 0,
    "faults_served": 0,
    "by_model": {},
    "max_tokens_seen": 0,
    "max_n_seen": 0,
    "seeds": [],
    "in_flight": 0,
    "max_in_flight": 0,
}


def _reset() -> None:
    STATE.update({k: (v.copy() if isinstance(v, dict | list) else v) for k, v in _COUNTERS.items()})


_reset()


def _next_fault() -> dict | None:
    with STATE["lock"]:
        STATE["requests"] += 1
        for fault in STATE["script"].get("faults", []):
            if fault.get("count", 1) > 0:
                fault["count"] = fault.get("count", 1) - 1
                STATE["faults_served"] += 1
                return fault
    return None


def _reply_for(content: str, index: int) -> str:
    script = STATE["script"]
    table = script.get("table") or {}
    if content in table:
        return table[content]
    for rule in script.get("rules") or []:
        if re.search(rule["match"], content, re.DOTALL):
            if "replies" in rule:  # one reply per choice index
                return rule["replies"][index % len(rule["replies"])]
            return rule["reply"].replace("{index}", str(index))
    default = script.get("default", "echo")
    return f"echo:{content}" if default == "echo" else default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one write (no Nagle / delayed-ACK stalls)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/_stats":
            with STATE["lock"]:
                stats = {k: v for k, v in STATE.items() if k not in ("lock", "script")}
            self._send(200, json.dumps(stats).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_script":
            with STATE["lock"]:
                STATE["script"] = json.loads(body)
                _reset()
            self._send(200, b"{}")
            return
        if not self.path.endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "unknown path"}}')
            return
        request = json.loads(body)
        with STATE["lock"]:
            STATE["by_model"][request.get("model")] = STATE["by_model"].get(request.get("model"), 0) + 1
            asked = request.get("max_tokens") or request.get("max_completion_tokens") or 0
            STATE["max_tokens_seen"] = max(STATE["max_tokens_seen"], asked)
            STATE["max_n_seen"] = max(STATE["max_n_seen"], int(request.get("n") or 1))
            STATE["seeds"].append([request.get("model"), request.get("seed")])
            STATE["in_flight"] += 1
            STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
        try:
            self._complete(request)
        finally:
            with STATE["lock"]:
                STATE["in_flight"] -= 1

    def _complete(self, request: dict) -> None:
        fault = _next_fault()
        latency = STATE["script"].get("latency_ms", 0) / 1000
        if latency:
            time.sleep(latency)
        if fault is not None:
            kind = fault["kind"]
            if kind == "429":
                headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
                self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', headers)
                return
            if kind == "500":
                self._send(500, b'{"error": {"message": "internal error"}}')
                return
            if kind == "status":
                message = json.dumps({"error": {"message": fault.get("message", "refused")}}).encode()
                self._send(int(fault["status"]), message)
                return
            if kind == "hang":
                time.sleep(fault.get("hang_s", 30))
            elif kind == "malformed":
                self._send(200, b'{"choices": [ this is not json')
                return
            elif kind == "empty":
                self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                return
        messages = request.get("messages") or []
        content = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        n = 1 if STATE["script"].get("ignore_n") else int(request.get("n") or 1)
        size = STATE["script"].get("reply_size")
        choices = [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": _reply_for(content, i).ljust(size, "x") if size else _reply_for(content, i),
                },
                "finish_reason": "stop",
            }
            for i in range(n)
        ]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages) + 3
        completion_tokens = sum(len(c["message"]["content"].split()) for c in choices)
        reply = {
            "id": f"chatcmpl-{STATE['requests']}",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model"),
            "choices": choices,
            "usage": STATE["script"].get("usage")
            or {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        self._send(200, json.dumps(reply).encode())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: 5 would drop SYNs when 32 clients connect at once


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--script", help="JSON script file")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.script:
        with open(args.script) as handle:
            STATE["script"] = json.load(handle)
    server = Server(("127.0.0.1", args.port), Handler)
    sys.stdout.write(f"PORT {server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
