"""The worker <-> engine link: framing (pure) and a Channel over a real socket pair."""

from __future__ import annotations

import select
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from madrpc.engine_channel import (
    KEPT_BUFFER_BYTES,
    MAX_FRAMES,
    READ_CHUNK_BYTES,
    Channel,
    ChannelClosed,
    FrameDecoder,
    encode_header,
    socketpair,
)
from madrpc.errors import ProtocolError

pytestmark = pytest.mark.timeout(30)


def wire(frames: list[bytes]) -> bytes:
    return encode_header(frames) + b"".join(frames)


def test_the_header_is_the_frame_count_then_each_length_little_endian() -> None:
    assert encode_header([b"OUT", b"", b"abcde"]) == struct.pack("<4I", 3, 3, 0, 5)


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_a_message_needs_one_to_max_frames(count: int) -> None:
    with pytest.raises(ValueError, match="frames"):
        encode_header([b"x"] * count)


def test_messages_come_back_whole_however_the_bytes_are_split() -> None:
    messages = [[b"STEP", b"payload" * 100, b""], [b"STOP"], [b"", b"", b"z"]]
    data = b"".join(wire(m) for m in messages)
    for size in (1, 3, 7, 64, len(data)):
        decoder = FrameDecoder()
        out: list[list[bytes]] = []
        for i in range(0, len(data), size):
            out += decoder.feed(data[i:i + size])
        assert out == messages
        assert len(decoder) == 0


def test_a_partial_message_is_held_until_it_completes() -> None:
    decoder = FrameDecoder()
    data = wire([b"READY", b"{}"])
    assert decoder.feed(data[:-1]) == []
    assert len(decoder) == len(data) - 1
    assert decoder.feed(data[-1:]) == [[b"READY", b"{}"]]


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_a_header_no_peer_would_send_is_a_protocol_error(count: int) -> None:
    with pytest.raises(ProtocolError, match="frames"):
        FrameDecoder().feed(struct.pack("<I", count) + b"\0" * 64)


def test_a_message_too_large_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="bytes"):
        FrameDecoder().feed(struct.pack("<3I", 2, 0xFFFF_FFFF, 0xFFFF_FFFF))


def test_once_a_header_is_in_the_next_read_has_room_for_the_whole_message() -> None:
    """A large message goes from the kernel straight into the decoder's buffer, in one
    read, instead of through a scratch buffer READ_CHUNK_BYTES at a time."""
    decoder = FrameDecoder()
    data = wire([b"STEP", b"x" * (3 * READ_CHUNK_BYTES)])
    assert decoder.feed(data[:100]) == []
    with decoder.room() as room:
        assert len(room) >= len(data) - 100
        room[:len(data) - 100] = data[100:]
    assert decoder.commit(len(data) - 100) == [[b"STEP", b"x" * (3 * READ_CHUNK_BYTES)]]
    assert len(decoder) == 0


