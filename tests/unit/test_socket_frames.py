"""madrpc.sockets' fast send and receive over real ZeroMQ sockets (inproc): whole
messages, frames in order, empty frames kept, zmq.Again when nothing is queued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from madrpc.sockets import receive_frames, send_frames

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://frames")
    b.connect("inproc://frames")
    try:
        yield a, b
    finally:
        a.close(0)
        b.close(0)
        context.term()


def wait_readable(socket: zmq.Socket[Any]) -> None:
    assert socket.poll(5000), "nothing arrived"


def test_messages_arrive_whole_and_in_order_with_empty_frames_kept(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    a, b = pair
    messages = [[b"id", b"", b'{"x":1}'], [b"only"], [b""] * 3 + [b"z" * 100_000]]
    for frames in messages:
        send_frames(a, frames)
    wait_readable(b)

    assert [receive_frames(b) for _ in messages] == messages


def test_receiving_when_nothing_is_queued_raises_again(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    _, b = pair
    with pytest.raises(zmq.Again):
        receive_frames(b)


def test_a_bytearray_or_memoryview_frame_is_sent_as_its_bytes(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    a, b = pair
    send_frames(a, [bytearray(b"ab"), memoryview(b"cd")])
    wait_readable(b)

    assert receive_frames(b) == [b"ab", b"cd"]
