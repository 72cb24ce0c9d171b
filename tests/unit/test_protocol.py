"""The worker protocol codec: frame shapes, refusals, and the fixed-size field encoders."""

from __future__ import annotations

import pytest

from madrpc import protocol as p
from madrpc.errors import ProtocolError

KEY = p.encode_key(42)
OTHER_KEY = p.encode_key(43)
CREDIT = p.encode_credit(4)
REQUEST_META = p.encode_request_meta(KEY, 5000, 0, 0)
CALL_META = p.encode_call_meta(7, KEY)
BODY = b'{"jsonrpc":"2.0","method":"f","id":1}'
RESULT = b'"result":1'

WELL_FORMED = {
    "READY-with-info": [p.READY, b'{"contexts":2}'],
    "READY-bare": [p.READY],
    "HEARTBEAT-with-stats": [p.HEARTBEAT, b"{}"],
    "HEARTBEAT-bare": [p.HEARTBEAT],
    "DISCONNECT-with-reason": [p.DISCONNECT, b"shutdown"],
    "DISCONNECT-bare": [p.DISCONNECT],
    "REQUEST-one": [p.REQUEST, REQUEST_META, b"f", BODY],
    "REQUEST-two": [p.REQUEST, REQUEST_META, b"f", BODY, REQUEST_META, b"g", b"{}"],
    "REPLY-credit-only": [p.REPLY, CREDIT],
    "REPLY-two": [p.REPLY, CREDIT, KEY, RESULT, OTHER_KEY, RESULT],
    "CREDIT": [p.CREDIT, CREDIT],
    "CALL-one": [p.CALL, CALL_META, BODY],
    "CALL-two": [p.CALL, CALL_META, BODY, CALL_META, BODY],
    "RESULT-one": [p.RESULT, KEY, RESULT],
    "RESULT-two": [p.RESULT, KEY, RESULT, OTHER_KEY, b""],
    "CANCEL-one": [p.CANCEL, KEY],
    "CANCEL-two": [p.CANCEL, KEY, OTHER_KEY],
    "DRAIN": [p.DRAIN],
}

MALFORMED = {
    "READY-two-frames": [p.READY, b"{}", b"{}"],
    "HEARTBEAT-two-frames": [p.HEARTBEAT, b"{}", b"{}"],
    "DISCONNECT-two-frames": [p.DISCONNECT, b"a", b"b"],
    "REQUEST-empty": [p.REQUEST],
    "REQUEST-missing-body": [p.REQUEST, REQUEST_META, b"f"],
    "REQUEST-extra-frame": [p.REQUEST, REQUEST_META, b"f", BODY, REQUEST_META],
    "REQUEST-short-meta": [p.REQUEST, REQUEST_META[:-1], b"f", BODY],
    "REQUEST-long-meta": [p.REQUEST, REQUEST_META + b"\0", b"f", BODY],
    "REQUEST-second-meta-wrong": [p.REQUEST, REQUEST_META, b"f", BODY, KEY, b"g", BODY],
    "REPLY-empty": [p.REPLY],
    "REPLY-key-without-fragment": [p.REPLY, CREDIT, KEY],
    "REPLY-short-credit": [p.REPLY, CREDIT[:3], KEY, RESULT],
    "REPLY-short-key": [p.REPLY, CREDIT, KEY[:7], RESULT],
    "CREDIT-empty": [p.CREDIT],
    "CREDIT-two-frames": [p.CREDIT, CREDIT, CREDIT],
    "CREDIT-wrong-size": [p.CREDIT, KEY],
    "CALL-empty": [p.CALL],
    "CALL-meta-without-body": [p.CALL, CALL_META],
    "CALL-short-meta": [p.CALL, KEY, BODY],
    "RESULT-empty": [p.RESULT],
    "RESULT-key-without-fragment": [p.RESULT, KEY],
    "RESULT-long-key": [p.RESULT, KEY + b"\0", RESULT],
    "CANCEL-empty": [p.CANCEL],
    "CANCEL-short-key": [p.CANCEL, KEY, b"\0" * 7],
    "DRAIN-with-body": [p.DRAIN, b"x"],
}


@pytest.mark.parametrize("frames", WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_a_well_formed_message_decodes_into_its_command_and_body_frames(
    frames: list[bytes],
) -> None:
    message = p.decode([p.TAG, *frames])

    assert (message.command, message.frames) == (frames[0], frames[1:])


@pytest.mark.parametrize("frames", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_message_with_the_wrong_frames_for_its_command_is_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError, match=f"malformed {frames[0].decode()}"):
        p.decode([p.TAG, *frames])


@pytest.mark.parametrize("frames", [[], [p.TAG]], ids=["no-frames", "tag-only"])
def test_a_message_shorter_than_tag_and_command_is_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError, match="too short"):
        p.decode(frames)


