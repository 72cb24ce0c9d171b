"""The worker <-> engine protocol as pure code: messages both ways, the STEP payload and
the outbox, checked against the formats js/bootstrap.js reads and writes."""

from __future__ import annotations

import orjson
import pytest

from madrpc import engine_protocol as ep
from madrpc.engine_payload import (
    Abandon,
    ConsoleLine,
    Items,
    NestedCall,
    Reply,
    StepEntry,
    StreamAck,
    answered,
    encode_step_payload,
    parse_outbox,
)
from madrpc.errors import ProtocolError

# ---------------------------------------------------------------- engine -> worker


def test_an_output_message_round_trips_with_its_mode() -> None:
    step = ep.decode_engine_message(ep.output_message(ep.Mode.STEP, b"R 1 x", b"7"))
    flush = ep.decode_engine_message(ep.output_message(ep.Mode.FLUSH, b"", b""))

    assert step == ep.Output(step_done=True, outbox=b"R 1 x", slot=b"7")
    assert flush == ep.Output(step_done=False, outbox=b"", slot=b"")


def test_a_reset_message_round_trips_with_reason_culprit_outbox_and_detail() -> None:
    frames = ep.reset_message(ep.ResetReason.TIMEOUT, 42, b"R 3 y", "ran 300 ms", b"")

    assert ep.decode_engine_message(frames) == ep.Reset(
        ep.ResetReason.TIMEOUT, 42, b"R 3 y", "ran 300 ms", b""
    )


def test_a_reset_message_says_whether_it_ended_a_step_or_a_flush() -> None:
    step = ep.reset_message(ep.ResetReason.CPU_LIMIT, 3, b"", "", b"", ep.Mode.STEP)
    flush = ep.reset_message(ep.ResetReason.CPU_LIMIT, 3, b"", "", b"", ep.Mode.FLUSH)

    assert ep.decode_engine_message(step).step_done is True   # type: ignore[union-attr]
    assert ep.decode_engine_message(flush).step_done is False   # type: ignore[union-attr]


def test_ready_and_load_error_messages_round_trip() -> None:
    info = {"methods": ["add"], "v8": "14.4", "pid": 12}

    assert ep.decode_engine_message(ep.ready_message(info)) == ep.Ready(info)
    assert ep.decode_engine_message(ep.load_error_message("a.js:3:1: boom")) == ep.LoadError(
        "a.js:3:1: boom"
    )


@pytest.mark.parametrize("frames", [
    [],
    [b"HELLO"],
    [ep.OUT, b"S"],
    [ep.RESET, b"melted", b"1", b"", b"", b""],
    [ep.RESET, b"timeout", b"one", b"", b"", b""],
    [ep.READY, b"{not json"],
    [ep.READY, b"[1, 2]"],
])
def test_a_malformed_engine_message_raises_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        ep.decode_engine_message(frames)


# ---------------------------------------------------------------- worker -> engine


def test_a_step_message_carries_its_memory_limit_only_when_one_is_set() -> None:
    assert ep.step_message(b"{}", b"") == [ep.STEP, b"{}", b""]
    assert ep.step_message(b"{}", b"5", 1024) == [ep.STEP, b"{}", b"5", b"1024"]


def test_worker_commands_decode_to_steps_drops_and_bare_commands() -> None:
    assert ep.decode_worker_command(ep.step_message(b"{}", b"5", 64)) == ep.Step(b"5", b"{}", 64)
    assert ep.decode_worker_command([ep.STEP, b"{}"]) == ep.Step(ep.POOLED, b"{}", 0)
    assert ep.decode_worker_command(ep.drop_message(b"9")) == ep.Drop(b"9")
    assert ep.decode_worker_command([ep.ABORT]) == ep.ABORT
    assert ep.decode_worker_command([ep.STOP]) == ep.STOP


def test_unknown_or_short_worker_commands_decode_to_none() -> None:
    assert ep.decode_worker_command([]) is None
    assert ep.decode_worker_command([b"DANCE"]) is None
    assert ep.decode_worker_command([ep.DROP]) is None
    assert ep.decode_worker_command([ep.STEP, b"{}", b"", b"lots"]) == ep.Step(b"", b"{}", 0)


# ---------------------------------------------------------------- step payload


def test_an_empty_step_payload_is_an_empty_object() -> None:
    assert encode_step_payload() == b"{}"