def test_the_read_buffer_keeps_payloads_up_to_its_limit_and_shrinks_after_larger() -> None:
    decoder = FrameDecoder()
    assert decoder.capacity == READ_CHUNK_BYTES
    assert decoder.feed(wire([b"OUT", b"a" * (KEPT_BUFFER_BYTES // 2)])) != []
    kept = decoder.capacity
    assert kept > KEPT_BUFFER_BYTES // 2
    assert decoder.feed(wire([b"OUT", b"b" * (KEPT_BUFFER_BYTES // 2)])) != []
    assert decoder.capacity == kept   # reused, not grown again
    assert decoder.feed(wire([b"OUT", b"c" * (2 * KEPT_BUFFER_BYTES)])) != []
    assert decoder.capacity == READ_CHUNK_BYTES


def test_a_partial_message_behind_whole_ones_moves_to_the_front_intact() -> None:
    decoder = FrameDecoder()
    small = wire([b"OUT", b"s" * 1000])
    large = wire([b"OUT", bytes(range(256)) * 4096])   # 1 MiB
    first = small * 3 + large[:5000]
    assert decoder.feed(first) == [[b"OUT", b"s" * 1000]] * 3
    assert decoder.feed(large[5000:]) == [[b"OUT", bytes(range(256)) * 4096]]


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socketpair()
    left, right = Channel(a), Channel(b)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def receive_all(channel: Channel, count: int) -> list[list[bytes]]:
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    out: list[list[bytes]] = []
    while len(out) < count:
        assert poller.poll(10_000), "nothing came"
        out += channel.receive()
    return out


def test_a_channel_carries_messages_with_empty_frames(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send([b"OUT", b"", b"S"])
    left.send([b"", b"x"])
    assert not left.wants_write
    assert receive_all(right, 2) == [[b"OUT", b"", b"S"], [b"", b"x"]]


def test_messages_received_keep_their_bytes_after_later_reads(
    pair: tuple[Channel, Channel],
) -> None:
    """The channel reads into one buffer it reuses: what it handed out must not change."""
    left, right = pair
    left.send([b"OUT", b"a" * 1000])
    first = receive_all(right, 1)
    left.send([b"OUT", b"b" * 1000])
    second = receive_all(right, 1)
    assert first == [[b"OUT", b"a" * 1000]]
    assert second == [[b"OUT", b"b" * 1000]]
    assert all(type(frame) is bytes for frame in first[0] + second[0])


def test_a_message_larger_than_the_kernel_takes_is_queued_and_flushed(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    big = bytes(range(256)) * (64 * 1024)   # 16 MiB: over any link's buffer (at most 8 MiB)
    left.send([b"STEP", big, b""])
    assert left.wants_write   # the worker's loop goes on; the rest goes out later
    got: list[list[bytes]] = []
    poller = select.poll()
    poller.register(right.fileno(), select.POLLIN)
    while not got:
        left.flush()
        poller.poll(1000)
        got += right.receive()
    assert got == [[b"STEP", big, b""]]
    assert not left.wants_write


def test_a_megabyte_message_goes_to_the_kernel_in_one_write(
    pair: tuple[Channel, Channel],
) -> None:
    """Without a reader: the link's send buffer takes it whole (no exchange of ~200 KiB
    reads and writes between two processes), where the kernel allows that much."""
    if 2 * int(Path("/proc/sys/net/core/wmem_max").read_text()) < 2 * 1024 * 1024:
        pytest.skip("net.core.wmem_max caps socket send buffers under 1 MiB here")
    left, right = pair
    big = b"p" * (1024 * 1024)
    left.send([b"STEP", big])

    assert not left.wants_write
    assert receive_all(right, 1) == [[b"STEP", big]]


def test_send_blocking_waits_for_a_slow_reader(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    big = b"r" * (4 * 1024 * 1024)
    received: list[list[bytes]] = []
    reader = threading.Thread(target=lambda: received.extend(receive_all(right, 2)))
    reader.start()
    left.send_blocking([b"OUT", big])
    left.send_blocking([b"STOP"])
    reader.join(20)
    assert received == [[b"OUT", big], [b"STOP"]]


def test_the_end_of_the_stream_comes_after_the_messages_before_it(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    left.send([b"LOADERR", b"SyntaxError"])
    left.close()
    assert receive_all(right, 1) == [[b"LOADERR", b"SyntaxError"]]
    with pytest.raises(ChannelClosed):
        right.receive()


def test_sending_to_a_closed_end_raises_channel_closed(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    right.close()
    with pytest.raises(ChannelClosed):
        left.send([b"STEP", b"x"])
    assert not left.wants_write


def test_readable_tells_data_or_end_from_nothing(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    assert not right.readable()
    left.send([b"STOP"])
    assert right.readable()
    assert right.receive() == [[b"STOP"]]
    assert not right.readable()
    left.close()
    assert right.readable()
