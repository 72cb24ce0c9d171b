"""Baseline for benchmarks: a bare pyzmq broker with echo workers (no JSON-RPC, no V8).

    python tools/echo_broker.py --frontend tcp://127.0.0.1:6555 --workers 2

The broker is a Python ROUTER/ROUTER loop doing round-robin over its workers, the same
shape as the MaDRPC broker without anything else; each worker is a process with a
DEALER that sends every message straight back. Whatever MaDRPC adds on top (JSON-RPC,
credit, heartbeats, V8) shows up as the gap between the two in tools/bench.py.

With ``--curve-secret FILE`` (a pyzmq ``.key_secret`` file) both sockets are CURVE servers
with that key pair, and the echo workers connect with a throwaway pair of their own. No
ZAP handler runs: every client is let in, but all traffic is encrypted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
from collections import deque

import zmq
import zmq.auth

from madrpc.engine_setup import die_with_parent  # an orphaned echo worker ends

READY = b"READY"


def echo_worker(backend: str, server_key: bytes | None = None) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
        socket.curve_serverkey = server_key
    socket.connect(backend)
    socket.send(READY)
    while True:
        socket.send_multipart(socket.recv_multipart())


def run_broker(frontend: str, backend: str,
               keys: tuple[bytes, bytes] | None = None) -> None:
    """Round-robin ROUTER/ROUTER forwarding; drains each socket before polling again.
    ``keys``: (public, secret) to make both sockets CURVE servers."""
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    back = context.socket(zmq.ROUTER)
    for socket, endpoint in ((front, frontend), (back, backend)):
        if keys is not None:
            socket.curve_server = True
            socket.curve_publickey, socket.curve_secretkey = keys
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        socket.bind(endpoint)
    workers: deque[bytes] = deque()
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if back in events:
            while True:
                try:
                    frames = back.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames[1] == READY:
                    workers.append(frames[0])
                else:
                    front.send_multipart(frames[1:], copy=False)
        if front in events and workers:
            while True:
                try:
                    frames = front.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                worker = workers[0]
                workers.rotate(-1)
                back.send_multipart([worker, *frames], copy=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", default="tcp://127.0.0.1:6555")
    parser.add_argument("--backend", default="tcp://127.0.0.1:6556")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--curve-secret", metavar="FILE", default=None,
                        help="the broker's key pair (.key_secret): CURVE on both sockets")
    args = parser.parse_args(argv)
    keys = None
    if args.curve_secret is not None:
        public, secret = zmq.auth.load_certificate(args.curve_secret)
        if secret is None:
            parser.error(f"{args.curve_secret} holds no secret key")
        keys = (public, secret)
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=echo_worker, args=(args.backend, keys and keys[0]), daemon=True)
        for _ in range(args.workers)
    ]
    for process in processes:
        process.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run_broker(args.frontend, args.backend, keys)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            process.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
