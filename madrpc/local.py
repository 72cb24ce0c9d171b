"""An embedded local grid: a broker and a worker in threads of this process.

Used by ``madrpc run`` and handy in notebooks and tests::

    with LocalGrid("examples/monte-carlo-pi/scripts/pi.js") as grid:
        print(grid.client().call("aggregate", {"numNodes": 8}))

The endpoints are private ``ipc://`` sockets (in Linux's abstract namespace: no files).
JavaScript still runs in the worker's engine processes, one per context.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

from .broker import Broker
from .client import Client
from .config import BrokerConfig, ClientConfig, WorkerConfig
from .errors import WorkerStartError
from .sockets import private_endpoint
from .worker import Worker

__all__ = ["LocalGrid"]

START_TIMEOUT_S = 60.0
"""How long the embedded worker may take to load the script and register."""


class LocalGrid:
    """Broker + worker in background threads; stop with :meth:`close` (or ``with``)."""

    def __init__(
        self,
        script: str,
        *,
        contexts: int | None = None,
        worker_options: dict[str, Any] | None = None,
        broker_options: dict[str, Any] | None = None,
    ) -> None:
        self.frontend, self._front_dir = private_endpoint("frontend")
        self.backend, self._back_dir = private_endpoint("backend")
        self.broker = Broker(
            BrokerConfig(frontend=self.frontend, backend=self.backend, **(broker_options or {}))
        )
        worker_kwargs: dict[str, Any] = dict(worker_options or {})
        if contexts is not None:
            worker_kwargs["contexts"] = contexts
        self.worker = Worker(WorkerConfig(script=script, broker=self.backend, **worker_kwargs))
        self._worker_status: int | None = None
        self._broker_thread = threading.Thread(target=self.broker.run, name="madrpc-broker",
                                               daemon=True)
        self._worker_thread = threading.Thread(target=self._run_worker, name="madrpc-worker",
                                               daemon=True)
        self._clients: list[Client] = []
        self._broker_thread.start()
        self._worker_thread.start()
        self._wait_ready()

    def _run_worker(self) -> None:
        self._worker_status = self.worker.run()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._worker_thread.is_alive() and time.monotonic() < deadline:
            if self.worker.connected.wait(0.05):
                return
        self._worker_thread.join(1.0)
        status = self._worker_status
        self.close()
        raise WorkerStartError(
            "the embedded worker failed to start (see the log above)"
            if status else f"the embedded worker did not register within {START_TIMEOUT_S:.0f} s"
        )

    def client(self, **options: Any) -> Client:
        """A client connected to this grid (closed with the grid)."""
        client = Client(config=ClientConfig(endpoint=self.frontend, **options))
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.worker.stop(drain=False)
        self._worker_thread.join()
        self.broker.stop(drain=False)
        self._broker_thread.join()
        for directory in (self._front_dir, self._back_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> LocalGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
