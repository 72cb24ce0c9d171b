"""The future :meth:`madrpc.Client.submit` returns."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .client_core import PendingCall

__all__ = ["CallFuture"]


class CallFuture(Future[Any]):
    """A call started by :meth:`Client.submit`. ``cancel()`` also cancels the call on the
    grid (and every nested call it made), even while it runs."""

    def __init__(self, call: PendingCall, cancel_call: Callable[[PendingCall], None]) -> None:
        super().__init__()
        self._call = call
        self._cancel_call = cancel_call
        call.callbacks.append(self.settle)

    def settle(self, call: PendingCall) -> None:
        """Take the call's outcome (it completed)."""
        if self.done():
            return
        if call.error is not None:
            self.set_exception(call.error)
        else:
            self.set_result(call.result)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._cancel_call(self._call)
        return True
