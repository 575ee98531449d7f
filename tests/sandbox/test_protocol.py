import json
import math
import struct

import pytest

from w4s.sandbox.runtime import protocol


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**62 - 1,
        2**200,
        -(2**5000),
        1.5,
        -0.0,
        "text",
        "ünï",
        b"\x00\xff",
        [1, [2, [3]]],
        (1, (2, "a")),
        {"a": 1, "b": [1, 2]},
        {1: "x", (1, 2): "y", None: 3},
        {1, 2, 3},
        frozenset({"a"}),
        3 + 4j,
        {"__w4s__": "not a tag"},
        [],
        (),
        {},
        set(),
    ],
)
def test_round_trip_keeps_exact_types(value):
    decoded = protocol.decode(json.loads(json.dumps(protocol.encode(value))))
    assert decoded == value
    assert type(decoded) is type(value)


def test_non_finite_floats():
    for value in (math.inf, -math.inf):
        assert protocol.decode(protocol.encode(value)) == value
    assert math.isnan(protocol.decode(protocol.encode(math.nan)))


class AlwaysEqual:
    def __eq__(self, other):
        return True


class LyingInt(int):
    def __eq__(self, other):
        return True


class LyingStr(str):
    def __eq__(self, other):
        return True


class LyingList(list):
    def __eq__(self, other):
        return True

    def __iter__(self):
        return iter(["lie"])


@pytest.mark.parametrize("value", [AlwaysEqual(), [1, AlwaysEqual()], object(), print, (x for x in ())])
def test_non_plain_values_are_refused(value):
    with pytest.raises(protocol.PlainDataError, match="is not plain data"):
        protocol.encode(value)


@pytest.mark.parametrize(
    ("value", "plain"),
    [(LyingInt(3), 3), (LyingStr("x"), "x"), ({"k": LyingInt(1)}, {"k": 1}), (LyingList([1, 2]), [1, 2])],
)
def test_subclasses_of_builtins_cross_as_their_honest_base_value(value, plain):
    decoded = protocol.decode(protocol.encode(value))
    assert type(decoded) is type(plain)
    assert repr(decoded) == repr(plain)
    assert decoded != "lie" and decoded != object()


def test_counter_ordereddict_and_namedtuple_cross_as_base_types():
    import collections

    point = collections.namedtuple("Point", "x y")(1, 2)
    values = [collections.Counter("aab"), collections.OrderedDict(a=1), point]
    assert [protocol.decode(protocol.encode(v)) for v in values] == [{"a": 2, "b": 1}, {"a": 1}, (1, 2)]


def test_opaque_values_only_where_allowed():
    import re

    match = re.match("a", "a")
    with pytest.raises(protocol.PlainDataError):
        protocol.encode(match)
    encoded = protocol.encode(match, opaque=True)
    with pytest.raises(protocol.ProtocolError, match="unknown tag"):
        protocol.decode(encoded)
    stand_in = protocol.decode(encoded, opaque=True)
    assert bool(stand_in) is True and stand_in != match and stand_in != True  # noqa: E712
    assert repr(stand_in) == "<opaque>"  # no type name the candidate chose crosses
    assert encoded["v"] is True


def test_depth_is_bounded_both_ways():
    deep = []
    for _ in range(protocol.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(protocol.PlainDataError, match="deeper"):
        protocol.encode(deep)
    text = "[" * 10_000 + "]" * 10_000
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack(text.encode())


@pytest.mark.parametrize(
    "data",
    [
        {"__w4s__": "int", "v": "zz"},
        {"__w4s__": "float", "v": "1e400x"},
        {"__w4s__": "set", "v": [[1, 2]]},
        {"__w4s__": "dict", "v": [[[1], 2]]},
        {"__w4s__": "object", "v": "os.system"},
        {"__w4s__": "bytes", "v": "xyz"},
    ],
)
def test_malformed_tags_are_protocol_errors(data):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data)


def test_framing_limits():
    frame = protocol.pack({"op": "x"})
    (length,) = struct.unpack(">I", frame[:4])
    assert protocol.unpack(frame[4 : 4 + length]) == {"op": "x"}
    with pytest.raises(protocol.ProtocolError, match="limit"):
        protocol.frame_length(struct.pack(">I", protocol.MAX_FRAME + 1))
    with pytest.raises(protocol.ProtocolError, match="malformed"):
        protocol.unpack(b"{not json")
    with pytest.raises(protocol.ProtocolError, match="JSON object"):
        protocol.unpack(b"[1, 2]")
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack(b"1" * 5000)  # int longer than Python's digit limit


