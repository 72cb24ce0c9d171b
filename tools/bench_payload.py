"""Large payloads (issue 13, goal 4): a 1 MiB round trip through MaDRPC against the same
bytes echoed by the bare pyzmq broker.

    python tools/bench_payload.py      # both sides alone (part of `bench.py --only goals`)

* MaDRPC: ``Client.call("noop", [payload])``, where ``noop`` (tools/bench.js) returns its
  argument: 1 MiB of params in, 1 MiB of result out, through broker, worker, engine process
  and V8 (``JSON.parse`` and ``JSON.stringify`` of the string included).
* Baseline: the JSON-RPC request frame the client would send for that call (the same
  bytes), sent on a DEALER to tools/echo_broker.py and received back, unparsed.

Both report the p50 of ``PAYLOAD_SAMPLES`` round trips, one at a time, after a warm-up.
"""

from __future__ import annotations

import random
import string
import sys
import time
from typing import Any

import orjson
import zmq

PAYLOAD_BYTES = 1024 * 1024
PAYLOAD_SAMPLES = 40
"""Round trips timed per measurement (each takes a few milliseconds)."""
WARMUP_ROUND_TRIPS = 5
PAYLOAD_SEED = 13
RECEIVE_TIMEOUT_MS = 30_000
TRIVIAL_METHOD = "noop"
"""tools/bench.js: ``(x) => x``, so the result is the string it was given."""


def make_payload(size: int = PAYLOAD_BYTES) -> str:
    """``size`` ASCII letters (one byte each in UTF-8 and in JSON, no escapes), varied so
    that nothing on the way can take a shortcut for a run of one character."""
    chooser = random.Random(PAYLOAD_SEED)
    return "".join(chooser.choices(string.ascii_letters, k=size))


def request_frame(payload: str) -> bytes:
    """The JSON-RPC request the raw echo sends: the bytes a plain client would send."""
    return orjson.dumps({"jsonrpc": "2.0", "method": TRIVIAL_METHOD, "params": [payload],
                         "id": 1})


def p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def raw_echo_ms(endpoint: str, frame: bytes, samples: int = PAYLOAD_SAMPLES) -> float:
    """p50 round trip (ms) of ``frame`` through the bare echo broker at ``endpoint``."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, RECEIVE_TIMEOUT_MS)
    dealer.connect(endpoint)
    try:
        latencies = []
        for index in range(WARMUP_ROUND_TRIPS + samples):
            started = time.perf_counter()
            dealer.send(frame, copy=False)
            echoed = dealer.recv(copy=False)
            if index >= WARMUP_ROUND_TRIPS:
                latencies.append(time.perf_counter() - started)
        if len(echoed) != len(frame):
            raise RuntimeError(f"echo returned {len(echoed)} bytes for {len(frame)}")
        return p50(latencies) * 1000
    finally:
        dealer.close()


def grid_echo_ms(client: Any, payload: str, samples: int = PAYLOAD_SAMPLES) -> float:
    """p50 round trip (ms) of ``payload`` as params and result through MaDRPC
    (``client``: a :class:`madrpc.Client` on a grid running tools/bench.js)."""
    latencies = []
    result = None
    for index in range(WARMUP_ROUND_TRIPS + samples):
        started = time.perf_counter()
        result = client.call(TRIVIAL_METHOD, [payload])
        if index >= WARMUP_ROUND_TRIPS:
            latencies.append(time.perf_counter() - started)
    if result != payload:
        raise RuntimeError("the grid did not return the payload it was given")
    return p50(latencies) * 1000


def main() -> int:
    from bench import BENCH_SCRIPT, echo_baseline, grid

    from madrpc import Client

    payload = make_payload()
    with echo_baseline(2) as echo:
        raw_ms = raw_echo_ms(echo, request_frame(payload))
    with grid(BENCH_SCRIPT, workers=1, contexts=2) as front, Client(front, timeout=60) as client:
        grid_ms = grid_echo_ms(client, payload)
    print(f"1 MiB round trip p50: MaDRPC {grid_ms:.2f} ms, raw echo {raw_ms:.2f} ms, "
          f"ratio {grid_ms / raw_ms:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
