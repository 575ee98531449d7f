"""The asyncio HTTP/1.1 transport under the openai client, against real loopback servers that speak
the awkward parts of HTTP/1.1 on purpose (chunked bodies, gzip, close-delimited bodies, 100 Continue,
dropped keep-alive connections, silence, TLS)."""

from __future__ import annotations

import ast
import asyncio
import gzip
import json
import ssl
import subprocess
from pathlib import Path

import openai
import pytest

import w4s.llm.backends
import w4s.llm.transport
from w4s.llm.backends import OpenAIBackend, Rejected, Retryable, Unreachable
from w4s.llm.config import EndpointConfig
from w4s.llm.gateway import Gateway
from w4s.llm.limits import Budget
from w4s.llm.transport import ResponseTooLarge, StreamTransport, httpx, proxy_configured

REPLY = {
    "id": "x",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class RawServer:
    """A loopback HTTP server whose reply bytes the test writes itself; counts connections."""

    def __init__(self, respond, tls: ssl.SSLContext | None = None):
        self.respond = respond  # async (request_head, body, writer, state) -> keep connection?
        self.tls = tls
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.state: dict = {}

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        self.url = f"{scheme}://{host}:{self.port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.respond(head, body, writer, self.state):
                    return
        finally:
            self.open_now -= 1
            writer.close()


def reply_bytes(status: str = "200 OK", body: bytes | None = None, headers: tuple[str, ...] = ()) -> bytes:
    body = json.dumps(REPLY).encode() if body is None else body
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def after(seconds: float):
    """A responder that answers normally after ``seconds``."""

    async def respond(head, body, writer, state) -> bool:
        await asyncio.sleep(seconds)
        writer.write(reply_bytes())
        await writer.drain()
        return True

    return respond


plain = after(0)


def client(url: str, transport: StreamTransport | None = None, timeout: float = 5.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="k",
        base_url=url,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAsyncHttpxClient(transport=transport or StreamTransport()),
    )


async def chat(c: openai.AsyncOpenAI) -> str:
    result = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return result.choices[0].message.content


async def generate(url: str, timeout: float = 5.0, **backend_options) -> tuple[str, str]:
    """One request through the backend the gateway uses: ("ok", text), or the error tier and message."""
    backend = OpenAIBackend("m", url, "k", timeout, **backend_options)
    try:
        completion = await backend.generate(
            [{"role": "user", "content": "hi"}],
            n=1,
            temperature=0,
            max_tokens=5,
            json_mode=False,
            seed=None,
        )
    except (Retryable, Unreachable, Rejected) as exc:
        return type(exc).__name__, str(exc)
    finally:
        await backend.aclose()
    return "ok", completion.texts[0]


async def post(url: str, transport: StreamTransport) -> httpx.Response:
    """One request straight through the transport (its own exceptions, unwrapped by the openai client)."""
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as c:
        return await c.post(url + "/chat/completions", json={})


def sends(data: bytes, then_close: bool = False):
    """A responder that writes ``data`` and then keeps the connection open (or closes it)."""

    async def respond(head, body, writer, state) -> bool:
        writer.write(data)
        await writer.drain()
        if not then_close:
            await asyncio.sleep(60)  # silent but open: only a cap that counts as bytes arrive ends this
        return False

    return respond


def test_keep_alive_connections_are_reused_and_requests_are_complete():
    async def main():
        async with RawServer(plain) as server:
            c = client(server.url)
            assert [await chat(c) for _ in range(3)] == ["hello"] * 3
            await c.close()
        return server

    server = asyncio.run(main())
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    head, _, body = first.partition(b"\r\n\r\n")
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hi"}]
    assert b"authorization: Bearer k" in head.lower().replace(b"bearer", b"Bearer")


def test_chunked_and_gzip_bodies_are_decoded():
    payload = gzip.compress(json.dumps(REPLY).encode())

    async def chunked_gzip(head, body, writer, state) -> bool:
        chunks = [payload[:10], payload[10:]]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
            + b"0\r\nX-Trailer: yes\r\n\r\n"
        )
        await writer.drain()
        return True

    async def main():
        async with RawServer(chunked_gzip) as server:
            c = client(server.url)
            texts = [await chat(c), await chat(c)]
            await c.close()
        return server, texts

    server, texts = asyncio.run(main())
    assert texts == ["hello", "hello"]
    assert server.connections == 1  # the chunked body ended where it said: the connection stays usable


