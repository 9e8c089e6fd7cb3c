"""The peer-link frame codec: round trips of every kind, strict rejection of malformed input, size limit first."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.errors import LocalProtocolError, RemoteProtocolError
from overlay_node.wire import frames as f

ids = st.integers(min_value=0, max_value=f.MAX_ID)
methods = st.text(min_size=1, max_size=f.MAX_METHOD_LEN)
codes = st.text(min_size=1, max_size=f.MAX_CODE_LEN)
messages = st.text(max_size=200)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
bodies = st.dictionaries(st.text(max_size=10), values, max_size=6)

any_frame: st.SearchStrategy[f.Frame] = st.one_of(
    st.builds(f.Request, id=ids, method=methods, body=bodies),
    st.builds(f.Response, id=ids, body=bodies),
    st.builds(f.ErrorResponse, id=ids, code=codes, message=messages),
    st.builds(f.Notice, method=methods, body=bodies),
    st.builds(f.TransferOpen, id=ids, method=methods, header=bodies),
    st.builds(f.TransferChunk, id=ids, data=st.binary(max_size=2000)),
    st.builds(f.TransferCredit, id=ids, credit=st.integers(min_value=1, max_value=f.MAX_CREDIT)),
    st.builds(f.TransferEnd, id=ids),
    st.builds(f.TransferAbort, id=ids, code=codes, message=messages),
    st.builds(f.TransferCancel, id=ids, code=codes, message=messages),
    st.builds(f.TransferAck, id=ids),
    st.builds(f.Ping, nonce=ids),
    st.builds(f.Pong, nonce=ids),
    st.builds(f.Close, reason=codes, message=messages),
    st.builds(
        f.Hello,
        agent=st.text(max_size=f.MAX_AGENT_LEN),
        listen=st.lists(st.text(min_size=1, max_size=60), max_size=f.MAX_LISTEN).map(tuple),
        max_frame=st.integers(min_value=1024, max_value=2**31),
    ),
)


@settings(max_examples=250, deadline=None)
@given(any_frame)
def test_every_frame_kind_round_trips(frame: f.Frame) -> None:
    data = f.encode(frame)
    assert f.decode(data, max_size=len(data)) == frame


def test_tuples_in_bodies_come_back_as_lists() -> None:
    frame = f.Request(id=1, method="m", body={"a": (1, (2, 3))})
    assert f.decode(f.encode(frame)) == f.Request(id=1, method="m", body={"a": [1, [2, 3]]})


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    try:
        frame = f.decode(data)
    except RemoteProtocolError as exc:
        reason = exc.reason
    else:
        assert isinstance(frame, f.Frame)
        return
    assert reason in {"malformed_frame", "unknown_frame", "frame_too_large"}


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)).map(
        lambda pos_val: data[: pos_val[0]] + bytes([pos_val[1]]) + data[pos_val[0] + 1 :]
    )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_frames_raise_only_remote_protocol_error(data: st.DataObject) -> None:
    frame = data.draw(any_frame)
    raw = f.encode(frame)
    mutated = data.draw(_mutations(raw))
    cut = data.draw(st.integers(0, len(mutated)))
    for candidate in (mutated, mutated[:cut]):
        try:
            f.decode(candidate)
        except RemoteProtocolError:
            pass


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "id", "m", "b", "c", "msg", "h", "d", "n", "r"]), values, max_size=6))
def test_arbitrary_maps_raise_only_remote_protocol_error(obj: dict[str, Any]) -> None:
    try:
        f.decode(cbor2.dumps(obj))
    except RemoteProtocolError:
        pass


def test_size_limit_is_checked_before_parsing() -> None:
    garbage = b"\xff" * 5000  # not CBOR at all: the size check answers first
    with pytest.raises(RemoteProtocolError) as info:
        f.decode(garbage, max_size=4096)
    assert info.value.reason == "frame_too_large"
    frame = f.TransferChunk(id=1, data=b"x" * 5000)
    with pytest.raises(RemoteProtocolError) as info:
        f.decode(f.encode(frame), max_size=5000)
    assert info.value.reason == "frame_too_large"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed_frame"),
        (cbor2.dumps({"t": "ping", "n": 1}) + b"\x00", "malformed_frame"),  # trailing bytes
        (cbor2.dumps([1, 2]), "malformed_frame"),  # not a map
        (cbor2.dumps({"t": "nope"}), "unknown_frame"),
        (cbor2.dumps({"id": 1}), "unknown_frame"),
        (cbor2.dumps({"t": 7}), "unknown_frame"),
        (cbor2.dumps({"t": "ping"}), "malformed_frame"),  # missing field
        (cbor2.dumps({"t": "ping", "n": -1}), "malformed_frame"),
        (cbor2.dumps({"t": "ping", "n": True}), "malformed_frame"),
        (cbor2.dumps({"t": "ping", "n": 2**63}), "malformed_frame"),
        (cbor2.dumps({"t": "req", "id": 1, "m": "", "b": {}}), "malformed_frame"),
        (cbor2.dumps({"t": "req", "id": 1, "m": "x" * 129, "b": {}}), "malformed_frame"),
        (cbor2.dumps({"t": "req", "id": 1, "m": "m", "b": []}), "malformed_frame"),
        (cbor2.dumps({"t": "req", "id": 1, "m": "m", "b": {1: 2}}), "malformed_frame"),
        (cbor2.dumps({"t": "req", "id": 1, "m": "m", "b": {"a": {"b": {1: 2}}}}), "malformed_frame"),
        (cbor2.dumps({"t": "tchunk", "id": 1, "d": "text"}), "malformed_frame"),
        (cbor2.dumps({"t": "tcredit", "id": 1, "n": 0}), "malformed_frame"),
        (cbor2.dumps({"t": "tcredit", "id": 1, "n": 2**31 + 1}), "malformed_frame"),
        (cbor2.dumps({"t": "hello", "agent": "a", "listen": "x", "max_frame": 4096}), "malformed_frame"),
        (cbor2.dumps({"t": "hello", "agent": "a", "listen": [], "max_frame": 10}), "malformed_frame"),
        (cbor2.dumps({"t": "close", "r": "", "msg": ""}), "malformed_frame"),
        (bytes.fromhex("a26174647069676e61746470696e67"), "malformed_frame"),  # truncated garbage
        (b"\xa2\x61t\x64ping\x61t\x64ping", "malformed_frame"),  # duplicate key
        (b"\xbf\x61t\x64ping\x61n\x01\xff", "malformed_frame"),  # indefinite-length map
        (b"\xa2\x61t\x64ping\x61n\xc2\x41\x01", "malformed_frame"),  # bignum tag
        (b"\xa2\x61t\x64ping\x61n\xc1\x01", "malformed_frame"),  # epoch-date tag
        (b"\xa2\x61t\x64ping\x61n\xd8\x1c\x01", "malformed_frame"),  # shared-value tag
        (b"\xa2\x61t\x64ping\x61n\xd9\x0f\xff\x01", "malformed_frame"),  # unknown tag
        (b"\xa2\x61t\x64ping\x61n\xf7", "malformed_frame"),  # undefined
    ],
)
def test_malformed_frames(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        f.decode(data)
    assert info.value.reason == reason


def test_deep_bodies_are_refused() -> None:
    deep: Any = 1
    for _ in range(f.MAX_BODY_DEPTH + 1):
        deep = [deep]
    raw = cbor2.dumps({"t": "note", "m": "x", "b": {"a": deep}})
    with pytest.raises(RemoteProtocolError) as info:
        f.decode(raw)
    assert info.value.reason == "malformed_frame"
    with pytest.raises(LocalProtocolError):
        f.Notice(method="x", body={"a": deep})


def test_extra_keys_are_ignored() -> None:
    assert f.decode(cbor2.dumps({"t": "ping", "n": 5, "future": [1]})) == f.Ping(nonce=5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: f.Request(id=-1, method="m"),
        lambda: f.Request(id=1, method="m", body={"a": {1, 2}}),
        lambda: f.Request(id=1, method="m", body={"a": 2**64}),
        lambda: f.Request(id=1, method="m", body={("k",): 1}),  # type: ignore[dict-item]
        lambda: f.Response(id=1, body=[]),  # type: ignore[arg-type]
        lambda: f.ErrorResponse(id=1, code="", message=""),
        lambda: f.ErrorResponse(id=1, code="c", message="x" * (f.MAX_MESSAGE_LEN + 1)),
        lambda: f.TransferChunk(id=1, data=bytearray(b"x")),  # type: ignore[arg-type]
        lambda: f.TransferCredit(id=1, credit=0),
        lambda: f.Hello(agent="a", listen=["x"]),  # type: ignore[arg-type]
        lambda: f.Hello(agent="a", listen=tuple(str(i) for i in range(f.MAX_LISTEN + 1))),
        lambda: f.Close(reason="r" * (f.MAX_CODE_LEN + 1)),
    ],
)
def test_building_invalid_frames_is_a_local_error(build: Any) -> None:
    with pytest.raises(LocalProtocolError):
        build()
