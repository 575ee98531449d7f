"""Wire protocol between the host and a sandbox worker.

Stdlib only: this module is imported on both sides of the boundary (the host imports it as
``w4s.sandbox.runtime.protocol``; the worker inside the sandbox as ``protocol``).

Framing: every message is one frame, a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON. A frame larger than ``MAX_FRAME`` is a protocol violation.

Values that cross the boundary (answers, arguments and results of proxied calls) are *plain
data*: ``None, bool, int, float, str, bytes, complex, list, tuple, dict, set, frozenset``, nested.
They are encoded as JSON with tags for the types JSON lacks, and decoded into exact builtin types,
so an object that lies about equality, or any other custom class, can never reach the host.
"""

from __future__ import annotations

import json
import math
import struct

MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 200
MAX_ITEMS = 1_000_000  # values in one decoded message: bounds the time a host spends on it
MAX_SAME_HASH = 8  # keys of one set or dict that may share a hash value (honest data: a few at most)
_HEADER = struct.Struct(">I")
_TAG = "__w4s__"
_BIG_INT = 1 << 62


class ProtocolError(Exception):
    """A peer broke the framing or sent a value that is not plain data."""


class PlainDataError(TypeError):
    """A value cannot cross the sandbox boundary because it is not plain data."""


def pack(message: dict) -> bytes:
    """Serialise one message into a frame."""
    try:
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: escaped, it crosses as the same string
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"message cannot be framed: {type(exc).__name__}") from None
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"peer announced a {length}-byte frame; the limit is {MAX_FRAME}")
    return length


HEADER_SIZE = _HEADER.size


def unpack(body: bytes) -> dict:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed frame: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a JSON object")
    return message


# --- blocking helpers (worker side, and the host's thread-based proxies) -------------------------


def send(sock, message: dict) -> None:
    sock.sendall(pack(message))