def test_connection_close_and_close_delimited_bodies():
    async def http10(head, body, writer, state) -> bool:
        data = json.dumps(REPLY).encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + data)
        await writer.drain()
        return False  # the end of the connection ends the body

    async def close_header(head, body, writer, state) -> bool:
        writer.write(reply_bytes(headers=("Connection: close",)))
        await writer.drain()
        return False

    async def main():
        seen = []
        for respond in (http10, close_header):
            async with RawServer(respond) as server:
                c = client(server.url)
                assert [await chat(c), await chat(c)] == ["hello", "hello"]
                await c.close()
            seen.append(server.connections)
        return seen

    assert asyncio.run(main()) == [2, 2]  # a fresh connection for each request


def test_informational_responses_are_skipped():
    async def continue_first(head, body, writer, state) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply_bytes())
        await writer.drain()
        return True

    async def main():
        async with RawServer(continue_first) as server:
            c = client(server.url)
            text = await chat(c)
            await c.close()
            return text

    assert asyncio.run(main()) == "hello"


def test_a_kept_alive_connection_the_server_dropped_is_replaced_transparently():
    async def once_per_connection(head, body, writer, state) -> bool:
        writer.write(reply_bytes())
        await writer.drain()
        return False  # no Connection: close header, so the client keeps it, but the server hangs up

    async def main():
        async with RawServer(once_per_connection) as server:
            c = client(server.url)
            first = await chat(c)
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle in the pool
            second = await chat(c)
            await c.close()
        return server, [first, second]

    server, texts = asyncio.run(main())
    assert texts == ["hello", "hello"]
    assert server.connections == 2


def test_a_stale_connection_found_only_on_use_is_retried_once():
    transport = StreamTransport()

    async def main():
        async with RawServer(plain) as server:
            c = client(server.url, transport)
            assert await chat(c) == "hello"
            # Pretend the connection died in the instant between the idle check and the write: the
            # server never sees the request and the client must not report a failure for it.
            (connection,) = transport._idle[("http", "127.0.0.1", server.port)]
            connection.usable = lambda: True
            connection.transport.abort()
            await asyncio.sleep(0.01)
            text = await chat(c)
            await c.close()
        return server, text

    server, text = asyncio.run(main())
    assert text == "hello"
    assert server.connections == 2


def test_failures_map_to_the_gateway_error_tiers():
    async def silent(head, body, writer, state) -> bool:
        await asyncio.sleep(30)
        return False

    async def hang_up(head, body, writer, state) -> bool:
        return False

    async def garbage(head, body, writer, state) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        return False

    async def huge_headers(head, body, writer, state) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        await writer.drain()
        return False

    async def outcome(respond, timeout=5.0):
        async with RawServer(respond) as server:
            return await generate(server.url, timeout)

    async def refused():
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        return await generate(f"http://127.0.0.1:{port}/v1")

    async def main():
        return {
            "silent": await outcome(silent, timeout=0.3),
            "hang_up": await outcome(hang_up),
            "garbage": await outcome(garbage),
            "huge_headers": await outcome(huge_headers),
            "refused": await refused(),
        }

    results = asyncio.run(main())
    assert results["silent"] == ("Retryable", "the request timed out")
    for case in ("hang_up", "garbage", "huge_headers", "refused"):
        assert results[case][0] == "Unreachable", (case, results[case])


def test_the_connection_cap_holds():
    async def main():
        async with RawServer(after(0.05)) as server:
            c = client(server.url, StreamTransport(max_connections=2))
            texts = await asyncio.gather(*(chat(c) for _ in range(6)))
            await c.close()
        return server, texts

    server, texts = asyncio.run(main())
    assert texts == ["hello"] * 6
    assert server.most_open == 2 and server.connections == 2


