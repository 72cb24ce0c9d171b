"""An embedded local grid: a broker and a worker in threads of this process.

Used by ``madrpc run`` and handy in notebooks and tests::

    with LocalGrid("examples/monte-carlo-pi/scripts/pi.js") as grid:
        print(grid.client().call("aggregate", {"numNodes": 8}))

The endpoints are private ``ipc://`` socket files in directories only the current user
can enter (see :func:`madrpc.sockets.private_endpoint`); :meth:`LocalGrid.close` removes
them, also when the grid fails to start. Other processes connect there. The worker and
the clients from :meth:`LocalGrid.client` share the broker's ZeroMQ context and reach it
over ``inproc://`` (:meth:`madrpc.broker.Broker.bind_in_process`): their messages go
from thread to thread without ZeroMQ's I/O threads (a lone call took 18% less time,
docs/performance.md). With CURVE keys in ``broker_options`` everything goes
through the ``ipc://`` endpoints, where keys are checked. JavaScript still runs in the
worker's engine processes, one per context.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from .broker import Broker
from .client import Client
from .config import BrokerConfig, ClientConfig, WorkerConfig
from .errors import WorkerStartError
from .sockets import private_endpoint, remove_private_directory
from .worker import Worker

__all__ = ["IN_PROCESS_NAME", "LocalGrid"]

START_TIMEOUT_S = 60.0
"""How long the embedded worker may take to load the script and register."""


IN_PROCESS_NAME = "madrpc-local"
"""The ``inproc://`` endpoints' name (their context is the grid's own, so no two grids
share it)."""


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
        self._clients: list[Client] = []
        self._worker_status: int | None = None
        self._undo = contextlib.ExitStack()
        """What :meth:`close` undoes, last started first: threads, sockets, directories."""
        self._worker_thread: threading.Thread | None = None
        self.context: zmq.Context[Any] = zmq.Context()
        """Shared by the broker, the worker and the clients of :meth:`client`."""
        self._undo.callback(self.context.destroy, linger=0)
        worker_kwargs: dict[str, Any] = dict(worker_options or {})
        if contexts is not None:
            worker_kwargs["contexts"] = contexts
        try:
            self.frontend = self._private_endpoint("frontend")
            """The endpoint other processes connect to (``ipc://``)."""
            self.backend = self._private_endpoint("backend")
            self.broker = Broker(
                BrokerConfig(frontend=self.frontend, backend=self.backend,
                             **(broker_options or {})),
                context=self.context,
            )
            self._client_endpoint, worker_endpoint = self.frontend, self.backend
            if self.broker.keys is None:
                self._client_endpoint, worker_endpoint = self.broker.bind_in_process(
                    IN_PROCESS_NAME)
            self._start(self.broker.run, "madrpc-broker", self.broker.stop)
            self.worker = Worker(WorkerConfig(script=script, broker=worker_endpoint,
                                              **worker_kwargs), context=self.context)
            self._undo.callback(self._release_engines)
            self._worker_thread = self._start(self._run_worker, "madrpc-worker",
                                              self.worker.stop)
            self._wait_ready(self._worker_thread)
        except BaseException:
            self.close()
            raise

    def _private_endpoint(self, name: str) -> str:
        endpoint, directory = private_endpoint(name)
        self._undo.callback(remove_private_directory, directory)
        return endpoint

    def _start(self, target: Callable[[], object], name: str,
               stop: Callable[..., None]) -> threading.Thread:
        """Run ``target`` in a daemon thread; :meth:`close` stops it without draining."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._undo.callback(thread.join)
        self._undo.callback(stop, drain=False)
        return thread

    def _run_worker(self) -> None:
        self._worker_status = self.worker.run()

    def _release_engines(self) -> None:
        """Close the engine pool and remove its directory in case the worker's ``run()``
        never did (its thread never started); never while that thread runs."""
        if self._worker_thread is None or not self._worker_thread.is_alive():
            self.worker.pool.close()

    def _wait_ready(self, worker_thread: threading.Thread) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while worker_thread.is_alive() and time.monotonic() < deadline:
            if self.worker.connected.wait(0.05):
                return
        worker_thread.join(1.0)
        raise WorkerStartError(
            "the embedded worker failed to start (see the log above)"
            if self._worker_status else
            f"the embedded worker did not register within {START_TIMEOUT_S:.0f} s"
        )

    def client(self, **options: Any) -> Client:
        """A client connected to this grid (closed with the grid), over ``inproc://``
        unless the broker has CURVE keys."""
        client = Client(config=ClientConfig(endpoint=self._client_endpoint, **options),
                        context=self.context)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the clients, stop the worker and the broker, remove the socket directories.
        Closing twice is harmless."""
        try:
            while self._clients:
                self._clients.pop().close()
        finally:
            self._undo.close()

    def __enter__(self) -> LocalGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
