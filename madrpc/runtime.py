"""One V8 isolate with the MaDRPC runtime and a user script loaded. Knows nothing of ZeroMQ.

Built directly on the native library that the ``mini-racer`` package ships (its
``py_mini_racer._dll`` binding, pinned to mini-racer 0.14.x in setup.cfg). Going below
the ``MiniRacer`` class saves two of the three engine crossings its ``call()`` makes and
lets a step run asynchronously: :meth:`Runtime.step` returns at once and the outcome
arrives through the ``on_event`` callback, which runs on the isolate's own thread.

Each step passes one JSON string in (as the ``this`` of the runtime's ``step`` function,
so no argument array has to be built per call; a long one as pieces, the arguments: see
:mod:`madrpc.runtime_pieces`) and gets one string out: see ``js/bootstrap.js``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from py_mini_racer._dll import init_mini_racer, mr_callback_func

from .bundle import Bundle
from .errors import EngineError, ScriptError
from .runtime_events import MINI_RACER_TYPES, Event, EventKind
from .runtime_pieces import STEP_PIECE_BYTES, OutboxPieces, utf8_pieces
from .runtime_sources import bootstrap_source, loader_source
from .script_errors import MODULE_PREFIX, MODULE_SUFFIX, describe_load_error, describe_script_error
from .thread_states import pin_current_thread

__all__ = [
    "ENGINE_FLAGS", "MINI_RACER_TYPES", "Event", "EventKind", "Runtime", "init_engine",
    "v8_version",
]

log = logging.getLogger(__name__)

ENGINE_FLAGS: tuple[str, ...] = ("--allow-natives-syntax",)
"""V8 flags every engine process uses. ``--allow-natives-syntax`` lets the runtime drain
microtasks inside a step (one crossing per step even for async functions). mini-racer's
default ``--single-threaded`` is dropped on purpose: it disables concurrent optimisation
and made the Monte Carlo loop ~6x slower (docs/performance.md)."""

_STRING = MINI_RACER_TYPES["str_utf8"]
_ARRAY = MINI_RACER_TYPES["array"]
_OBJECT = MINI_RACER_TYPES["object"]
_FUNCTION = MINI_RACER_TYPES["function"]
_SHARED_ARRAY_BUFFER = MINI_RACER_TYPES["shared_array_buffer"]
_UNDEFINED = MINI_RACER_TYPES["undefined"]
_EXECUTE_EXCEPTION = MINI_RACER_TYPES["execute_exception"]
_OOM_EXCEPTION = MINI_RACER_TYPES["oom_exception"]
_TIMEOUT_EXCEPTION = MINI_RACER_TYPES["timeout_exception"]
_TERMINATED_EXCEPTION = MINI_RACER_TYPES["terminated_exception"]
_SETUP_ID = 1
_STEP_ID = 2
_NOTIFY_ID = 3
_PIECE_ID = 4
_MARKER_SLOTS = 4


_dll: Any = None
_dll_lock = threading.Lock()


def init_engine(extra_flags: Iterable[str] = ()) -> None:
    """Start V8 in this process with :data:`ENGINE_FLAGS` plus ``extra_flags`` (once)."""
    global _dll
    with _dll_lock:
        if _dll is None:
            _dll = init_mini_racer(flags=(*ENGINE_FLAGS, *extra_flags))


def v8_version() -> str:
    init_engine()
    return str(_dll.mr_v8_version().decode())


class Runtime:
    """A V8 isolate running the MaDRPC runtime and one user script.

    Only one step or flush may be in progress at a time; its outcome is delivered to
    ``on_event`` on the isolate's thread (keep that callback short). ``pin_thread``: keep
    that thread's Python thread state between callbacks (a long-lived context; see
    :mod:`madrpc.thread_states`).
    """

    def __init__(
        self,
        script: str | Bundle,
        script_path: str,
        on_event: Callable[[Event], None],
        *,
        max_memory_bytes: int = 0,
        pin_thread: bool = False,
    ) -> None:
        init_engine()
        self._on_event = on_event
        self._pin_thread = pin_thread
        self._setup_done = threading.Event()
        self._setup_result: Any = None
        self._task_inputs: list[Any] = []
        self._task_id: int | None = None
        self._running = False
        self._pieces = OutboxPieces()
        self._task_lock = threading.Lock()
        self._closed = False
        self._callback = mr_callback_func(self._on_callback)  # type: ignore[arg-type]
        self._ctx = _dll.mr_init_context(self._callback)
        self._held: list[Any] = []
        self._memory_limit = max_memory_bytes
        try:
            if max_memory_bytes:
                _dll.mr_set_hard_memory_limit(self._ctx, max_memory_bytes)
            self._install_runtime()
            bundle = script if isinstance(script, Bundle) else Bundle.single(script_path, script)
            self._load_bundle(bundle)
            self.methods: list[str] = self._read_methods()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ setup (blocking)

    def _on_callback(self, callback_id: int, raw: Any) -> None:
        if self._pin_thread:   # on the isolate's thread, once (see madrpc.thread_states)
            self._pin_thread = False
            pin_current_thread()
        if callback_id == _SETUP_ID:
            self._setup_result = raw
            self._setup_done.set()
            return
        if callback_id == _NOTIFY_ID:
            _dll.mr_free_value(self._ctx, raw)
            self._on_event(Event(EventKind.NOTIFY))
            return
        event = self._decode_outcome(raw)
        _dll.mr_free_value(self._ctx, raw)
        if event.kind == EventKind.DONE:
            outbox = self._outbox_from(callback_id, event.data)
            if outbox is None:
                return   # its next piece is on its way
            if outbox is not event.data:   # pieces put together: a new event
                event = Event(EventKind.DONE, outbox)
        with self._task_lock:
            inputs, self._task_inputs = self._task_inputs, []
            self._task_id = None
            self._running = False
        for handle in inputs:
            _dll.mr_free_value(self._ctx, handle)
        self._on_event(event)

    def _outbox_from(self, callback_id: int, data: bytes) -> bytes | None:
        """A finished step's outbox once it is whole; None while its pieces are being
        fetched (see :mod:`madrpc.runtime_pieces`), each started from here."""
        pieces = self._pieces
        if callback_id == _PIECE_ID:
            outbox = pieces.add(data)
        elif pieces.is_mark(data):
            pieces.expect(data)
            outbox = None
        else:
            return pieces.before(data)
        if outbox is None:
            with self._task_lock:
                self._task_id = _dll.mr_call_function(
                    self._ctx, self._piece_fn, self._undefined, self._empty_args, _PIECE_ID)
        return outbox

    @staticmethod
    def _decode_outcome(raw: Any) -> Event:
        value = raw.contents
        kind = value.type
        if kind == _STRING:
            return Event(EventKind.DONE, ctypes.string_at(value.value.value_ptr, value.len))
        if kind in (_TERMINATED_EXCEPTION, _TIMEOUT_EXCEPTION):
            return Event(EventKind.TERMINATED)
        if kind == _OOM_EXCEPTION:
            return Event(EventKind.OUT_OF_MEMORY)
        if kind >= _EXECUTE_EXCEPTION:
            return Event(EventKind.ERROR, ctypes.string_at(value.value.value_ptr, value.len))
        return Event(EventKind.ERROR, f"unexpected step result of type {kind}".encode())

    def _run_blocking(self, start: Callable[[], Any]) -> Any:
        self._setup_done.clear()
        start()
        self._setup_done.wait()
        return self._setup_result

    def _string(self, text: bytes) -> Any:
        return _dll.mr_alloc_string_val(self._ctx, text, len(text), _STRING)

    def _eval_blocking(self, source: str) -> Any:
        code = self._string(source.encode())
        try:
            return self._run_blocking(lambda: _dll.mr_eval(self._ctx, code, _SETUP_ID))
        finally:
            _dll.mr_free_value(self._ctx, code)

    def _install_runtime(self) -> None:
        factory = self._expect(self._eval_blocking(bootstrap_source()), _FUNCTION, "bootstrap")
        marker = self._expect(
            self._eval_blocking(f"new SharedArrayBuffer({8 * _MARKER_SLOTS})"),
            _SHARED_ARRAY_BUFFER, "marker",
        )
        self._marker = (ctypes.c_double * _MARKER_SLOTS).from_address(
            marker.contents.value.value_ptr
        )
        notify = _dll.mr_make_js_callback(self._ctx, _NOTIFY_ID)
        argv = self._expect(self._eval_blocking("[]"), _ARRAY, "argv")
        for item in (notify, marker):
            _dll.mr_free_value(self._ctx, _dll.mr_array_push(self._ctx, argv, item))
        self._undefined = _dll.mr_alloc_int_val(self._ctx, 0, _UNDEFINED)
        host = self._run_blocking(
            lambda: _dll.mr_call_function(self._ctx, factory, self._undefined, argv, _SETUP_ID)
        )
        self._held += [factory, marker, notify, self._undefined, host, argv]
        self._empty_args = self._expect(self._eval_blocking("[]"), _ARRAY, "args")
        self._step_fn = self._member(host, "step")
        self._flush_fn = self._member(host, "flush")
        self._piece_fn = self._member(host, "piece")
        self._methods_fn = self._member(host, "methods")
        self._held += [self._empty_args, self._step_fn, self._flush_fn, self._piece_fn,
                       self._methods_fn]

    def _member(self, obj: Any, name: str) -> Any:
        key = self._string(name.encode())
        try:
            value = _dll.mr_get_object_item(self._ctx, obj, key)
        finally:
            _dll.mr_free_value(self._ctx, key)
        return self._expect(value, _FUNCTION, name)

    def _expect(self, raw: Any, kind: int, what: str) -> Any:
        if raw.contents.type != kind:
            event = self._decode_outcome(raw)
            raise EngineError(f"MaDRPC runtime setup failed at {what}: {event.data!r}")
        return raw

    def _call_blocking(self, function: Any, this: Any, *args: Any) -> Any:
        """``function.call(this, ...args)`` (handles), blocking; the caller frees the
        result."""
        argv = self._expect(self._eval_blocking("[]"), _ARRAY, "arguments")
        try:
            for item in args:
                _dll.mr_free_value(self._ctx, _dll.mr_array_push(self._ctx, argv, item))
            return self._run_blocking(
                lambda: _dll.mr_call_function(self._ctx, function, this, argv, _SETUP_ID))
        finally:
            _dll.mr_free_value(self._ctx, argv)

    def _load_bundle(self, bundle: Bundle) -> None:
        """Compile every file of the bundle as a module, then run its entry (see
        js/modules.js); ScriptError naming file:line:column when either fails."""
        loader = self._expect(self._eval_blocking(loader_source()), _OBJECT, "loader")
        held = [loader]
        try:
            define = self._member(loader, "define")
            start = self._member(loader, "start")
            held += [define, start]
            for path in sorted(bundle.files):
                self._define_module(define, bundle, path)
            config = orjson.dumps({"entry": bundle.entry, "links": bundle.links()})
            this = self._string(config)
            held.append(this)
            outcome = self._call_blocking(start, this)
            held.append(outcome)
            report = orjson.loads(self._text_of(outcome, bundle.display(bundle.entry)))
            if "error" in report:
                raise ScriptError(describe_load_error(report, bundle))
        finally:
            for handle in held:
                _dll.mr_free_value(self._ctx, handle)

    def _define_module(self, define: Any, bundle: Bundle, path: str) -> None:
        source = bundle.files[path]
        name = bundle.display(path)
        if path.endswith(".json"):
            factory = self._string(source.encode())
        else:
            url = path.replace("\n", " ")
            factory = self._eval_blocking(f"{MODULE_PREFIX}{source}{MODULE_SUFFIX}{url}\n")
            if factory.contents.type != _FUNCTION:
                try:
                    self._text_of(factory, name, source)
                finally:
                    _dll.mr_free_value(self._ctx, factory)
                raise ScriptError(f"{name}: did not compile to a module")
        key = self._string(path.encode())
        try:
            _dll.mr_free_value(self._ctx, self._call_blocking(define, self._undefined, key,
                                                              factory))
        finally:
            _dll.mr_free_value(self._ctx, key)
            _dll.mr_free_value(self._ctx, factory)

    def _text_of(self, raw: Any, name: str, source: str = "") -> bytes:
        """The string ``raw`` holds; ScriptError (file:line:column) when it is an
        exception thrown while loading ``name``."""
        value = raw.contents
        if value.type == _OOM_EXCEPTION:
            raise ScriptError(f"{name}: out of memory while loading the script")
        if value.type in (_TERMINATED_EXCEPTION, _TIMEOUT_EXCEPTION):
            raise ScriptError(f"{name}: terminated while loading the script")
        text = ctypes.string_at(value.value.value_ptr, value.len)
        if value.type >= _EXECUTE_EXCEPTION:
            message = text.decode(errors="replace")
            raise ScriptError(describe_script_error(message, name, source,
                                                   first_line_offset=len(MODULE_PREFIX)))
        return text

    def _read_methods(self) -> list[str]:
        raw = self._run_blocking(
            lambda: _dll.mr_call_function(
                self._ctx, self._methods_fn, self._undefined, self._empty_args, _SETUP_ID
            )
        )
        try:
            event = self._decode_outcome(raw)
        finally:
            _dll.mr_free_value(self._ctx, raw)
        if event.kind != EventKind.DONE:
            raise ScriptError(f"could not list registered functions: {event.data!r}")
        names = orjson.loads(event.data)
        return [str(name) for name in names]

    # ------------------------------------------------------------ steps (asynchronous)

    def step(self, payload: bytes) -> None:
        """Start one step with ``payload`` (see js/bootstrap.js); returns at once. A long
        payload crosses in pieces (see :mod:`madrpc.runtime_pieces`)."""
        if len(payload) <= STEP_PIECE_BYTES:
            self._start(self._step_fn, self._string(payload))
            return
        base = ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p).value or 0   # no copy
        pieces = self._expect(self._eval_blocking("[]"), _ARRAY, "pieces")
        for start, end in utf8_pieces(payload):   # the array holds the string: free the handle
            piece = _dll.mr_alloc_string_val(
                self._ctx, ctypes.c_char_p(base + start), end - start, _STRING)
            _dll.mr_free_value(self._ctx, _dll.mr_array_push(self._ctx, pieces, piece))
            _dll.mr_free_value(self._ctx, piece)
        self._start(self._step_fn, self._undefined, owned=False, arguments=pieces)

    def flush(self) -> None:
        """Collect output produced outside a step (after a NOTIFY event)."""
        self._start(self._flush_fn, self._undefined, owned=False)

    def _start(self, function: Any, this: Any, owned: bool = True,
               arguments: Any = None) -> None:
        with self._task_lock:
            if self._running:
                raise EngineError("a step is already running in this context")
            self._running = True
            self._task_inputs = [this] if owned else []
            if arguments is not None:
                self._task_inputs.append(arguments)
        # The outcome may arrive (on the isolate's thread) before this call returns.
        task = _dll.mr_call_function(
            self._ctx, function, this,
            self._empty_args if arguments is None else arguments, _STEP_ID)
        with self._task_lock:
            if self._running and self._task_id is None:   # not yet a piece's task
                self._task_id = task

    def terminate(self) -> None:
        """Stop the running step; its outcome arrives as a TERMINATED event."""
        with self._task_lock:
            task = self._task_id
        if task is not None:
            _dll.mr_cancel_task(self._ctx, task)

    def relabel(self, on_event: Callable[[Event], None]) -> None:
        """Send later events to ``on_event`` (a spare context handed to a request)."""
        self._on_event = on_event

    def marker(self) -> tuple[int, int, float, bool]:
        """(sequence, request key, budget in ms, whether the budget is what is left of the
        request's CPU limit rather than of its deadline) of the segment running now."""
        marker = self._marker
        sequence, key, budget, kind = marker[0], marker[1], marker[2], marker[3]
        if sequence != marker[0] or int(sequence) % 2:   # read while JavaScript wrote it
            return -1, 0, 0.0, False
        return int(sequence), int(key), float(budget), kind == 1.0

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Hard heap limit from now on (0: none)."""
        if limit_bytes != self._memory_limit:
            self._memory_limit = limit_bytes
            _dll.mr_set_hard_memory_limit(self._ctx, limit_bytes)

    def memory_limit_reached(self) -> bool:
        return bool(_dll.mr_hard_memory_limit_reached(self._ctx))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _dll.mr_free_context(self._ctx)