def test_pool_timeout_when_every_connection_stays_busy():
    async def main():
        async with RawServer(after(1.0)) as server:
            transport = StreamTransport(max_connections=1)
            async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.1)) as c:
                first = asyncio.create_task(c.post(server.url + "/chat/completions", json={}))
                await asyncio.sleep(0.05)
                with pytest.raises(httpx.PoolTimeout):
                    await c.post(server.url + "/chat/completions", json={})
                assert (await first).status_code == 200

    asyncio.run(main())


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A self-signed certificate for localhost, made with the openssl command line."""
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=str(cert))
    return server_side, client_side


def test_tls_with_certificate_checks(tls_pair):
    server_side, client_side = tls_pair

    async def main():
        async with RawServer(plain, tls=server_side) as server:
            trusted = client(server.url, StreamTransport(client_side))
            text = [await chat(trusted), await chat(trusted)]
            await trusted.close()
            untrusted = client(server.url, StreamTransport(ssl.create_default_context()))
            with pytest.raises(openai.APIConnectionError):
                await chat(untrusted)
            await untrusted.close()
        return server, text

    server, text = asyncio.run(main())
    assert text == ["hello", "hello"]
    assert server.connections == 1  # kept alive for the trusted client; the refused handshake got no further


PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


def test_proxy_settings_are_read_from_the_environment(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not proxy_configured("https://api.openai.com/v1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_configured("https://api.openai.com/v1")
    assert not proxy_configured("http://127.0.0.1:8000/v1")  # plain http is not routed by HTTPS_PROXY
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert not proxy_configured("https://api.openai.com/v1")


def test_a_configured_proxy_keeps_the_clients_own_transport_and_the_cap(monkeypatch):
    """Through a proxy the client's own transport carries the request (this one does not speak to
    proxies), and the backend still caps the body as it streams in."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    endless = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"400\r\n" + b" " * 1024 + b"\r\n") * 8
    )  # 8 KiB of a body that never ends

    async def main():
        results = []
        for respond in (plain, sends(endless)):
            async with RawServer(respond) as proxy:
                monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
                results.append(await generate("http://upstream.invalid/v1", max_response_bytes=4096))
                results.append(proxy.requests[0].split(b"\r\n", 1)[0])
        return results

    answered, request_line, capped, _ = asyncio.run(main())
    assert answered == ("ok", "hello")
    assert request_line == b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1"  # proxy form
    assert capped[0] == "Rejected" and "over 4096 bytes" in capped[1]


# --- limits: bodies and heads ---------------------------------------------------------------------

CAP = 1000