@pytest.mark.parametrize(
    "tag", [b"MDPW01", b"", b"madrpc-w1", b"\xff\xfe"], ids=["majordomo", "empty", "lower", "bin"]
)
def test_a_message_with_a_foreign_tag_is_refused(tag: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a MaDRPC"):
        p.decode([tag, p.HEARTBEAT])


@pytest.mark.parametrize(
    "tag", [b"MADRPC-W2", b"MADRPC-W0", b"MADRPC-W10", b"MADRPC-W"],
    ids=["newer", "older", "two-digits", "no-version"],
)
def test_a_peer_speaking_another_protocol_version_gets_a_version_mismatch(tag: bytes) -> None:
    with pytest.raises(ProtocolError, match="version mismatch"):
        p.decode([tag, p.READY, b"{}"])


def test_the_version_mismatch_names_both_versions() -> None:
    with pytest.raises(ProtocolError) as caught:
        p.decode([b"MADRPC-W2", p.READY])

    assert "MADRPC-W2" in str(caught.value) and p.TAG.decode() in str(caught.value)


@pytest.mark.parametrize(
    "command", [b"PING", b"", b"ready", b"READY ", b"\x00"],
    ids=["unknown", "empty", "lowercase", "trailing-space", "binary"],
)
def test_an_unknown_command_is_refused(command: bytes) -> None:
    with pytest.raises(ProtocolError, match="unknown command"):
        p.decode([p.TAG, command])


def test_the_tag_carries_the_protocol_name_and_version() -> None:
    assert p.TAG == b"MADRPC-W1"


def test_message_builds_frames_that_decode_back() -> None:
    message = p.decode(p.message(p.CANCEL, KEY, OTHER_KEY))

    assert (message.command, message.frames) == (p.CANCEL, [KEY, OTHER_KEY])


def test_json_message_builds_a_message_whose_body_reads_back_as_json() -> None:
    message = p.decode(p.json_message(p.READY, {"contexts": 2, "methods": ["f"]}))

    assert message.json() == {"contexts": 2, "methods": ["f"]}


# ================================================================ Message helpers


@pytest.mark.parametrize(
    "frames", [[p.HEARTBEAT], [p.HEARTBEAT, b""]], ids=["absent", "empty-frame"]
)
def test_a_message_without_a_body_reads_as_an_empty_json_object(frames: list[bytes]) -> None:
    assert p.decode([p.TAG, *frames]).json() == {}


def test_a_body_that_is_not_json_raises_a_protocol_error() -> None:
    message = p.decode([p.TAG, p.READY, b"{not json"])

    with pytest.raises(ProtocolError, match="READY"):
        message.json()


def test_pairs_groups_the_frames_after_the_credit_into_key_and_fragment() -> None:
    message = p.decode([p.TAG, p.REPLY, CREDIT, KEY, b"a", OTHER_KEY, b"b"])

    assert message.pairs(1) == [(KEY, b"a"), (OTHER_KEY, b"b")]


def test_pairs_of_a_reply_with_only_a_credit_is_empty() -> None:
    assert p.decode([p.TAG, p.REPLY, CREDIT]).pairs(1) == []


def test_pairs_groups_all_frames_by_default() -> None:
    message = p.decode([p.TAG, p.RESULT, KEY, b"a", OTHER_KEY, b"b"])

    assert message.pairs() == [(KEY, b"a"), (OTHER_KEY, b"b")]


def test_credit_reads_the_credit_frame() -> None:
    assert p.decode([p.TAG, p.REPLY, p.encode_credit(17)]).credit() == 17


# ================================================================ field encoders


@pytest.mark.parametrize("key", [0, 1, 2**32, 2**64 - 1])
def test_a_key_round_trips_through_eight_bytes(key: int) -> None:
    encoded = p.encode_key(key)

    assert (len(encoded), p.decode_key(encoded)) == (p.KEY_SIZE, key)


def test_keys_are_big_endian_so_they_sort_like_their_numbers() -> None:
    assert sorted([p.encode_key(256), p.encode_key(1)]) == [p.encode_key(1), p.encode_key(256)]


@pytest.mark.parametrize("credit", [0, 1, 2**32 - 1])
def test_a_credit_round_trips_through_four_bytes(credit: int) -> None:
    encoded = p.encode_credit(credit)

    assert (len(encoded), p.decode_credit(encoded)) == (4, credit)


def test_request_meta_round_trips() -> None:
    meta = p.decode_request_meta(p.encode_request_meta(KEY, 5000, 250, 3))

    assert meta == p.RequestMeta(key=KEY, timeout_ms=5000, cpu_limit_ms=250, depth=3)


def test_request_meta_truncates_fractional_milliseconds() -> None:
    meta = p.decode_request_meta(p.encode_request_meta(KEY, 1500.9, 99.99, 0))

    assert (meta.timeout_ms, meta.cpu_limit_ms) == (1500, 99)


def test_request_meta_clamps_a_passed_deadline_to_zero() -> None:
    meta = p.decode_request_meta(p.encode_request_meta(KEY, -12.5, 0, 0))

    assert meta.timeout_ms == 0


def test_request_meta_clamps_values_too_large_for_their_fields() -> None:
    meta = p.decode_request_meta(p.encode_request_meta(KEY, 2.0**40, 2**33, 70_000))

    assert (meta.timeout_ms, meta.cpu_limit_ms, meta.depth) == (2**32 - 1, 2**32 - 1, 0xFFFF)


def test_encoded_request_meta_passes_the_request_shape_check() -> None:
    meta = p.encode_request_meta(p.encode_key(2**64 - 1), 2.0**40, 2**33, 70_000)

    assert p.decode([p.TAG, p.REQUEST, meta, b"f", BODY]).frames[0] == meta


def test_call_meta_round_trips_into_the_call_key_and_the_parent_key() -> None:
    call_key, parent_key = p.decode_call_meta(p.encode_call_meta(7, KEY))

    assert (call_key, parent_key) == (p.encode_key(7), KEY)


def test_encoded_call_meta_passes_the_call_shape_check() -> None:
    meta = p.encode_call_meta(2**64 - 1, KEY)

    assert p.decode([p.TAG, p.CALL, meta, BODY]).pairs() == [(meta, BODY)]
