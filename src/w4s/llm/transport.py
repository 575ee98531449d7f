"""A lean HTTP/1.1 transport for the official ``openai`` client, on plain asyncio streams.

The ``openai`` client talks HTTP through ``httpx`` and ``httpcore``; on a small machine their
connection pool and I/O layers cost about a millisecond of host CPU per request, more than the rest
of an ``agent.call_llm`` round trip together. This transport plugs in below the client (the client,
its request building, errors and retries are unchanged) and does what a chat endpoint needs: one
write per request, keep-alive connections reused last-in first-out, Content-Length and chunked
bodies, TLS, and the client's connect/read/write/pool timeouts.

Bodies are read whole before the response is returned (w4s never streams completions); encoded
bodies (gzip) are decoded by the client as usual. Proxies are not supported here: the backend keeps
the client's default transport when one is configured for the endpoint.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from dataclasses import dataclass

from openai import _base_client

httpx = getattr(_base_client, "httpx2", None) or _base_client.httpx  # httpx, or httpx2 in openai 3.x

_MAX_HEAD = 1 << 16  # status line and headers
_NO_BODY_STATUS = {204, 304}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def proxy_configured(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY)."""
    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parsed.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parsed.host)


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def usable(self) -> bool:
        """Not closed by either side, and no stray bytes arrived while idle (a server that speaks out
        of turn has lost track of the exchange)."""
        return not (self.writer.is_closing() or self.reader.at_eof() or len(self.reader._buffer))

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A kept-alive connection was closed by the server before it answered."""


class StreamTransport(httpx.AsyncBaseTransport):
    """``httpx`` transport over asyncio streams; one per client.

    ``max_connections`` caps open connections (requests beyond it wait, up to the pool timeout);
    up to ``max_keepalive`` idle ones are kept per host.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 32,
        max_keepalive: int | None = None,
    ):
        self._ssl = ssl_context
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_connections if max_keepalive is None else max_keepalive
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request):
        timeouts = request.extensions.get("timeout") or {}
        body = await request.aread()
        head = _request_head(request, len(body))
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection became free within the pool timeout") from None
        try:
            return await self._exchange(request, head + body, timeouts)
        finally:
            self._slots.release()

    async def _exchange(self, request, data: bytes, timeouts: dict):
        url = request.url
        key = (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 80))
        for _attempt in range(2):
            connection = await self._connection(key, timeouts)
            try:
                status, reason, headers, content, keep = await self._roundtrip(
                    connection, request.method, data, timeouts
                )
            except _Stale:
                connection.close()
                continue  # the server dropped an idle connection: one more try on a fresh one
            except BaseException:
                connection.close()
                raise
            if keep and not self._closed:
                self._release(key, connection)
            else:
                connection.close()
            return httpx.Response(
                status,
                headers=headers,
                stream=httpx.ByteStream(content),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
            )
        raise httpx.RemoteProtocolError("the server closed the connection without answering")

    async def _connection(self, key: tuple[str, str, int], timeouts: dict) -> _Connection:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable():
                connection.reused = True
                return connection
            connection.close()
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=_MAX_HEAD
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return _Connection(reader, writer)

    def _release(self, key: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            connection.close()
        else:
            idle.append(connection)

    async def _roundtrip(self, connection: _Connection, method: str, data: bytes, timeouts: dict):
        reader, writer = connection.reader, connection.writer
        try:
            writer.write(data)
            async with asyncio.timeout(timeouts.get("write")):
                await writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending the request timed out") from None
        except OSError as exc:
            if connection.reused:
                raise _Stale from None
            raise httpx.WriteError(f"sending the request failed: {exc}") from None
        try:
            async with asyncio.timeout(timeouts.get("read")):
                while True:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        if connection.reused and not getattr(exc, "partial", b""):
                            raise _Stale from None
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection without answering"
                        ) from None
                    line, headers = _parse_head(head)
                    status, reason = _status_line(line)
                    if status >= 200 or status == 101:
                        break  # 1xx (100 Continue, 103 Early Hints) precede the real response
                content, complete = await _read_body(reader, method, status, headers)
        except TimeoutError:
            raise httpx.ReadTimeout("the server did not answer within the read timeout") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            raise httpx.RemoteProtocolError(
                f"malformed or truncated response: {type(exc).__name__}"
            ) from None
        keep = complete and _keep_alive(line, headers)
        return status, reason, headers, content, keep

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _request_head(request, body_length: int) -> bytes:
    url = request.url
    target = url.raw_path or b"/"
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), target)]
    has_length = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue  # the whole body is in hand: always sent with Content-Length
        if lower == b"content-length":
            has_length = True
            value = b"%d" % body_length
        lines.append(name + b": " + value)
    if not has_length and (body_length or request.method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: %d" % body_length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _status_line(line: bytes) -> tuple[int, bytes]:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x status line")
    return int(parts[1]), parts[2] if len(parts) > 2 else b""


def _parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    headers = []
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep:
            raise ValueError("malformed header line")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def _read_body(reader: asyncio.StreamReader, method: str, status: int, headers) -> tuple[bytes, bool]:
    """The body, and whether it ended at a known boundary (so the connection may be reused)."""
    if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
        return b"", True
    encoding = _header(headers, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding.lower():
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(parts), True
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("malformed chunk")
    length = _header(headers, b"content-length")
    if length is not None:
        return await reader.readexactly(int(length)), True
    return await reader.read(), False  # delimited by the end of the connection


def _keep_alive(status_line: bytes, headers) -> bool:
    connection = (_header(headers, b"connection") or b"").lower()
    if status_line.startswith(b"HTTP/1.0"):
        return b"keep-alive" in connection
    return b"close" not in connection
