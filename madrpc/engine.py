"""An engine process: one V8 context serving its worker over an inherited socket.

Started by the worker as ``python -m madrpc.engine ...``. A process per context means a
fatal V8 error (some out-of-memory paths abort the process instead of raising) costs one
context, never the worker, and the Python side of each context has its own GIL.

The context and its watchdog are :class:`madrpc.engine_core.Engine`'s; this module is the
process around it: its arguments, limits and signals, and :func:`serve_link`, the loop on
its end of a socket pair (:mod:`madrpc.engine_channel`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import sys

from . import engine_protocol as ep
from .affinity import allow_cpus, parse_cpu_list
from .bundle import Bundle
from .bundle import decode as decode_bundle
from .engine_channel import Channel, ChannelClosed
from .engine_core import Engine
from .engine_setup import die_with_parent, limit_data
from .errors import ScriptError
from .runtime import init_engine

__all__ = ["main", "serve_link"]

log = logging.getLogger(__name__)

WATCHDOG_TICK_S = 0.01
"""How often the loop has a running step's time budget checked."""
IDLE_TICK_S = 0.5
"""How often an idle engine checks that its worker is still alive."""
LOAD_ERROR_SEND_TIMEOUT_S = 2.0
"""How long a script that failed to load waits for the worker to take its LOADERR."""


def _read_bundle(path: str, origin: str) -> Bundle:
    with open(path, "rb") as handle:
        return decode_bundle(handle.read(), origin)


def serve_link(engine: Engine, channel: Channel) -> None:
    """The engine process's loop: READY, then turns on what the worker sends over
    ``channel`` and on what the isolates hand over, until STOP or the worker is gone."""
    channel.send_blocking(engine.ready_message())
    parent = os.getppid()
    link, wake = channel.fileno(), engine.wake_fd
    poller = select.poll()
    poller.register(link, select.POLLIN)
    poller.register(wake, select.POLLIN)
    while True:
        timeout_s = WATCHDOG_TICK_S if engine.running else IDLE_TICK_S
        ready = dict(poller.poll(int(timeout_s * 1000)))
        try:
            commands = channel.receive() if link in ready else []
        except ChannelClosed:
            log.warning("engine %d: the worker closed the link, exiting", os.getpid())
            return
        if not engine.serve(commands, wake in ready):
            return
        if not engine.running and os.getppid() != parent:
            log.warning("engine %d: worker is gone, exiting", os.getpid())
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="madrpc.engine", description=__doc__)
    parser.add_argument("--fd", type=int, required=True,
                        help="This engine's end of its link to the worker (a socket).")
    parser.add_argument("--bundle", required=True,
                        help="The script bundle's file (madrpc.bundle.Bundle.encode).")
    parser.add_argument("--origin", default="",
                        help="The folder the bundle came from, for messages.")
    parser.add_argument("--max-memory-mb", type=int, default=256)
    parser.add_argument("--v8-flag", action="append", default=[])
    parser.add_argument("--fresh-context", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--cpus", type=parse_cpu_list, default=None,
                        help="CPUs to run on (0,1,...), when the worker keeps its own on one.")
    args = parser.parse_args(argv)
    if args.cpus is not None:   # before V8 starts its threads
        allow_cpus(args.cpus)
    logging.basicConfig(level=args.log_level, format="%(asctime)s engine %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the worker decides when engines stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    if args.max_memory_mb:
        limit_data(args.max_memory_mb)
        flags = [f"--max-old-space-size={2 * args.max_memory_mb}", *args.v8_flag]
    else:
        flags = list(args.v8_flag)
    init_engine(flags)
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        engine = Engine(channel.send_blocking, _read_bundle(args.bundle, args.origin),
                        args.max_memory_mb, fresh=args.fresh_context)
    except (ScriptError, OSError) as exc:
        with contextlib.suppress(ChannelClosed, TimeoutError):
            channel.send(ep.load_error_message(str(exc)))
            channel.flush_blocking(LOAD_ERROR_SEND_TIMEOUT_S)
        channel.close()
        return 1
    try:
        serve_link(engine, channel)
    except ChannelClosed:
        log.warning("engine %d: the worker closed the link, exiting", os.getpid())
    finally:
        engine.close()
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