def test_a_body_over_the_cap_fails_the_request_whatever_delimits_it():
    """Each server starts a body larger than the cap and then falls silent with the connection open:
    the request must fail on the bytes counted so far (reading first and counting after would wait
    for the read timeout instead)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    cases = {
        "declared": head + b"Content-Length: 10000000000\r\n\r\n{",
        "chunked": head
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"64\r\n"
        + b"x" * 100
        + b"\r\n" * 1
        + (b"64\r\n" + b"x" * 100 + b"\r\n") * 11,
        "close-delimited": head + b"\r\n" + b"x" * (CAP + 1),
    }

    async def outcome(data: bytes):
        async with RawServer(sends(data)) as server:
            try:
                await post(server.url, StreamTransport(max_response_bytes=CAP))
            except httpx.HTTPError as exc:
                return type(exc).__name__, str(exc)
            return "ok", ""

    for name, data in cases.items():
        kind, message = asyncio.run(outcome(data))
        assert kind == "ResponseTooLarge", (name, kind, message)
        assert f"over the {CAP}-byte cap" in message


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
def test_a_body_exactly_at_the_cap_passes_and_one_byte_more_fails(framing):
    """The cap counts the body as sent: a chunked one with its framing (size lines and line ends),
    so that a flood of tiny chunks is bounded like one large chunk."""
    payload = b"y" * 900
    if framing == "chunked":
        body = b"%x\r\n%s\r\n0\r\n" % (len(payload), payload)
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"\r\n"
    elif framing == "close-delimited":
        body = payload
        data = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    else:
        body = payload
        data = reply_bytes(body=body)

    async def main(cap: int):
        async with RawServer(sends(data, then_close=True)) as server:
            try:
                return (await post(server.url, StreamTransport(max_response_bytes=cap))).content
            except ResponseTooLarge:
                return None

    assert asyncio.run(main(len(body))) == payload
    assert asyncio.run(main(len(body) - 1)) is None


def test_a_reply_over_the_cap_is_rejected_for_that_request_only_and_never_retried():
    """Through the backend and the gateway: the workflow sees a per-request error (Rejected), the
    server sees the request once, and the next request on the same gateway works."""
    big = json.dumps({**REPLY, "padding": "z" * 5000}).encode()

    async def big_then_small(head, body, writer, state) -> bool:
        state["n"] = state.get("n", 0) + 1
        writer.write(reply_bytes(body=big if state["n"] == 1 else None))
        await writer.drain()
        return True

    async def main():
        async with RawServer(big_then_small) as server:
            backend = OpenAIBackend("m", server.url, "k", 5.0, max_response_bytes=4096)
            gateway = Gateway(EndpointConfig(base_url=server.url, cache_path="off", max_retries=3), backend)
            try:
                budget = Budget(max_calls=10)
                with pytest.raises(Rejected, match="over 4096 bytes"):
                    await gateway.chat([{"role": "user", "content": "hi"}], max_tokens=5, budget=budget)
                assert len(server.requests) == 1  # not retried
                # The endpoint did the work: it is charged, at the request's worst case.
                assert (budget.usage.llm_calls, budget.usage.completion_tokens) == (1, 5)
                assert await gateway.chat([{"role": "user", "content": "hi"}], max_tokens=5) == ["hello"]
            finally:
                await gateway.aclose()

    asyncio.run(main())


def test_the_cap_counts_decoded_bytes_too():
    """A gzip body of a few KiB that decodes to 1 MiB is over a 64 KiB cap, though its wire size is not."""
    padded = json.dumps({**REPLY, "padding": " " * (1 << 20)}).encode()
    wire = gzip.compress(padded)
    assert len(wire) < 8192

    async def gzipped(head, body, writer, state) -> bool:
        writer.write(reply_bytes(body=wire, headers=("Content-Encoding: gzip",)))
        await writer.drain()
        return True

    async def main():
        async with RawServer(gzipped) as server:
            return (
                await generate(server.url, max_response_bytes=64 << 10),
                await generate(server.url, max_response_bytes=2 << 20),
            )

    capped, fits = asyncio.run(main())
    assert capped[0] == "Rejected" and "over 65536 bytes" in capped[1]
    assert fits == ("ok", "hello")


def head_with(*lines: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            head_with(b"X-Long: " + b"a" * (20 << 10), b"Content-Length: 0") + b"\r\n", id="long-line"
        ),
        pytest.param(
            head_with(*[b"X-%d: 1" % i for i in range(101)], b"Content-Length: 0") + b"\r\n", id="101-lines"
        ),
        pytest.param(head_with(*[b"X-%d: " % i + b"b" * 1000 for i in range(70)]), id="over-64KiB-and-open"),
        pytest.param(
            head_with(b"Transfer-Encoding: chunked") + b"\r\n1\r\nx\r\n0\r\n" + b"X-T: 1\r\n" * 101 + b"\r\n",
            id="101-trailers",
        ),
        pytest.param(
            head_with(b"Transfer-Encoding: chunked") + b"\r\n1;" + b"e" * (20 << 10) + b"\r\nx\r\n0\r\n\r\n",
            id="long-chunk-size-line",
        ),
    ],
)
def test_oversized_heads_fail_the_request(data):
    async def main():
        async with RawServer(sends(data)) as server:
            with pytest.raises(httpx.RemoteProtocolError, match="response head is over"):
                await post(server.url, StreamTransport())

    asyncio.run(main())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(head_with(b"Content-Length: +5") + b"\r\nhello", id="signed-length"),
        pytest.param(head_with(b"Content-Length: 5", b"Content-Length: 6") + b"\r\nhello!", id="two-lengths"),
        pytest.param(
            head_with(b"Transfer-Encoding: chunked") + b"\r\n-5\r\nhello\r\n0\r\n\r\n", id="negative-chunk"
        ),
        pytest.param(
            head_with(b"Transfer-Encoding: chunked") + b"\r\n0x5\r\nhello\r\n0\r\n\r\n", id="0x-chunk"
        ),
        pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", id="four-digit-status"),
    ],
)
def test_malformed_framing_is_a_protocol_error(data):
    async def main():
        async with RawServer(sends(data, then_close=True)) as server:
            with pytest.raises(httpx.RemoteProtocolError, match="malformed response"):
                await post(server.url, StreamTransport())

    asyncio.run(main())


def test_bytes_sent_out_of_turn_retire_the_connection():
    """A reply followed by bytes nobody asked for (here a 408, as servers send before closing an idle
    connection): the connection is not used again, so the stray bytes are never read as a reply."""
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"

    async def trailing(head, body, writer, state) -> bool:  # in the same write as the reply
        writer.write(reply_bytes() + stray)
        await writer.drain()
        return True

    async def later(head, body, writer, state) -> bool:  # while the connection idles in the pool
        writer.write(reply_bytes())
        await writer.drain()
        await state.setdefault("replied", asyncio.Event()).wait()
        writer.write(stray)
        await writer.drain()
        state["sent"].set()
        return True

    async def main():
        seen = []
        async with RawServer(trailing) as server:
            c = client(server.url)
            assert [await chat(c), await chat(c)] == ["hello", "hello"]
            await c.close()
        seen.append(server.connections)
        async with RawServer(later) as server:
            server.state.update(replied=asyncio.Event(), sent=asyncio.Event())
            c = client(server.url)
            assert await chat(c) == "hello"
            server.state["replied"].set()
            await server.state["sent"].wait()
            await asyncio.sleep(0.05)  # the stray bytes reach the idle connection
            assert await chat(c) == "hello"
            await c.close()
        seen.append(server.connections)
        return seen

    assert asyncio.run(main()) == [2, 2]


def test_caps_are_checked_when_the_transport_is_made():
    with pytest.raises(ValueError, match="max_response_bytes"):
        StreamTransport(max_response_bytes=-1)
    with pytest.raises(ValueError, match="max_connections"):
        StreamTransport(max_connections=0)


# --- public interfaces only -----------------------------------------------------------------------


def private_uses(source: str) -> list[str]:
    """Where ``source`` reaches past a library's public interface: an import of a module or name that
    starts with an underscore (``openai._base_client``), an attribute starting with one on anything
    but ``self``/``cls`` (``reader._buffer``, ``client._client``), or the same through ``getattr`` and
    friends with a literal name. Dunders (``__cause__``) are the language's, not a library's; ``__dict__``
    is not allowed."""

    def private(name: str) -> bool:
        return name == "__dict__" or (
            name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
        )

    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if any(map(private, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or any(map(private, module.split("."))) or any(private(a.name) for a in node.names):
                found.append(f"{where}: from {'.' * node.level}{module} import ...")
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if private(node.attr) and owner not in ("self", "cls"):
                found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr", "vars") and node.args:
                name = node.args[1] if len(node.args) > 1 else None
                if node.func.id == "vars" or (
                    isinstance(name, ast.Constant) and isinstance(name.value, str) and private(name.value)
                ):
                    found.append(f"{where}: {node.func.id}(...)")
    return found


def test_the_checker_finds_what_the_old_transport_did():
    """The check below is only worth something if it catches these: each line is one use."""
    old = """
