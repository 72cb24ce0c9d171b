"""Long step payloads and outboxes cross between Python and V8 in pieces: the cuts and
the reassembly (pure), then real V8 on both sides of them."""

from __future__ import annotations

import threading

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from madrpc.runtime import Event, EventKind, Runtime
from madrpc.runtime_pieces import OUT_PIECES_MARK, STEP_PIECE_BYTES, OutboxPieces, utf8_pieces

pytestmark = pytest.mark.timeout(60)


def is_character_start(data: bytes, at: int) -> bool:
    return at == len(data) or data[at] & 0xC0 != 0x80


@given(st.text(min_size=0, max_size=200), st.integers(min_value=4, max_value=40))
def test_pieces_cover_the_payload_each_short_enough_and_cut_between_characters(
    text: str, most: int,
) -> None:
    data = text.encode()
    bounds = utf8_pieces(data, most)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(data)
    assert all(end == start for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False))
    assert all(0 < end - start <= most for start, end in bounds) or data == b""
    assert all(is_character_start(data, end) for _, end in bounds)
    assert b"".join(data[start:end] for start, end in bounds).decode() == text


def test_a_payload_no_longer_than_a_piece_is_one_piece() -> None:
    assert utf8_pieces(b"x" * 10, 10) == [(0, 10)]
    assert utf8_pieces(b"x" * 11, 10) == [(0, 10), (10, 11)]


def test_a_piece_shorter_than_a_whole_character_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        utf8_pieces(b"abcdef", 3)


def test_a_payload_of_several_pieces_reaches_the_function_whole() -> None:
    """Characters of two, three and four bytes straddle the cuts of a payload several
    pieces long; the function sees the text it was sent, and the step's outcome is the
    one a short payload gets."""
    events: list[Event] = []
    done = threading.Event()

    def on_event(event: Event) -> None:
        events.append(event)
        done.set()

    unit = "aé€😀"   # 1 + 2 + 3 + 4 bytes: every offset of a cut lands in some character
    text = unit * (3 * STEP_PIECE_BYTES // len(unit.encode()) + 1)
    body = orjson.dumps({"jsonrpc": "2.0", "method": "size", "params": [text], "id": 1})
    payload = b'{"r":[[1,9007199254740991,100000,0,%b]]}' % body
    assert len(utf8_pieces(payload)) >= 3
    runtime = Runtime("madrpc.register('size', (s) => [s.length, s.slice(-8), s.slice(0, 5)]);",
                      "size.js", on_event)
    try:
        runtime.step(payload)
        assert done.wait(30), "the step never finished"
    finally:
        runtime.close()
    expected = orjson.dumps([len(text.encode("utf-16-le")) // 2, "€😀aé€😀", unit])
    assert events == [Event(EventKind.DONE, b'R 1 "result":' + expected)]


def test_outbox_pieces_come_back_together_in_order() -> None:
    pieces = OutboxPieces()
    assert pieces.is_mark(OUT_PIECES_MARK + b"3") and not pieces.is_mark(b"R 1 x")
    pieces.expect(OUT_PIECES_MARK + b"3")
    assert pieces.add(b"R 1 ") is None
    assert pieces.add(b'"result":') is None
    assert pieces.add(b"[1]") == b'R 1 "result":[1]'
    assert pieces.before(b"L info 0 x") == b"L info 0 x"   # nothing held any more


def test_pieces_taken_before_a_stop_go_before_the_next_outbox() -> None:
    """Fetching was stopped after one piece: JavaScript sends the rest, then its later
    output, with the next outcome, which follows the piece already taken."""
    pieces = OutboxPieces()
    pieces.expect(OUT_PIECES_MARK + b"2")
    assert pieces.add(b"R 1 \"res") is None
    assert pieces.before(b'ult":1\nR 2 "result":2') == b'R 1 "result":1\nR 2 "result":2'


def test_a_mark_of_no_pieces_is_refused() -> None:
    with pytest.raises(ValueError, match="0 pieces"):
        OutboxPieces().expect(OUT_PIECES_MARK + b"0")


def run_steps(source: str, payloads: list[bytes]) -> list[Event]:
    events: list[Event] = []
    done = threading.Event()

    def on_event(event: Event) -> None:
        events.append(event)
        if event.kind is not EventKind.NOTIFY:
            done.set()

    runtime = Runtime(source, "big.js", on_event)
    try:
        for payload in payloads:
            done.clear()
            runtime.step(payload)
            assert done.wait(30), "the step never finished"
    finally:
        runtime.close()
    return events


def test_a_long_result_leaves_v8_whole_and_so_does_the_next_one() -> None:
    """A result several pieces long, with characters of two, three and four bytes (a
    UTF-16 surrogate pair) across the cuts, arrives as JavaScript made it; a short one
    after it is not held up or mixed in."""
    unit = "aé€😀"
    text = unit * (3 * 256 * 1024 // 5 + 1)
    request = b'{"r":[[%d,9007199254740991,100000,0,{"jsonrpc":"2.0","method":"%s","id":1}]]}'
    source = (f"madrpc.register('big', () => {orjson.dumps(unit).decode()}"
              f".repeat({len(text) // len(unit)})); madrpc.register('one', () => 1);")
    events = run_steps(source, [request % (1, b"big"), request % (2, b"one")])
    assert events == [Event(EventKind.DONE, b'R 1 "result":' + orjson.dumps(text)),
                      Event(EventKind.DONE, b'R 2 "result":1')]
