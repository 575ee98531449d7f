"""A lean HTTP/1.1 transport for the official ``openai`` client, on asyncio's public protocol API.

The ``openai`` client talks HTTP through ``httpx`` (``httpx2`` from openai 3) and its ``httpcore``;
on a small machine their connection pool and I/O layers cost about 0.4 ms more host CPU per request
than this transport does (docs/performance.md), as much as the rest of an ``agent.call_llm`` round
trip together. This transport plugs in below the client through the library's public transport
interface (the client, its request building, errors and retries are unchanged) and does what a chat
endpoint needs: one write per request, keep-alive connections reused last-in first-out (with one
transparent retry when a kept-alive connection turns out dead), Content-Length, chunked and
close-delimited bodies, 1xx responses skipped, TLS, and the client's connect/read/write/pool
timeouts.

It is built on public interfaces only: ``AsyncBaseTransport``, ``Response`` and the exception types
of the HTTP library, and ``asyncio.Protocol`` with ``loop.create_connection`` (the protocol owns its
receive buffer, so it can tell an idle connection that received bytes out of turn).

Everything a server sends is bounded: the head (status line and headers) to 64 KiB, 16 KiB a line
and 100 lines (a chunked body's trailers and chunk-size lines likewise), and the body to
``max_response_bytes`` (64 MiB by default), counted as it arrives (a chunked body with its
framing), whatever delimits it. An oversized body fails the request with
:class:`ResponseTooLarge`; an oversized head is a protocol error. Bodies are read whole before the
response is returned (w4s never streams completions) and handed to the client in pieces of 16 KiB,
so that encoded bodies (gzip, decoded by the client as usual) decode piece by piece and a reader
such as :func:`read_json` can stop at its own cap. Proxies are not supported here: the backend
keeps the client's default transport when one is configured for the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.request

import openai


def _http_library():
    """The HTTP library the installed ``openai`` client is built on: ``httpx2`` (openai 3) or
    ``httpx`` (openai 1 and 2). A transport must return that library's responses and raise its
    exceptions, or the client neither reads the one nor maps the others."""
    try:
        import httpx2
    except ImportError:
        pass
    else:
        if issubclass(openai.DefaultAsyncHttpxClient, httpx2.AsyncClient):
            return httpx2
    import httpx

    return httpx


httpx = _http_library()

MAX_RESPONSE_BYTES = 64 << 20  # default cap on a response body
_MAX_HEAD = 64 << 10  # status line and headers together
_MAX_LINE = 16 << 10  # one header line, or a chunk-size line
_MAX_HEADERS = 100  # header lines (and trailer lines)
_PIECE = 16 << 10  # a body is handed to the client in pieces of this size
_READ_HIGH_WATER = 1 << 20  # buffered bytes nobody asked for yet: stop reading the socket
_NO_BODY_STATUS = {204, 304}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DIGITS = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_STATUS = re.compile(rb"[1-9][0-9][0-9]")


class ResponseTooLarge(httpx.TransportError):
    """The response body is over the transport's cap: the request fails and the connection is
    dropped (the client reports it as a connection error whose cause is this exception)."""


def proxy_configured(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY)."""
    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parsed.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parsed.host)


class _Closed(Exception):
    """The connection ended before the bytes asked for arrived."""


class _HeadTooLarge(Exception):
    """A line or head is over its limit."""


class _Stale(Exception):
    """A kept-alive connection was closed by the server before it answered."""