from openai import _base_client
import openai._base_client as base
from openai._base_client import httpx
httpx = getattr(base, "_httpx2", None) or base.httpx
pending = len(self.reader._buffer)
transport = backend.client._client._transport
flags = vars(reader)
state = reader.__dict__
"""
    found = private_uses(old)
    lines = {entry.split(":")[0] for entry in found}
    assert lines == {f"line {n}" for n in range(2, 10)}, found
    assert private_uses("self._idle = {}\nexc.__cause__\nfrom w4s.llm.transport import httpx\n") == []


@pytest.mark.parametrize("module", [w4s.llm.transport, w4s.llm.backends], ids=lambda m: m.__name__)
def test_the_http_path_uses_public_interfaces_only(module):
    source = Path(module.__file__).read_text()
    tree = ast.parse(source)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    attributes = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    assert "openai" in imported and len(attributes) > 50  # the check has something to look at
    assert private_uses(source) == []


def test_the_transport_speaks_the_http_library_of_the_installed_client():
    """openai 3 is built on httpx2, earlier versions on httpx: responses and exceptions must be the
    installed client's own, or it neither reads the one nor maps the others."""
    assert issubclass(openai.DefaultAsyncHttpxClient, httpx.AsyncClient)
    assert isinstance(StreamTransport(), httpx.AsyncBaseTransport)
    assert issubclass(ResponseTooLarge, httpx.RequestError)