def _recv_exact(sock, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(sock) -> dict:
    length = frame_length(_recv_exact(sock, HEADER_SIZE))
    return unpack(_recv_exact(sock, length))


# --- plain-data codec ------------------------------------------------------------------------------


def _numpy_scalar(value):
    """numpy scalars are common in generated code; accept them as their Python value."""
    module = type(value).__module__
    if module == "numpy" and hasattr(value, "item"):
        item = value.item()
        if type(item) in (bool, int, float, complex, str, bytes):
            return item
    return None


class Opaque:
    """Stands on the host for a value that is not plain data (a ``re.Match``, a custom object).

    It carries only the truth value the sandbox claimed (not even a type name: nothing the
    candidate chose may reach results); it equals nothing but itself, so ``assert f(x)`` and
    ``assert not f(x)`` behave as with the real object, and no comparison can be won by it. (A
    candidate could claim any truth value, but it could equally return True.)
    """

    __slots__ = ("truth",)

    def __init__(self, truth: bool):
        self.truth = truth

    def __bool__(self) -> bool:
        return self.truth

    def __repr__(self) -> str:
        return "<opaque>"


def _base_value(value):
    """The builtin value inside an instance of a subclass of a builtin type, via the base's methods."""
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes(memoryview(value))
    if isinstance(value, tuple):
        return tuple(tuple.__getitem__(value, i) for i in range(tuple.__len__(value)))
    if isinstance(value, list):
        return [list.__getitem__(value, i) for i in range(list.__len__(value))]
    if isinstance(value, dict):
        return {key: dict.__getitem__(value, key) for key in dict.keys(value)}
    if isinstance(value, frozenset):
        return frozenset(frozenset.__iter__(value))
    if isinstance(value, set):
        return set(set.__iter__(value))
    return None


def encode(value, _depth: int = 0, opaque: bool = False):
    """Turn plain data into a JSON-compatible structure; reject everything else.

    With ``opaque=True`` (function results in code scoring) a value that is not plain data crosses
    as an :class:`Opaque` stand-in instead of failing. Subclasses of builtin containers and scalars
    (``Counter``, ``OrderedDict``, ``namedtuple``, ``IntEnum`` ...) cross as their base type, read
    through the base type's own methods, so an overridden ``__eq__`` or ``__iter__`` is dropped.
    """
    if _depth > MAX_DEPTH:
        raise PlainDataError(f"value nests deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        if -_BIG_INT < value < _BIG_INT:
            return value
        return {_TAG: "int", "v": hex(value)}
    if kind is float:
        if math.isfinite(value):
            return value
        return {_TAG: "float", "v": repr(value)}
    if kind is list:
        return [encode(item, _depth + 1, opaque) for item in value]
    if kind is tuple:
        return {_TAG: "tuple", "v": [encode(item, _depth + 1, opaque) for item in value]}
    if kind is dict:
        if all(type(key) is str for key in value) and _TAG not in value:
            return {key: encode(item, _depth + 1, opaque) for key, item in value.items()}
        pairs = [[encode(k, _depth + 1, opaque), encode(v, _depth + 1, opaque)] for k, v in value.items()]
        return {_TAG: "dict", "v": pairs}
    if kind is set or kind is frozenset:
        return {_TAG: kind.__name__, "v": [encode(item, _depth + 1, opaque) for item in value]}
    if kind is bytes:
        return {_TAG: "bytes", "v": value.hex()}
    if kind is complex:
        return {_TAG: "complex", "v": [encode(value.real), encode(value.imag)]}
    converted = _numpy_scalar(value)
    if converted is None:
        converted = _base_value(value)
    if converted is not None:
        return encode(converted, _depth, opaque)
    if opaque:
        try:
            truth = bool(value)
        except Exception:  # noqa: BLE001 - an object whose truth raises is simply falsy here
            truth = False
        return {_TAG: "opaque", "v": truth}
    raise PlainDataError(
        f"{kind.__module__}.{kind.__qualname__} is not plain data; return None, bool, int, float, "
        "str, bytes, complex, list, tuple, dict, set or frozenset"
    )


def _decode_float(text) -> float:
    if text not in ("nan", "inf", "-inf"):
        raise ProtocolError(f"bad float tag {text!r}")
    return float(text)


def _distinct_hashes(items: list, what: str) -> list:
    """Refuse keys built to collide: ints, floats and tuples hash predictably, so a set of values
    that all hash alike would take quadratic time to build (minutes for one frame)."""
    seen: dict[int, int] = {}
    for item in items:
        try:
            code = hash(item)
        except TypeError:
            raise ProtocolError(f"unhashable {what}") from None
        count = seen.get(code, 0) + 1
        if count > MAX_SAME_HASH:
            raise ProtocolError(f"{what}s built to share one hash value; refused")
        seen[code] = count
    return items


def decode(data, opaque: bool = False, max_items: int = MAX_ITEMS):
    """Inverse of :func:`encode`; produces only exact builtin types (and :class:`Opaque` stand-ins
    where ``opaque`` allows them).

    Linear-time and bounded, whatever the peer sent: at most ``max_items`` values, ``MAX_DEPTH``
    levels, and no values built to collide, in a hashed container or anywhere else: the host's own
    code may hash what crossed (a trusted test's ``set(candidate(x))``), so at most
    ``MAX_SAME_HASH`` distinct ints, floats, complex numbers, tuples or frozensets of one message
    share a hash value (strings and bytes hash with a per-process secret).
    """
    left = max_items
    first: dict[int, object] = {}  # hash value -> the first value of this message that has it
    others: dict[int, list] = {}  # hash value -> the other, distinct values that have it

    def hashed(value):
        try:
            code = hash(value)
        except TypeError:  # a tuple holding a list: it can be no key
            return value
        seen = first.setdefault(code, value)
        if seen is not value and seen != value:
            same = others.setdefault(code, [])
            if value not in same:
                if len(same) + 1 >= MAX_SAME_HASH:
                    raise ProtocolError("values built to share one hash value; refused")
                same.append(value)
        return value

    def walk(node, depth: int):
        nonlocal left
        left -= 1
        if left < 0:
            raise ProtocolError(f"value holds more than {max_items} items")
        if depth > MAX_DEPTH:
            raise ProtocolError(f"value nests deeper than {MAX_DEPTH} levels")
        kind = type(node)
        if node is None or kind is bool or kind is str:
            return node
        if kind is int or kind is float:
            return hashed(node)
        if kind is list:
            return [walk(item, depth + 1) for item in node]
        if kind is not dict:
            raise ProtocolError(f"unexpected JSON type {kind.__name__}")
        tag = node.get(_TAG)
        if tag is None:
            return {key: walk(item, depth + 1) for key, item in node.items()}
        payload = node.get("v")
        try:
            if tag == "int":
                return hashed(int(payload, 16))
            if tag == "float":
                return _decode_float(payload)
            if tag == "tuple":
                return hashed(tuple([walk(item, depth + 1) for item in payload]))
            if tag == "dict":
                pairs = [(walk(k, depth + 1), walk(v, depth + 1)) for k, v in payload]
                _distinct_hashes([k for k, _ in pairs], "dict key")
                return dict(pairs)
            if tag in ("set", "frozenset"):
                items = _distinct_hashes([walk(item, depth + 1) for item in payload], "set item")
                return set(items) if tag == "set" else hashed(frozenset(items))
            if tag == "bytes":
                return bytes.fromhex(payload)
            if tag == "opaque" and opaque:
                return Opaque(payload is True)
            if tag == "complex":
                real, imag = (walk(part, depth + 1) for part in payload)
                if type(real) not in (int, float) or type(imag) not in (int, float):
                    raise ProtocolError("bad complex tag")
                return hashed(complex(real, imag))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad {tag!r} value: {type(exc).__name__}") from None
        raise ProtocolError(f"unknown tag {str(tag)[:40]!r}")

    return walk(data, 0)
