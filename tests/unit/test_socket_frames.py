"""madrpc.sockets' fast send and receive over real ZeroMQ sockets (inproc): whole
messages, frames in order, empty frames kept, zmq.Again when nothing is queued; a drain
that reads every waiting message, and a lone one with a single receive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from madrpc.sockets import drain, has_message, receive_frame, receive_frames, send_frames

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


def counted(receive: Any, calls: list[int]) -> Any:
    def counting(socket: zmq.Socket[Any]) -> Any:
        calls.append(1)
        return receive(socket)
    return counting




def test_a_drain_reads_every_waiting_message_in_order(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    a, b = pair
    messages = [[b"m%d" % n, b"x"] for n in range(5)]
    for frames in messages:
        send_frames(a, frames)
    wait_readable(b)

    assert list(drain(b, receive_frames)) == messages
    assert not has_message(b)


def test_a_drain_stops_at_its_limit_and_leaves_the_rest_queued(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    a, b = pair
    for n in range(5):
        a.send(b"%d" % n)
    wait_readable(b)

    assert list(drain(b, receive_frame, limit=3)) == [b"0", b"1", b"2"]
    assert has_message(b)
    assert list(drain(b, receive_frame)) == [b"3", b"4"]


def test_a_lone_message_is_drained_with_one_receive(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    a, b = pair
    a.send(b"alone")
    wait_readable(b)
    calls: list[int] = []

    assert list(drain(b, counted(receive_frame, calls))) == [b"alone"]
    assert len(calls) == 1   # not a second one that finds nothing and raises zmq.Again


def test_a_drain_with_nothing_queued_yields_nothing(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    _, b = pair

    assert not has_message(b)
    assert list(drain(b, receive_frame)) == []
    with pytest.raises(zmq.Again):
        receive_frame(b)