class _Wire(asyncio.Protocol):
    """One connection: receives into its own buffer, wakes the one reader waiting on it, and tells
    whether it can be reused. Any byte that arrives while it idles in the pool closes it: a server
    that speaks out of turn has lost track of the exchange."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False  # the server closed its side, or the connection was lost
        self.idle = False  # in the pool, between exchanges
        self.reused = False
        self.waiter: asyncio.Future | None = None
        self.drained: asyncio.Future | None = None
        self.write_paused = False
        self.read_paused = False

    # asyncio.Protocol callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.idle:
            self.transport.close()
            return
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and self.waiter is None and not self.read_paused:
            self.read_paused = True  # resumed when the reader asks for more
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # used by the transport

    def usable(self) -> bool:
        return not (self.ended or self.buffer or self.transport.is_closing())

    def close(self) -> None:
        self.transport.close()

    def send(self, data: bytes) -> None:
        if self.ended or self.transport.is_closing():
            raise _Closed
        self.transport.write(data)

    async def drain(self) -> None:
        while self.write_paused and not self.ended:
            self.drained = self.loop.create_future()
            await self.drained
        if self.ended:
            raise _Closed

    async def _more(self) -> None:
        """Wait until more bytes arrive; :class:`_Closed` if the connection has ended."""
        if self.ended:
            raise _Closed
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def until(self, separator: bytes, limit: int) -> bytes:
        """The bytes up to and including ``separator``, at most ``limit`` of them."""
        buffer = self.buffer
        start = 0
        while True:
            end = buffer.find(separator, start)
            if end >= 0:
                end += len(separator)
                break
            if len(buffer) > limit:
                raise _HeadTooLarge
            start = max(0, len(buffer) - len(separator) + 1)
            await self._more()
        if end > limit:
            raise _HeadTooLarge
        data = bytes(buffer[:end])
        del buffer[:end]
        return data

    async def exactly(self, n: int) -> bytes:
        buffer = self.buffer
        while len(buffer) < n:
            await self._more()
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    async def some(self) -> bytes:
        """What has arrived (waiting for something if nothing has); ``b""`` at the end."""
        buffer = self.buffer
        while not buffer:
            if self.ended:
                return b""
            await self._more()
        data = bytes(buffer)
        buffer.clear()
        return data


class _Body(httpx.AsyncByteStream):
    """A body read whole, handed out in pieces of ``_PIECE`` bytes."""

    def __init__(self, content: bytes):
        self.content = content

    async def __aiter__(self):
        content = self.content
        if len(content) <= _PIECE:
            yield content
            return
        view = memoryview(content)
        for start in range(0, len(content), _PIECE):
            yield bytes(view[start : start + _PIECE])


class StreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 transport over asyncio connections; one per client.

    ``max_connections`` caps open connections (requests beyond it wait, up to the pool timeout);
    up to ``max_keepalive`` idle ones are kept per host. A response body over
    ``max_response_bytes`` fails its request with :class:`ResponseTooLarge`.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 32,
        max_keepalive: int | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_connections if max_keepalive is None else max_keepalive
        self._max_body = max_response_bytes
        self._idle: dict[tuple[str, str, int], list[_Wire]] = {}
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
            wire = await self._connection(key, timeouts)
            try:
                status, reason, headers, content, keep = await self._roundtrip(
                    wire, request.method, data, timeouts
                )
            except _Stale:
                wire.close()
                continue  # the server dropped an idle connection: one more try on a fresh one
            except BaseException:
                wire.close()
                raise
            if keep and not self._closed and wire.usable():
                self._release(key, wire)
            else:
                wire.close()
            return httpx.Response(
                status,
                headers=headers,
                stream=_Body(content),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
            )
        raise httpx.RemoteProtocolError("the server closed the connection without answering")

    async def _connection(self, key: tuple[str, str, int], timeouts: dict) -> _Wire:
        idle = self._idle.get(key)
        while idle:
            wire = idle.pop()
            wire.idle = False
            if wire.usable():
                wire.reused = True
                return wire
            wire.close()
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, wire = await loop.create_connection(
                    _Wire, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return wire

    def _release(self, key: tuple[str, str, int], wire: _Wire) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            wire.close()
        else:
            wire.idle = True
            idle.append(wire)

    async def _roundtrip(self, wire: _Wire, method: str, data: bytes, timeouts: dict):
        try:
            wire.send(data)
            if wire.write_paused:
                async with asyncio.timeout(timeouts.get("write")):
                    await wire.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending the request timed out") from None
        except _Closed:
            if wire.reused:
                raise _Stale from None
            raise httpx.WriteError("the connection closed while the request was being sent") from None
        try:
            async with asyncio.timeout(timeouts.get("read")):
                answered = False
                while True:
                    try:
                        head = await wire.until(b"\r\n\r\n", _MAX_HEAD)
                    except _Closed:
                        if wire.reused and not answered and not wire.buffer:
                            raise _Stale from None
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection without answering"
                        ) from None
                    line, headers = _parse_head(head)
                    status, reason = _status_line(line)
                    answered = True
                    if status >= 200 or status == 101:
                        break  # 1xx (100 Continue, 103 Early Hints) precede the real response
                content, complete = await _read_body(wire, method, status, headers, self._max_body)
        except TimeoutError:
            raise httpx.ReadTimeout("the server did not answer within the read timeout") from None
        except _HeadTooLarge:
            raise httpx.RemoteProtocolError(
                f"the response head is over {_MAX_HEAD} bytes, {_MAX_LINE} a line or {_MAX_HEADERS} "
                "lines; check that the base URL points at an OpenAI-compatible server"
            ) from None
        except (_Closed, ValueError) as exc:
            what = "truncated" if isinstance(exc, _Closed) else "malformed"
            raise httpx.RemoteProtocolError(
                f"{what} response; check that the base URL points at an OpenAI-compatible server"
            ) from None
        keep = complete and status != 101 and _keep_alive(line, headers)
        return status, reason, headers, content, keep

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for wire in idle:
                wire.close()
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
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not _STATUS.fullmatch(parts[1]):
        raise ValueError("not an HTTP/1.x status line")
    return int(parts[1]), parts[2] if len(parts) > 2 else b""


def _parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    return lines[0], _header_fields(lines[1:])


def _header_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    if len(lines) > _MAX_HEADERS:
        raise _HeadTooLarge
    headers = []
    for raw in lines:
        if len(raw) > _MAX_LINE:
            raise _HeadTooLarge
        name, sep, value = raw.partition(b":")
        if not sep:
            raise ValueError("malformed header line")
        headers.append((name.strip(), value.strip()))
    return headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _too_large(limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the response body is over the {limit}-byte cap; raise max_response_bytes if the endpoint's "
        "replies are really this large"
    )


async def _read_body(wire: _Wire, method: str, status: int, headers, limit: int) -> tuple[bytes, bool]:
    """The body, and whether it ended at a known boundary (so the connection may be reused)."""
    if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
        return b"", True
    encoding = _header(headers, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding.lower():
        return await _read_chunked(wire, limit), True
    length = _content_length(headers)
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        return await wire.exactly(length), True
    body = bytearray()  # delimited by the end of the connection
    while part := await wire.some():
        if len(body) + len(part) > limit:
            raise _too_large(limit)
        body += part
    return bytes(body), False


async def _read_chunked(wire: _Wire, limit: int) -> bytes:
    """A chunked body. The cap counts it as sent (size lines and the line ends after each chunk
    included), so that many tiny chunks cannot cost more than one large one."""
    body = bytearray()
    sent = 0
    while True:
        size_line = await wire.until(b"\r\n", _MAX_LINE)
        digits = size_line[:-2].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(digits):
            raise ValueError("malformed chunk size")
        size = int(digits, 16)
        sent += len(size_line) + (size + 2 if size else 0)
        if sent > limit:
            raise _too_large(limit)
        if size == 0:
            trailers = 0  # read and dropped, bounded like headers
            while await wire.until(b"\r\n", _MAX_LINE) != b"\r\n":
                trailers += 1
                if trailers > _MAX_HEADERS:
                    raise _HeadTooLarge
            return bytes(body)
        chunk = await wire.exactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ValueError("malformed chunk")
        body += memoryview(chunk)[:-2]


def _content_length(headers) -> int | None:
    values = {value for key, value in headers if key.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        raise ValueError("conflicting Content-Length headers")
    (value,) = values
    if not _DIGITS.fullmatch(value):
        raise ValueError("malformed Content-Length")
    return int(value)


def _keep_alive(status_line: bytes, headers) -> bool:
    connection = (_header(headers, b"connection") or b"").lower()
    if status_line.startswith(b"HTTP/1.0"):
        return b"keep-alive" in connection
    return b"close" not in connection


async def read_json(response, max_bytes: int = MAX_RESPONSE_BYTES):
    """The JSON value of an unread ``response``'s body, decoded piece by piece (gzip included) and
    refused with :class:`ResponseTooLarge` once over ``max_bytes``, whichever transport delivered
    it; the response is closed. A malformed body raises ``ValueError``."""
    parts, total = [], 0
    try:
        async for part in response.aiter_bytes():
            total += len(part)
            if total > max_bytes:
                raise _too_large(max_bytes)
            parts.append(part)
    finally:
        await response.aclose()
    return json.loads(b"".join(parts))