def test_a_step_payload_is_the_json_bootstrap_js_reads() -> None:
    body = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":7}'
    payload = encode_step_payload(
        settles=[(3, b'"result":5'), (4, b'"error":{"code":-32601,"message":"no"}')],
        cancels=[11, 12],
        starts=[StepEntry(21, 1_700_000_000_123.9, 60_000.0, 2, body)],
    )

    assert orjson.loads(payload) == {
        "s": [[3, {"result": 5}], [4, {"error": {"code": -32601, "message": "no"}}]],
        "x": [11, 12],
        "r": [[21, 1_700_000_000_123, 60_000, 2, orjson.loads(body)]],
    }


def test_a_step_payload_leaves_out_empty_members() -> None:
    assert orjson.loads(encode_step_payload(cancels=[5])) == {"x": [5]}


def test_a_step_payload_carries_stream_grants_and_feeds_with_items_spliced_as_they_are() -> None:
    payload = encode_step_payload(
        grants=[(21, 32), (22, 1)],
        feeds=[(3, b'[1,"two",{"three":3}]'), (4, b"[null]")],
    )

    assert b'"p":[[3,[1,"two",{"three":3}]],[4,[null]]]' in payload
    assert orjson.loads(payload) == {
        "m": [[21, 32], [22, 1]],
        "p": [[3, [1, "two", {"three": 3}]], [4, [None]]],
    }


# ---------------------------------------------------------------- outbox


def test_the_outbox_parses_into_replies_calls_and_console_lines_in_order() -> None:
    outbox = b"\n".join([
        b'R 4 "result":{"a":"b c"}',
        b'C 9 4 {"jsonrpc":"2.0","method":"inner","params":[1]}',
        b'L warn 4 ["add",7,"look out"]',
    ])

    assert list(parse_outbox(outbox)) == [
        Reply(4, b'"result":{"a":"b c"}'),
        NestedCall(9, 4, b'{"jsonrpc":"2.0","method":"inner","params":[1]}'),
        ConsoleLine("warn", 4, b'["add",7,"look out"]'),
    ]


def test_the_outbox_parses_stream_items_acks_and_abandons() -> None:
    outbox = b"\n".join([
        b'P 4 3 [1,"a b",{"c":[2,3]}]',
        b"M 9 32",
        b"X 10",
        b'R 4 "result":{"items":3}',
    ])

    assert list(parse_outbox(outbox)) == [
        Items(4, 3, b'[1,"a b",{"c":[2,3]}]'),
        StreamAck(9, 32),
        Abandon(10),
        Reply(4, b'"result":{"items":3}'),
    ]


def test_stream_entries_name_their_fields() -> None:
    items = Items(local=4, count=2, items=b"[1,2]")

    assert (items.local, items.count, items.items) == (4, 2, b"[1,2]")
    assert StreamAck(js_call=9, n=32).n == 32
    assert Abandon(js_call=10).js_call == 10


def test_an_empty_outbox_has_no_entries_and_unknown_lines_are_skipped() -> None:
    assert list(parse_outbox(b"")) == []
    assert list(parse_outbox(b'Z what\nR 1 "result":1')) == [Reply(1, b'"result":1')]


def test_a_console_line_decodes_to_level_method_id_and_text() -> None:
    assert ConsoleLine("info", 4, b'["add",7,"hello"]').decode() == (
        "info", "add", 7, "hello"
    )


def test_a_console_line_that_is_not_the_json_triple_is_kept_as_text() -> None:
    assert ConsoleLine("error", 0, b"plain words").decode() == (
        "error", "", None, "plain words"
    )


def test_answered_finds_a_fresh_contexts_reply_anywhere_in_the_outbox() -> None:
    outbox = b'L info 12 ["m",1,"x"]\nR 12 "result":1'

    assert answered(outbox, b"12")
    assert answered(b'R 12 "result":1', b"12")
    assert not answered(outbox, b"1")
    assert not answered(b'R 123 "result":1', b"12")


def test_answered_never_takes_a_stream_line_for_the_reply() -> None:
    streaming = b'P 12 1 ["R 12 \\n R 12 x"]\nP 12 1 [2]\nM 12 1\nX 12'

    assert not answered(streaming, b"12")
    assert answered(streaming + b'\nR 12 "result":{"items":2}', b"12")
