"""The asyncio HTTP/1.1 transport under the openai client, against real loopback servers that speak
the awkward parts of HTTP/1.1 on purpose (chunked bodies, gzip, close-delimited bodies, 100 Continue,
dropped keep-alive connections, silence, TLS)."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import subprocess

import openai
import pytest

from w4s.llm.backends import OpenAIBackend, Retryable, Unreachable
from w4s.llm.transport import StreamTransport, httpx, proxy_configured

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
            connection.writer.transport.abort()
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

    async def generate(url: str, timeout: float = 5.0):
        backend = OpenAIBackend("m", url, "k", timeout)
        try:
            await backend.generate(
                [{"role": "user", "content": "hi"}],
                n=1,
                temperature=0,
                max_tokens=5,
                json_mode=False,
                seed=None,
            )
        except (Retryable, Unreachable) as exc:
            return type(exc).__name__, str(exc)
        finally:
            await backend.aclose()
        return "ok", ""

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


def test_a_configured_proxy_keeps_the_clients_own_transport(monkeypatch):
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not proxy_configured("https://api.openai.com/v1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_configured("https://api.openai.com/v1")
    assert not proxy_configured("http://127.0.0.1:8000/v1")  # plain http is not routed by HTTPS_PROXY
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert not proxy_configured("https://api.openai.com/v1")
    monkeypatch.delenv("NO_PROXY")
    backend = OpenAIBackend("m", "https://api.openai.com/v1", "k", 5.0)
    assert not isinstance(backend.client._client._transport, StreamTransport)
    asyncio.run(backend.aclose())
    monkeypatch.delenv("HTTPS_PROXY")
    backend = OpenAIBackend("m", "https://api.openai.com/v1", "k", 5.0)
    assert isinstance(backend.client._client._transport, StreamTransport)
    asyncio.run(backend.aclose())