def _colliding_ints(count: int) -> list[int]:
    """Distinct ints that all hash alike (CPython hashes ints modulo 2**61 - 1)."""
    modulus = (1 << 61) - 1
    return [7 + i * modulus for i in range(count)]


@pytest.mark.parametrize("tag", ["set", "frozenset", "dict"])
def test_keys_built_to_collide_are_refused_in_linear_time(tag):
    keys = _colliding_ints(200_000)
    assert len({hash(k) for k in keys}) == 1
    encoded = [protocol.encode(k) for k in keys]
    payload = [[k, 0] for k in encoded] if tag == "dict" else encoded
    with pytest.raises(protocol.ProtocolError, match="share one hash"):
        protocol.decode({"__w4s__": tag, "v": payload})
    # Honest keys that happen to share a hash (-1 and -2 in CPython) still cross.
    assert protocol.decode(protocol.encode({-1, -2, 0, 0.5})) == {-1, -2, 0, 0.5}
    few = set(_colliding_ints(protocol.MAX_SAME_HASH))
    assert protocol.decode(protocol.encode(few)) == few


_MASK = (1 << 64) - 1
_PRIME_1, _PRIME_2, _PRIME_5 = 11400714785074694791, 14029467366897019727, 2870177450012600261


def _colliding_pairs(count: int) -> list[tuple[int, int]]:
    """Distinct pairs of ints that all hash alike: CPython's tuple hash (xxHash lanes over the
    items' hashes) solved for the second item, whose hash an int can take at will."""
    modulus = (1 << 61) - 1
    rotate_left = lambda x: ((x << 31) | (x >> 33)) & _MASK  # noqa: E731
    rotate_right = lambda x: ((x >> 31) | (x << 33)) & _MASK  # noqa: E731
    last = rotate_right(
        ((hash((0, 0)) - (2 ^ (_PRIME_5 ^ 3527539))) & _MASK) * pow(_PRIME_1, -1, 1 << 64) & _MASK
    )
    pairs, first = [], 1
    while len(pairs) < count:
        after_first = rotate_left((_PRIME_5 + first * _PRIME_2) & _MASK) * _PRIME_1 & _MASK
        lane = (last - after_first) * pow(_PRIME_2, -1, 1 << 64) & _MASK
        second = lane - (1 << 64) if lane >> 63 else lane
        if -modulus < second < modulus and second != -1:  # an int hashes to itself in that range
            pairs.append((first, second))
        first += 1
    return pairs


@pytest.mark.parametrize("kind", ["ints", "pairs"])
def test_values_built_to_collide_are_refused_in_any_container(kind):
    """Host code may put what crossed into a set (a trusted test's ``set(candidate(x))``): a list
    of values that all hash alike would stall the host for minutes there, holding the GIL."""
    values = _colliding_ints(50_000) if kind == "ints" else _colliding_pairs(50_000)
    assert len(set(map(hash, values))) == 1 and len(set(values[:100])) == 100
    for container in (list, tuple):
        with pytest.raises(protocol.ProtocolError, match="share one hash"):
            protocol.decode(protocol.encode(container(values)), opaque=True)
    with pytest.raises(protocol.ProtocolError, match="share one hash"):
        protocol.decode(protocol.encode({"a": values[:20], "b": [values[20:40]]}))
    # Honest data: repeated values, and the few distinct ones that share a hash, still cross.
    honest = [0, 0, 0.0, -1, -2, (1, 2), (1, 2), *values[: protocol.MAX_SAME_HASH]] * 100
    assert protocol.decode(protocol.encode(honest)) == honest


def test_the_number_of_values_is_bounded():
    with pytest.raises(protocol.ProtocolError, match="more than 1000 items"):
        protocol.decode(list(range(2000)), max_items=1000)
    assert protocol.decode(list(range(999)), max_items=1000) == list(range(999))


@pytest.mark.parametrize(
    "data",
    [
        {"__w4s__": "complex", "v": [1, "2"]},
        {"__w4s__": "complex", "v": [1, [2]]},
        {"__w4s__": "tuple", "v": 5},
        {"__w4s__": ["x"], "v": 1},
    ],
)
def test_more_malformed_tags(data):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data)
