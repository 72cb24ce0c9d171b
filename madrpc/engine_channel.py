"""Multipart messages over a stream socket: the link between a worker and one engine.

Each engine process gets one end of a Unix ``socketpair`` (inherited as a file
descriptor), so no other process can reach it and no socket file exists. A round trip
costs about a quarter of a ZeroMQ ``ipc://`` one here: a write goes straight to the
kernel and wakes the reader, with no I/O thread on either side.

A message on the wire is a header, then its frames back to back::

    <u32 frame count> <u32 length> * count   frame bytes ...

(little-endian). :func:`encode_header` and :class:`FrameDecoder` are the pure part;
:class:`Channel` does the non-blocking reads and buffered writes.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
from collections import deque
from collections.abc import Sequence

from .errors import ProtocolError

__all__ = ["Channel", "ChannelClosed", "FrameDecoder", "encode_header", "socketpair"]

log = logging.getLogger(__name__)

MAX_FRAMES = 1024
"""The most frames one message may have (the engine protocol uses at most a handful)."""
MAX_MESSAGE_BYTES = 1 << 31
"""The largest message either side accepts (the engine protocol's bodies are bounded by
the grid's message limit long before this)."""
READ_CHUNK_BYTES = 256 * 1024
"""How much one ``recv`` asks the kernel for at least (more when a message needs more)."""
KEPT_BUFFER_BYTES = 4 * 1024 * 1024
"""A link's read buffer keeps up to this size between messages, so that payloads up to it
reuse memory already mapped; after a larger message it shrinks back to
``READ_CHUNK_BYTES``."""
SENDMSG_MAX_BUFFERS = 64
"""Buffers handed to one ``sendmsg`` (well under the kernel's IOV_MAX)."""
LINK_BUFFER_BYTES = 4 * 1024 * 1024
"""Send buffer asked for on each end of a link (the kernel caps it at twice
``net.core.wmem_max``): a large message goes in one write instead of a read-and-write
exchange per ~200 KiB between the worker and its engine."""

_COUNT = struct.Struct("<I")


def encode_header(frames: Sequence[bytes | memoryview]) -> bytes:
    """The header that goes before ``frames`` on the wire."""
    count = len(frames)
    if not 0 < count <= MAX_FRAMES:
        raise ValueError(f"a message has 1 to {MAX_FRAMES} frames, not {count}")
    return struct.pack(f"<I{count}I", count, *(len(frame) for frame in frames))


class FrameDecoder:
    """Turns the bytes read from a stream back into messages (lists of frames).

    The bytes are read straight into the decoder's own buffer (:meth:`room`, then
    :meth:`commit`), which has room for the whole of a message once its header is in: a
    1 MiB message is copied once by the kernel and once into its frames, where reading
    into a scratch buffer first and then adding to this one took two more copies. The
    buffer keeps its size between messages up to ``KEPT_BUFFER_BYTES``."""

    def __init__(self) -> None:
        self._buffer = bytearray(READ_CHUNK_BYTES)
        self._start = 0   # the first byte not yet cut into a message
        self._end = 0     # the end of the bytes read
        self._message_bytes = 0   # the size of the message at _start, once its header is in

    def __len__(self) -> int:
        """Bytes held that do not make a whole message yet."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """The size of the read buffer, used or not."""
        return len(self._buffer)

    def room(self) -> memoryview:
        """Where the next read goes: at least READ_CHUNK_BYTES, and all the message in
        progress still lacks. Release it (``with``) before calling :meth:`commit`."""
        buffer = self._buffer
        held = self._end - self._start
        wanted = max(self._message_bytes - held, READ_CHUNK_BYTES)
        if len(buffer) - self._end < wanted:
            if self._start:   # move what is held to the front (a partial message)
                del buffer[:self._start]
                self._start, self._end = 0, held
            if len(buffer) - held < wanted:
                buffer.extend(bytes(held + wanted - len(buffer)))
        return memoryview(buffer)[self._end:self._end + wanted]

    def commit(self, count: int) -> list[list[bytes]]:
        """Take ``count`` bytes read into :meth:`room`; return the messages they complete.
        Raises ProtocolError on a header no peer of ours would send."""
        self._end += count
        buffer = self._buffer
        end = self._end
        position = self._start
        messages: list[list[bytes]] = []
        with memoryview(buffer) as view:
            while end - position >= 4:
                (frame_count,) = _COUNT.unpack_from(buffer, position)
                if not 0 < frame_count <= MAX_FRAMES:
                    raise ProtocolError(f"engine link: a message of {frame_count} frames")
                header = 4 + 4 * frame_count
                if end - position < header:
                    break
                lengths = struct.unpack_from(f"<{frame_count}I", buffer, position + 4)
                total = header + sum(lengths)
                if total > MAX_MESSAGE_BYTES:
                    raise ProtocolError(f"engine link: a message of {total} bytes")
                if end - position < total:
                    self._message_bytes = total
                    break
                at = position + header
                frames = []
                for length in lengths:
                    frames.append(bytes(view[at:at + length]))
                    at += length
                messages.append(frames)
                position += total
                self._message_bytes = 0
        if position == end:   # nothing held: read into the front again
            self._start = self._end = 0
            if len(buffer) > KEPT_BUFFER_BYTES:
                del buffer[READ_CHUNK_BYTES:]
        else:
            self._start = position
        return messages

    def feed(self, data: bytes | memoryview) -> list[list[bytes]]:
        """Add ``data`` (copied in); return the messages it completes."""
        messages: list[list[bytes]] = []
        at = 0
        while at < len(data):
            with self.room() as room:
                count = min(len(room), len(data) - at)
                room[:count] = data[at:at + count]
            messages += self.commit(count)
            at += count
        return messages


class ChannelClosed(Exception):
    """The other end closed the link (its process exited)."""


class Channel:
    """One end of an engine link: non-blocking, with writes buffered until the kernel
    takes them (a busy peer never blocks the worker's loop)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._decoder = FrameDecoder()
        self._pending: deque[memoryview] = deque()

    def fileno(self) -> int:
        return self.socket.fileno()

    @property
    def wants_write(self) -> bool:
        """Whether bytes wait for the kernel to take them (see :meth:`flush`)."""
        return bool(self._pending)

    def send(self, frames: Sequence[bytes]) -> None:
        """Queue one message and write what the kernel takes now."""
        pending = self._pending
        pending.append(memoryview(encode_header(frames)))
        pending.extend(memoryview(frame) for frame in frames if len(frame))
        self.flush()

    def flush(self) -> bool:
        """Write queued bytes until done or the kernel is full; True when all are out.
        Raises ChannelClosed when the other end is gone."""
        pending = self._pending
        while pending:
            buffers = [pending[i] for i in range(min(len(pending), SENDMSG_MAX_BUFFERS))]
            try:
                sent = self.socket.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:   # EPIPE, ECONNRESET: the engine exited
                pending.clear()
                raise ChannelClosed(str(exc)) from exc
            while pending and sent >= len(pending[0]):
                sent -= len(pending.popleft())
            if sent:
                pending[0] = pending[0][sent:]
        return True

    def flush_blocking(self, timeout_s: float | None = None) -> None:
        """Write everything queued, waiting for the kernel as long as it takes (or up to
        ``timeout_s``, then TimeoutError)."""
        if self.flush():   # the usual case: the kernel took it all at once
            return
        poller = select.poll()
        poller.register(self.socket, select.POLLOUT)
        while True:   # wait for room, then write what fits
            if not poller.poll(None if timeout_s is None else int(timeout_s * 1000)):
                raise TimeoutError("engine link: the other end stopped reading")
            if self.flush():
                return

    def send_blocking(self, frames: Sequence[bytes]) -> None:
        self.send(frames)
        self.flush_blocking()

    def receive(self) -> list[list[bytes]]:
        """Every whole message readable now. Raises ChannelClosed at the end of the
        stream (after the messages before it were returned by earlier calls)."""
        messages: list[list[bytes]] = []
        decoder = self._decoder
        while True:
            with decoder.room() as room:
                asked = len(room)
                try:
                    count = self.socket.recv_into(room)
                except (BlockingIOError, InterruptedError):
                    return messages
                except ConnectionResetError as exc:
                    if messages:
                        return messages
                    raise ChannelClosed(str(exc)) from exc
            if not count:
                if messages:
                    return messages   # the end is seen again on the next call
                raise ChannelClosed("end of stream")
            messages += decoder.commit(count)
            if count < asked:
                return messages

    def readable(self) -> bool:
        """Whether a read would return something now (data, or the end of the stream)."""
        return bool(select.select([self.socket], [], [], 0)[0])

    def close(self) -> None:
        self._pending.clear()
        self.socket.close()


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of Unix stream sockets, neither inheritable (pass one on with
    ``pass_fds``)."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in pair:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_BUFFER_BYTES)
    return pair
