"""The ``curve`` section of tools/bench.py: what CURVE costs, against the same setup without it.

* Trivial calls (``noop``), 1 and 64 in flight, through two grids up side by side, each a
  broker and 1 worker with 2 contexts: one plain, one with CURVE on both broker sockets
  (``--curve-secret``, ``--worker-keys``, ``--client-keys``).
* The same through the bare pyzmq echo broker (tools/echo_broker.py, 1 echo worker) with
  and without ``--curve-secret``: the transport's own cost, with no MaDRPC around it.
* What the broker's loop does more per message with CURVE (read the sender's key from the
  message's metadata, look up its role), timed on its own in this process.

Everything runs over TCP loopback. Load runs alternate between the plain and the CURVE
setup, the order flipping every round; figures are medians over ``--runs`` rounds, the
ratio the median of each round's own CURVE/plain ratio (printed with their range).
Keys are made in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from bench import BENCH_SCRIPT, echo_baseline, grid, load

from madrpc.curve import ClientCurve, keygen, load_keypair, load_public_key

IN_FLIGHT = (1, 64)


@dataclass(frozen=True)
class Keys:
    broker_secret: Path
    broker_public: Path
    worker_secret: Path
    worker_dir: Path
    client_secret: Path
    client_dir: Path


@contextmanager
def curve_keys() -> Iterator[Keys]:
    """A key pair each for the broker, a worker and a client, in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="madrpc-bench-curve-") as tmp:
        root = Path(tmp)
        broker_public, broker_secret = keygen("broker", root / "broker")
        _, worker_secret = keygen("worker", root / "workers")
        _, client_secret = keygen("client", root / "clients")
        yield Keys(broker_secret, broker_public, worker_secret, root / "workers",
                   client_secret, root / "clients")


Samples = dict[int, dict[str, list[dict[str, float]]]]
"""load() results by requests in flight, then setup ("plain", "curve"), one per round."""


def alternate(runs: int, duration_s: float, setups: dict[str, tuple[str, Any]]) -> Samples:
    """``runs`` rounds of load on each setup (endpoint, ClientCurve or None); within a round,
    for each number in flight, one load run per setup back to back, the order flipping
    every round so that neither setup always goes first."""
    samples: Samples = {n: {name: [] for name in setups} for n in IN_FLIGHT}
    names = list(setups)
    for round_ in range(runs):
        for n in IN_FLIGHT:
            for name in names if round_ % 2 == 0 else names[::-1]:
                front, curve = setups[name]
                samples[n][name].append(load(front, n, duration_s, curve=curve))
    return samples


def median(runs: list[dict[str, float]], figure: str) -> float:
    return statistics.median(run[figure] for run in runs)


def rows_for(label: str, samples: Samples, runs: int) -> list[str]:
    """Median req/s, p50, p99 of each setup; the ratio is the median of the rounds' own
    CURVE/plain ratios (each from two back-to-back runs), with their range."""
    rows = []
    for n in IN_FLIGHT:
        c, p = samples[n]["curve"], samples[n]["plain"]
        ratios = [a["req_s"] / b["req_s"] for a, b in zip(c, p, strict=True)]
        rows.append(
            f"| {label}, {n:>2} in flight (median of {runs} alternating runs) "
            f"| CURVE {median(c, 'req_s'):6.0f} req/s, p50 {median(c, 'p50_ms'):.2f} ms, "
            f"p99 {median(c, 'p99_ms'):.2f} ms "
            f"| plain {median(p, 'req_s'):6.0f} req/s, p50 {median(p, 'p50_ms'):.2f} ms, "
            f"p99 {median(p, 'p99_ms'):.2f} ms "
            f"| CURVE/plain **{statistics.median(ratios):.0%}** "
            f"(runs {min(ratios):.0%}-{max(ratios):.0%}) |"
        )
    return rows


def key_read_cost(keys: Keys, client: ClientCurve, runs: int,
                  messages: int = 20_000) -> tuple[float, float]:
    """Seconds per message to receive a queued client message on a CURVE ROUTER: as the
    broker does without CURVE (recv_multipart), and as it does with CURVE (the message and
    its User-Id, then the key's role). Median of ``runs`` alternating rounds each."""
    from madrpc.broker import receive_with_key
    from madrpc.curve import FRONTEND_DOMAIN, Gatekeeper, KeyRing, apply_client, apply_server

    context = zmq.Context()
    ring = KeyRing.from_dirs(str(keys.client_dir), str(keys.worker_dir))
    gatekeeper = Gatekeeper(context, ring)
    gatekeeper.start()
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    try:
        for socket in (router, dealer):
            socket.linger = 0
            socket.sndhwm = socket.rcvhwm = messages * 2
        apply_server(router, load_keypair(keys.broker_secret), FRONTEND_DOMAIN)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        apply_client(dealer, client)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        frame = b'{"jsonrpc":"2.0","method":"noop","params":[1],"id":1}'

        def plain() -> None:
            router.recv_multipart(zmq.NOBLOCK)

        def keyed() -> None:
            _, peer = receive_with_key(router)
            if ring.frontend_role(peer) is None:
                raise RuntimeError("the client's key was not read from the message")

        def per_message(receive: Callable[[], None]) -> float:
            for _ in range(messages):
                dealer.send(frame)
            time.sleep(0.5)   # let libzmq's I/O thread decrypt and queue them all
            start = time.perf_counter()
            for _ in range(messages):
                try:
                    receive()
                except zmq.Again:   # not all queued yet (rare): wait off the clock
                    paused = time.perf_counter()
                    router.poll(5000)
                    start += time.perf_counter() - paused
                    receive()
            return (time.perf_counter() - start) / messages

        per_message(keyed)   # handshake and warm-up
        samples: dict[str, list[float]] = {"plain": [], "keyed": []}
        for round_ in range(runs):
            order = ("plain", "keyed") if round_ % 2 == 0 else ("keyed", "plain")
            for name in order:
                samples[name].append(per_message(plain if name == "plain" else keyed))
    finally:
        dealer.close()
        router.close()
        gatekeeper.stop()
        context.term()
    return statistics.median(samples["plain"]), statistics.median(samples["keyed"])


def bench_curve(duration_s: float, runs: int) -> list[str]:
    with curve_keys() as keys:
        client = ClientCurve(load_keypair(keys.client_secret),
                             load_public_key(keys.broker_public))
        with echo_baseline(1) as plain, \
                echo_baseline(1, ("--curve-secret", str(keys.broker_secret))) as curve:
            echo = alternate(runs, duration_s, {"plain": (plain, None), "curve": (curve, client)})
        with ExitStack() as stack:
            plain = stack.enter_context(grid(BENCH_SCRIPT, workers=1, contexts=2))
            curve = stack.enter_context(grid(
                BENCH_SCRIPT, workers=1, contexts=2,
                broker_args=("--curve-secret", str(keys.broker_secret),
                             "--worker-keys", str(keys.worker_dir),
                             "--client-keys", str(keys.client_dir)),
                worker_args=("--curve-secret", str(keys.worker_secret),
                             "--server-key", str(keys.broker_public)),
                client_options={"curve_secret": str(keys.client_secret),
                                "server_key": str(keys.broker_public)},
            ))
            grids = alternate(runs, duration_s,
                              {"plain": (plain, None), "curve": (curve, client)})
        recv_plain, recv_keyed = key_read_cost(keys, client, runs)
    per_request = 1 / median(grids[64]["curve"], "req_s")
    extra = recv_keyed - recv_plain
    return [
        *rows_for("trivial call through the grid (1 worker, 2 contexts)", grids, runs),
        *rows_for("bare pyzmq echo (tools/echo_broker.py, 1 echo worker)", echo, runs),
        f"| broker loop, receiving a queued client message with CURVE: message + key + role "
        f"(median of {runs} alternating runs of 20,000) | {recv_keyed * 1e6:.2f} us | "
        f"recv_multipart {recv_plain * 1e6:.2f} us | {extra * 1e6:+.2f} us per message, "
        f"**{extra / per_request:+.1%}** of a CURVE grid request's time at 64 in flight "
        f"({per_request * 1e6:.0f} us) |",
    ]
