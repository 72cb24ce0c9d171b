// MaDRPC runtime: evaluated in every V8 context before the user's script.
//
// It evaluates to a function that the engine calls once with (notify, markerBuffer) and
// that returns the host interface {step, flush, piece, methods}. Everything the engine needs
// stays inside this closure; the script only sees `madrpc`, `console`, the timers and
// the standard web APIs js/webapi.js installs (TextEncoder, crypto, structuredClone...).
//
// One engine crossing = one call to step(), whose `this` is the payload (a long one comes
// in pieces, as the arguments: madrpc/runtime_pieces.py): a JSON object whose members
// are handled in this order (each may be missing):
//   x  [key, ...]                               cancel these requests
//   p  [[call, [item, ...]], ...]               items of the nested stream call <call>
//   s  [[call, {"result":..}|{"error":..}], ...]  nested calls finished (a stream: its end)
//   r  [[key, deadline, cpu, depth, body], ...] start these requests
//   m  [[key, n], ...]                          request <key>'s stream may send n more items
// then it runs all their microtasks and returns the outbox as newline-separated lines
// (JSON.stringify never emits a raw newline; a long outbox leaves in pieces, see
// handOut()):
//   R <key> <fragment>            a request finished; fragment is "result":.. or "error":..
//   C <call> <owner> <body>       a nested call made by request <owner>
//   L <level> <owner> <json>      a console line: [method, id, text]
//   P <key> <count> <json array>  <count> items of request <key>'s stream; every P line of
//                                 a request comes before its R line
//   M <call> <n>                  the script took n more items of its nested stream <call>
//   X <call>                      the script left its nested stream <call> early
// User code runs only inside a crossing (a step or a flush), where the engine's watchdog
// can stop it: a timer whose delay passed only records that it is due and calls notify()
// once; the engine then calls flush(), which runs the due timers' callbacks and collects
// what they produced.
//
// The marker (a shared Float64Array) tells the engine which request's code is running
// and for how long it may run: [sequence, key, budget_ms, 1 if the budget is the CPU
// limit's rest, 2 if the deadline's]. The sequence is odd while the other fields change
// (the engine reads it before and after them, and ignores a read that overlapped a
// change: once a pooled engine starts a queued step the moment the one before ends, its
// watchdog often looks just as the new step's first request enters). A request's budget
// is what is left of its CPU limit (all its segments count: the first step,
// continuations after nested calls, timers and promises, and the code of the generators
// it streams) or of its deadline, whichever is less. The engine's watchdog terminates a segment that
// outlives its budget.
//
// Streams. A request whose body has madrpc.stream (true, or {window: n}) runs in stream
// mode: the iterator (or array) its function returns is pumped, item by item, into P
// lines, never more items than its credit (the window, plus what the `m` grants add); at
// credit 0 the iterator is left suspended until a grant. In plain mode a returned
// iterator is collected and the answer is the array. madrpc.stream() is the other side:
// the items of a nested stream call arrive in `p`, its end in `s`.
(function (notify, markerBuffer) {
  'use strict';
  const parse = JSON.parse;
  const stringify = JSON.stringify;
  const now = Date.now;
  const ITERATOR = Symbol.iterator;
  const ASYNC_ITERATOR = Symbol.asyncIterator;
  const marker = new Float64Array(markerBuffer);
  const checkpoint = () => { %PerformMicrotaskCheckpoint(); };

  const RUNTIME_URL = 'madrpc-runtime.js';
  const RESERVED = new Set(['_metrics', '_info', '_ping', '_cancel', '_more', '_drain']);
  const MAX_LOG_LINES = 1000;     // per crossing; the rest are counted, not kept
  const MAX_LOG_CHARS = 8192;     // per console line
  const JS_EXCEPTION = -32000;
  const INVALID_REQUEST = -32600;
  const METHOD_NOT_FOUND = -32601;
  const NOT_SERIALIZABLE = -32009;
  const CANCELLED = -32011;
  // A P line is cut once its JSON reaches this many characters, so a big stream never
  // builds one huge string (a line is at most this plus one item).
  const STREAM_CHUNK_BYTES = 65536;
  const DEFAULT_STREAM_WINDOW = 64;    // = madrpc.jsonrpc.DEFAULT_STREAM_WINDOW
  const MAX_STREAM_WINDOW = 10000;     // = madrpc.jsonrpc.MAX_STREAM_WINDOW
  // JSON.stringify writes a lone surrogate as an escape (a pair stays as characters): one
  // after an even number of backslashes is a string no JSON parser downstream will take.
  const LONE_SURROGATE = /(?:^|[^\\])(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;

  // Nested calls carry idempotency keys (this prefix + call id), so a call sent again to
  // a restarted broker joins the execution the old one had started instead of repeating it.
  const KEY_PREFIX = 'js-' + Math.random().toString(36).slice(2) +
                     Math.random().toString(36).slice(2);
  const registry = new Map();     // method name -> function
  // key -> {key, method, id, deadline, cpu, depth, calls, timers, spent,
  //         window (0: plain mode), credit, pump (null until it returns an iterator)}
  const requests = new Map();
  // call id -> {resolve, reject, owner}, or for madrpc.stream a StreamCall (+ feed)
  const calls = new Map();
  const chunked = new Set();      // requests whose pump holds items not yet in a P line
  let out = [];
  let logLines = 0;
  let droppedLogs = 0;
  let current = null;             // request whose code runs now
  let enteredAt = 0;              // when current's segment began (ms)
  let nextCall = 1;
  let inCrossing = false;
  let notified = false;

  function emit(line) {
    out.push(line);
    wake();
  }

  // Ask the engine for a crossing (a flush), once, when none is running.
  function wake() {
    if (!inCrossing && !notified) {
      notified = true;
      notify();
    }
  }

  function enter(req) {
    const t = now();
    if (current !== null) current.spent += t - enteredAt;
    current = req;
    enteredAt = t;
    marker[0] = marker[0] + 1;   // odd while the fields change (a seqlock: see runtime.py)
    if (req === null) {
      marker[1] = 0;
      marker[2] = 0;
      marker[3] = 0;
    } else {
      const cpuLeft = req.cpu - req.spent;
      const timeLeft = req.deadline - t;
      marker[1] = req.key;
      marker[2] = Math.max(1, Math.min(cpuLeft, timeLeft));
      marker[3] = cpuLeft <= timeLeft ? 1 : 2;
    }
    marker[0] = marker[0] + 1;
  }

  // Run fn as request req's code, then every microtask it queued, attributed to req.
  function runAs(req, fn) {
    enter(req);
    try {
      fn();
    } finally {
      checkpoint();
      enter(null);
    }
  }

  // Run fn as req from inside a microtask. Usually req is running already; but a promise
  // req awaits may have been resolved by another request's code, whose segment the
  // continuation then runs in: switch to req (its time, its budget) and back.
  function as(req, fn) {
    if (current === req) return fn();
    const previous = current;
    enter(req);
    try {
      return fn();
    } finally {
      enter(previous);
    }
  }

  class RpcError extends Error {
    constructor(code, message, data) {
      super(message);
      this.name = 'RpcError';
      this.code = code;
      if (data !== undefined) this.data = data;
    }
  }

  function errorFragment(code, message, data) {
    const error = {code, message: String(message)};
    if (data !== undefined) error.data = data;
    try {
      return '"error":' + stringify(error);
    } catch (e) {
      return '"error":' + stringify({code, message: String(message)});
    }
  }

  function describe(e) {
    if (e instanceof RpcError && Number.isInteger(e.code)) {
      return errorFragment(e.code, e.message, e.data);
    }
    if (e instanceof Error) {
      const name = String(e.name || 'Error');
      const message = String(e.message);
      return errorFragment(JS_EXCEPTION, name + ': ' + message,
                           {name, message, stack: userStack(e)});
    }
    let text;
    try { text = typeof e === 'string' ? e : stringify(e); } catch (_) { text = String(e); }
    return errorFragment(JS_EXCEPTION, 'Uncaught ' + text,
                         {name: typeof e, message: String(text), stack: ''});
  }

  // The error's stack without the frames of this runtime, with the user's columns.
  function userStack(e) {
    return String(e.stack || '').split('\n')
      .filter((line) => !line.includes(RUNTIME_URL)).map(userColumn).join('\n');
  }

  // Each file of a script is compiled behind a one-line prefix of MODULE_PREFIX_LENGTH
  // characters (runtime's script_errors.MODULE_PREFIX; a unit test keeps them equal), so
  // V8's columns on a file's first line are that much too far right: take it back.
  const MODULE_PREFIX_LENGTH = 61;
  function userColumn(frame) {
    return frame.replace(/:1:(\d+)(\)?)$/, (whole, column, paren) =>
      Number(column) > MODULE_PREFIX_LENGTH
        ? `:1:${Number(column) - MODULE_PREFIX_LENGTH}${paren || ''}` : whole);
  }

  // The JSON of a result or a stream item (`what` names it in the error). Throws an
  // RpcError -32009 when there is none a client could read: stringify threw (BigInt, a
  // cycle), or the JSON holds a lone surrogate.
  function serialize(req, value, what) {
    let json;
    try {
      json = stringify(value === undefined ? null : value);
    } catch (e) {
      throw new RpcError(NOT_SERIALIZABLE, what + ' not serializable: ' + (e && e.message),
                         {method: req.method});
    }
    if (json === undefined) return 'null';   // a function or a symbol
    if (json.indexOf('\\ud') !== -1 && LONE_SURROGATE.test(json)) {
      throw new RpcError(NOT_SERIALIZABLE, what + ' not serializable: it holds a lone ' +
                         'surrogate (a string that is not valid Unicode)', {method: req.method});
    }
    return json;
  }

  function live(req) {
    return requests.get(req.key) === req;
  }

  // The request is over: forget it, the timers it set and the items it has not sent.
  function forget(req) {
    requests.delete(req.key);
    chunked.delete(req);
    for (const id of req.timers) timers.delete(id);
  }

  function finish(req, value) {
    if (!live(req)) return;   // cancelled meanwhile
    let json;
    try {
      json = serialize(req, value, 'Result');
    } catch (e) {
      fail(req, e);
      return;
    }
    flushItems(req);
    forget(req);
    emit('R ' + req.key + ' "result":' + json);
  }

  function fail(req, e) {
    if (!live(req)) return;
    flushItems(req);   // the items sent before the error stay valid
    forget(req);
    emit('R ' + req.key + ' ' + describe(e));
  }

  // The window of a stream-mode request (madrpc.stream is true or {window: n}; the broker
  // checked it); 0 for a plain request.
  function streamWindow(body) {
    const options = body.madrpc;
    const stream = options !== null && typeof options === 'object' ? options.stream : undefined;
    if (stream === true) return DEFAULT_STREAM_WINDOW;
    if (stream === null || typeof stream !== 'object') return 0;
    const window = stream.window;
    return Number.isInteger(window) && window > 0 ? window : DEFAULT_STREAM_WINDOW;
  }

  function start(entry) {
    const [key, deadline, cpu, depth, body] = entry;
    const method = body.method;
    const window = streamWindow(body);
    const req = {key, method, id: body.id, deadline, cpu, depth, calls: new Set(),
                 timers: new Set(), spent: 0, window, credit: window, pump: null};
    requests.set(key, req);
    const fn = registry.get(method);
    if (fn === undefined) {
      emit('R ' + key + ' ' + errorFragment(METHOD_NOT_FOUND,
        'Method not found: ' + method));
      requests.delete(key);
      return;
    }
    const params = body.params;
    runAs(req, () => {
      let result;
      try {
        result = params === undefined ? fn()
          : Array.isArray(params) ? fn(...params) : fn(params);
      } catch (e) {
        fail(req, e);
        return;
      }
      let then = null;
      try {
        then = result !== null && (typeof result === 'object' || typeof result === 'function')
          ? result.then : null;
      } catch (e) {
        fail(req, e);
        return;
      }
      if (typeof then === 'function') {
        Promise.resolve(result).then((v) => as(req, () => complete(req, v)),
                                     (e) => fail(req, e));
      } else {
        complete(req, result);
      }
    });
  }

  // The function's value (resolved, if it was a promise): the answer, or (stream mode, or
  // an iterator in plain mode) where the items come from.
  function complete(req, value) {
    if (!live(req)) return;
    let kind;
    try {
      kind = iteratorKind(value);
    } catch (e) {   // a getter of the value threw
      fail(req, e);
      return;
    }
    if (req.window > 0) {
      if (kind === null && !Array.isArray(value)) {
        fail(req, new RpcError(INVALID_REQUEST, "Invalid Request: '" + req.method +
          "' returned " + (value === null ? 'null' : typeof value) +
          ', not a generator or an iterable; call it without stream'));
        return;
      }
      if (kind === null) startPump(req, arrayIterator(value), false, null);
      else startPump(req, value, kind === 'async', null);
    } else if (kind !== null) {
      req.credit = Infinity;
      startPump(req, value, kind === 'async', []);
    } else {
      finish(req, value);
    }
  }

  // 'async' or 'sync' for a stream value: an iterator that is also iterable (a generator,
  // an async generator, a Map's entries()...); null for anything else, arrays and strings
  // included (they have no next method).
  function iteratorKind(value) {
    if (value === null || (typeof value !== 'object' && typeof value !== 'function')) {
      return null;
    }
    if (typeof value.next !== 'function') return null;
    if (typeof value[ASYNC_ITERATOR] === 'function') return 'async';
    return typeof value[ITERATOR] === 'function' ? 'sync' : null;
  }

  // An array's elements, pumped like a generator's (without the array's own iterator,
  // which a script may have replaced).
  function arrayIterator(array) {
    let index = 0;
    return {
      next: () => (index < array.length ? {value: array[index++], done: false}
                                        : {value: undefined, done: true}),
    };
  }

  // ------------------------------------------------------------------ the pump

  // req.pump: {iterator, isAsync, pulling (an async next() is pending), collected (plain
  // mode: the items so far; null in stream mode), chunk (JSON of items not yet in a P
  // line), chars (their length), sent (items of the stream so far)}.
  function startPump(req, iterator, isAsync, collected) {
    req.pump = {iterator, isAsync, pulling: false, collected, chunk: [], chars: 0, sent: 0};
    pump(req);
  }

  // Pull items while req has credit. Its caller runs it as req, so the iterator's code
  // (a generator's body) is timed and limited as req's.
  function pump(req) {
    if (req.pump.isAsync) pullAsync(req);
    else pullSync(req);
  }

  const DONE = {};   // readItem's answer for an iterator that has finished

  // The item of one next() result, or DONE; a TypeError for a result that is no object.
  function readItem(result) {
    if (result === null || typeof result !== 'object') {
      throw new TypeError('Iterator result ' + typeof result + ' is not an object');
    }
    return result.done ? DONE : result.value;
  }

  // A sync iterator: one item per next() while there is credit. At 0 credit it stays
  // suspended (next() not called) until a grant pumps again.
  function pullSync(req) {
    const iterator = req.pump.iterator;
    while (req.credit > 0) {
      let item;
      try {
        item = readItem(iterator.next());
      } catch (e) {   // the generator threw
        fail(req, e);
        return;
      }
      if (!advance(req, item)) return;
    }
  }

  // An async iterator: one next() at a time; its answer pulls the next one, in the same
  // crossing when it comes from a microtask, in a later one when it waits for a nested
  // call or a timer.
  function pullAsync(req) {
    const pump = req.pump;
    if (pump.pulling || req.credit <= 0 || !live(req)) return;
    pump.pulling = true;
    let promise;
    try {
      promise = pump.iterator.next();
    } catch (e) {
      fail(req, e);
      return;
    }
    Promise.resolve(promise).then((result) => as(req, () => pulled(req, result)),
                                  (e) => as(req, () => fail(req, e)));
  }

  function pulled(req, result) {
    req.pump.pulling = false;
    if (!live(req)) return;   // cancelled while it waited
    let item;
    try {
      item = readItem(result);
    } catch (e) {
      fail(req, e);
      return;
    }
    if (advance(req, item)) pullAsync(req);
  }

  // One item out of the iterator (or its end); true if the pump goes on.
  function advance(req, item) {
    const pump = req.pump;
    if (item === DONE) {
      finish(req, pump.collected !== null ? pump.collected : {items: pump.sent});
      return false;
    }
    req.credit--;
    if (pump.collected !== null) {
      pump.collected.push(item);
      return true;
    }
    let json;
    try {
      json = serialize(req, item, 'Stream item');
    } catch (e) {   // the stream ends here; the generator's finally blocks still run
      closeIterator(req);
      fail(req, e);
      return false;
    }
    pump.chunk.push(json);
    pump.chars += json.length + 1;
    pump.sent++;
    chunked.add(req);
    if (pump.chars >= STREAM_CHUNK_BYTES) flushItems(req);
    return true;
  }

  // The items req's pump holds, as one P line.
  function flushItems(req) {
    const pump = req.pump;
    if (pump === null || pump.chunk.length === 0) return;
    emit('P ' + req.key + ' ' + pump.chunk.length + ' [' + pump.chunk.join(',') + ']');
    pump.chunk = [];
    pump.chars = 0;
    chunked.delete(req);
  }

  // Close req's iterator early (cancel, an item that cannot be sent) so its finally blocks
  // run; the caller runs it as req. What return() gives or throws no longer matters.
  function closeIterator(req) {
    const pump = req.pump;
    if (pump === null) return;
    try {
      const close = pump.iterator.return;
      if (typeof close !== 'function') return;
      const closed = close.call(pump.iterator);
      if (pump.isAsync) Promise.resolve(closed).then(undefined, () => {});
    } catch (_) { /* the request is over either way */ }
  }

  // The consumer of request key's stream took n more items: it may send n more.
  function grant(key, n) {
    const req = requests.get(key);
    if (req === undefined || req.window === 0 || !(n > 0)) return;
    req.credit += n;
    if (req.pump !== null) runAs(req, () => pump(req));
  }

  // ------------------------------------------------------------------ cancel, results

  // The request was cancelled on the grid: it will never answer (the items it has not
  // sent are dropped). Its signal fires, the nested calls it awaits reject with a
  // cancellation error and its iterator is closed, as its own code, so that cleanup
  // (finally blocks, abort listeners) runs under its limits.
  function cancel(key) {
    const req = requests.get(key);
    if (req === undefined) return;
    forget(req);
    const reason = new RpcError(CANCELLED, 'Cancelled: the request was cancelled');
    const pending = [...req.calls].map((id) => calls.get(id)).filter((c) => c !== undefined);
    for (const id of req.calls) calls.delete(id);
    req.calls.clear();
    runAs(req, () => {
      if (req.signal !== undefined) req.signal.abort(reason);
      for (const call of pending) call.reject(reason);
      closeIterator(req);
    });
  }

  // madrpc.signal: an AbortSignal-like object per request, fired when it is cancelled.
  class Signal {
    constructor() {
      this.aborted = false;
      this.reason = undefined;
      this.onabort = null;
      this.listeners = [];
    }
    addEventListener(type, listener) {
      if (type === 'abort' && typeof listener === 'function') this.listeners.push(listener);
    }
    removeEventListener(type, listener) {
      this.listeners = this.listeners.filter((l) => l !== listener);
    }
    throwIfAborted() {
      if (this.aborted) throw this.reason;
    }
    abort(reason) {
      if (this.aborted) return;
      this.aborted = true;
      this.reason = reason;
      const event = {type: 'abort', target: this};
      for (const listener of [this.onabort, ...this.listeners]) {
        if (typeof listener !== 'function') continue;
        try { listener.call(this, event); } catch (_) { /* a listener cannot stop the cancel */ }
      }
    }
  }
  const NEVER_ABORTED = Object.freeze(new Signal());

  function signal() {
    if (current === null) return NEVER_ABORTED;
    if (current.signal === undefined) current.signal = new Signal();
    return current.signal;
  }

  function forgetCall(id, owner) {
    calls.delete(id);
    if (owner !== null) owner.calls.delete(id);
  }

  // Entries [[call id, data], ...] grouped by the request that made each call, so each
  // request's continuations run (and are timed) as that request. Calls of a cancelled
  // request are left out; with `over`, the calls are finished and forgotten.
  function byOwner(entries, over) {
    const groups = new Map();
    for (const [id, data] of entries) {
      const call = calls.get(id);
      if (call === undefined) continue;
      const owner = call.owner;
      if (over) forgetCall(id, owner);
      if (owner !== null && !live(owner)) continue;
      if (!groups.has(owner)) groups.set(owner, []);
      groups.get(owner).push([call, data]);
    }
    return groups;
  }

  // Results of nested calls (the end of a nested stream).
  function settle(results) {
    for (const [owner, group] of byOwner(results, true)) {
      runAs(owner, () => {
        for (const [call, outcome] of group) {
          if (outcome.error !== undefined) {
            const err = outcome.error || {};
            call.reject(new RpcError(err.code, err.message, err.data));
          } else {
            call.resolve(outcome.result);
          }
        }
      });
    }
  }

  // Items of nested streams, for the madrpc.stream iterators waiting for them.
  function feed(entries) {
    for (const [owner, group] of byOwner(entries, false)) {
      runAs(owner, () => {
        for (const [call, items] of group) {
          if (call instanceof StreamCall) call.feed(items);
        }
      });
    }
  }

  // Run the callbacks of the timers that were due when the crossing began (each as the
  // request that set it, with its microtasks); timers that fall due meanwhile wait for
  // the next crossing, so a chain of zero-delay timers cannot hold a crossing for ever.
  function runDueTimers() {
    if (due.length === 0) return;
    const batch = due;
    due = [];
    for (const id of batch) {
      const timer = timers.get(id);
      if (timer === undefined) continue;
      timers.delete(id);
      const owner = timer.owner;
      if (owner !== null && !live(owner)) continue;
      runAs(owner, () => timer.fn(...timer.args));
    }
  }

  function drain() {
    for (const req of chunked) flushItems(req);   // a crossing sends every item it made
    if (droppedLogs > 0) {
      out.push('L warn 0 ' + stringify(['', null,
        droppedLogs + ' console lines dropped (more than ' + MAX_LOG_LINES + ')']));
    }
    const text = out.join('\n');
    out = [];
    logLines = 0;
    droppedLogs = 0;
    notified = false;
    return handOut(text);
  }

  // A long outbox leaves V8 in pieces (madrpc/runtime_pieces.py): handOut() keeps them
  // and returns a mark with their number; the runtime then calls piece() for each.
  const OUT_PIECE_UNITS = 256 * 1024;   // UTF-16 code units: at most 768 KiB of UTF-8
  const OUT_PIECES_MARK = '\u0000';
  let heldPieces = [];   // the pieces not yet fetched, the next one last

  function handOut(text) {
    if (heldPieces.length > 0) {   // fetching the last one was stopped: the rest goes first
      const rest = heldPieces.reverse().join('');
      heldPieces = [];
      text = text === '' ? rest : rest + '\n' + text;
    }
    if (text.length <= OUT_PIECE_UNITS) return text;
    for (let at = 0; at < text.length;) {
      let end = Math.min(at + OUT_PIECE_UNITS, text.length);
      const unit = text.charCodeAt(end - 1);
      if (end < text.length && unit >= 0xD800 && unit <= 0xDBFF) end -= 1;   // a whole pair
      heldPieces.push(text.slice(at, end));
      at = end;
    }
    heldPieces.reverse();
    return OUT_PIECES_MARK + heldPieces.length;
  }

  function piece() {
    return heldPieces.pop();
  }

  // After a crossing: if timers fell due meanwhile, ask for another one.
  function afterCrossing() {
    inCrossing = false;
    enter(null);
    if (due.length > 0) wake();
  }

  // The payload is `this`; a long one comes in pieces instead, as the arguments, which
  // join() copies once into one flat string (madrpc/runtime_pieces.py).
  function step(...pieces) {
    inCrossing = true;
    try {
      const payload = parse(pieces.length === 0 ? this : pieces.join(''));
      if (payload.x !== undefined) for (const key of payload.x) cancel(key);
      if (payload.p !== undefined) feed(payload.p);
      if (payload.s !== undefined) settle(payload.s);
      if (payload.r !== undefined) for (const entry of payload.r) start(entry);
      if (payload.m !== undefined) for (const [key, n] of payload.m) grant(key, n);
      checkpoint();
      runDueTimers();
      return drain();
    } finally {
      afterCrossing();
    }
  }

  function flush() {
    inCrossing = true;
    try {
      checkpoint();
      runDueTimers();
      return drain();
    } finally {
      afterCrossing();
    }
  }

  // ------------------------------------------------------------------ script API

  // Why a nested call cannot be made (a TypeError), or null.
  function badCall(api, method, args) {
    if (typeof method !== 'string' || method === '') {
      return new TypeError(api + ': method must be a non-empty string');
    }
    if (args !== undefined && (args === null || typeof args !== 'object')) {
      return new TypeError(api + ': args must be an array, an object or undefined');
    }
    return null;
  }

  function call(method, args, options) {
    const bad = badCall('madrpc.call', method, args);
    if (bad !== null) return Promise.reject(bad);
    const id = nextCall++;
    const body = {jsonrpc: '2.0', method};
    if (args !== undefined) body.params = args;
    body.madrpc = {idempotency_key: KEY_PREFIX + '-' + id};
    if (options !== undefined && options !== null && options.timeout_ms !== undefined) {
      body.madrpc.timeout_ms = options.timeout_ms;
    }
    let json;
    try {
      json = stringify(body);
    } catch (e) {
      return Promise.reject(e);
    }
    const owner = current;
    const promise = new Promise((resolve, reject) => {
      calls.set(id, {resolve, reject, owner});
    });
    if (owner !== null) owner.calls.add(id);
    emit('C ' + id + ' ' + (owner === null ? 0 : owner.key) + ' ' + json);
    return promise;
  }

  // The script's side of a nested stream call. Items fed by the worker wait in a queue
  // until next() takes them; every ceil(window/2) items taken are acknowledged (an M
  // line) so that the producer may send as many more. The final settle ends the stream:
  // next() then answers done, or rejects with the error, once the queue is empty.
  class StreamCall {
    constructor(id, owner, window) {
      this.id = id;
      this.owner = owner;
      this.ackEvery = Math.ceil(window / 2);
      this.queue = [];
      this.head = 0;          // queue[head] is the next item to take
      this.waiting = [];      // {resolve, reject} of next() calls that found no item
      this.taken = 0;         // items taken since the last M line
      this.ended = false;     // settled, cancelled, or left by return()
      this.error = null;      // to throw once the queue is empty
    }

    next() {
      if (this.head < this.queue.length) {
        const value = this.queue[this.head];
        this.queue[this.head++] = undefined;
        if (this.head === this.queue.length) {
          this.queue = [];
          this.head = 0;
        }
        this.took();
        return Promise.resolve({value, done: false});
      }
      if (this.ended) return new Promise((resolve, reject) => this.answerEnd(resolve, reject));
      return new Promise((resolve, reject) => this.waiting.push({resolve, reject}));
    }

    // return(): before the end, tell the grid the script wants no more (X) and forget it.
    close(value) {
      if (!this.ended) {
        this.ended = true;
        forgetCall(this.id, this.owner);
        emit('X ' + this.id);
      }
      this.error = null;
      this.queue = [];
      this.head = 0;
      this.endWaiting();
      return Promise.resolve({value, done: true});
    }

    // A `p` member: items for this stream, to the waiting next() calls first.
    feed(items) {
      if (this.ended || !Array.isArray(items)) return;
      for (let i = 0; i < items.length; i++) {
        const waiter = this.waiting.shift();
        if (waiter === undefined) {
          this.queue.push(items[i]);
        } else {
          this.took();
          waiter.resolve({value: items[i], done: false});
        }
      }
    }

    // The final settle ({"items": N}) and the owner's cancel, through the calls table.
    resolve() { this.end(null); }
    reject(error) { this.end(error); }

    end(error) {
      if (this.ended) return;
      this.ended = true;
      this.error = error;
      this.endWaiting();   // they wait, so the queue is empty
    }

    endWaiting() {
      const waiting = this.waiting;
      this.waiting = [];
      for (const waiter of waiting) this.answerEnd(waiter.resolve, waiter.reject);
    }

    // The answer of a next() past the last item: the error once, then done.
    answerEnd(resolve, reject) {
      const error = this.error;
      this.error = null;
      if (error !== null) reject(error);
      else resolve({value: undefined, done: true});
    }

    took() {
      if (this.ended) return;   // nothing more will come: no need to ask for it
      this.taken++;
      if (this.taken >= this.ackEvery) {
        emit('M ' + this.id + ' ' + this.taken);
        this.taken = 0;
      }
    }
  }

  // madrpc.stream(method, args, options): an async iterable of the items of a nested call
  // to a streaming function. options: {window (items in flight, default 64), timeout_ms}.
  // It carries no idempotency key: a stream that sent items is never run again anyway.
  // Its id (the call id) only names it in logs: the broker routes its items and its end
  // by the worker's call key, as for any nested call.
  function stream(method, args, options) {
    const bad = badCall('madrpc.stream', method, args);
    if (bad !== null) throw bad;
    const opts = options === undefined || options === null ? {} : options;
    const window = opts.window === undefined ? DEFAULT_STREAM_WINDOW : opts.window;
    if (!Number.isInteger(window) || window < 1 || window > MAX_STREAM_WINDOW) {
      throw new TypeError('madrpc.stream: options.window must be an integer in [1, ' +
                          MAX_STREAM_WINDOW + ']');
    }
    const id = nextCall++;
    const body = {jsonrpc: '2.0', method, id};
    if (args !== undefined) body.params = args;
    body.madrpc = {stream: {window}};
    if (opts.timeout_ms !== undefined) body.madrpc.timeout_ms = opts.timeout_ms;
    const json = stringify(body);
    const owner = current;
    const consumer = new StreamCall(id, owner, window);
    calls.set(id, consumer);
    if (owner !== null) owner.calls.add(id);
    emit('C ' + id + ' ' + (owner === null ? 0 : owner.key) + ' ' + json);
    const iterator = Object.freeze({
      next: () => consumer.next(),
      return: (value) => consumer.close(value),
      [ASYNC_ITERATOR]: () => iterator,
    });
    return iterator;
  }

  // method name -> where the script registered it: an object whose stack (which V8
  // formats only when it is read) is the one frame of the script's call to register.
  const places = new Map();
  const BuiltinError = Error;   // the script may replace the globals later
  const reflectSet = Reflect.set;

  function callSite() {
    const site = {};
    const limit = BuiltinError.stackTraceLimit;
    // One frame is all it takes (false: a script froze Error; its own limit then applies).
    const limited = reflectSet(BuiltinError, 'stackTraceLimit', 1);
    BuiltinError.captureStackTrace(site, register);
    if (limited) BuiltinError.stackTraceLimit = limit;
    return site;
  }

  // file:line:column of a call site: its first frame that is not the runtime's own.
  function placeOf(site) {
    let lines;
    try {
      lines = String(site.stack).split('\n');
    } catch (_) {   // a script's Error.prepareStackTrace threw
      lines = [];
    }
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i];
      if (line.includes(RUNTIME_URL)) continue;
      const frame = userColumn(line.trim().replace(/^at /, ''));
      const inParens = /\(([^()]*)\)$/.exec(frame);
      return inParens === null ? frame : inParens[1];
    }
    return 'an unknown place';
  }

  // madrpc.register(name, fn, {replace: true}): a name registered twice is an error
  // (usually two functions pasted under one name), unless the second says it replaces.
  function register(name, fn, options) {
    if (typeof name !== 'string' || name === '') {
      throw new TypeError('madrpc.register: name must be a non-empty string');
    }
    if (typeof fn !== 'function') {
      throw new TypeError('madrpc.register: ' + name + ' is not a function');
    }
    if (RESERVED.has(name) || name.startsWith('rpc.')) {
      throw new TypeError('madrpc.register: ' + name + ' is a reserved name');
    }
    if (options !== undefined && options !== null && typeof options !== 'object') {
      throw new TypeError('madrpc.register: options must be an object, e.g. {replace: true}');
    }
    const place = callSite();
    if (registry.has(name) && !(options && options.replace)) {
      throw new Error('madrpc.register: ' + stringify(name) + ' is already registered at ' +
                      placeOf(places.get(name)) + ' (again at ' + placeOf(place) + '); pass ' +
                      '{replace: true} to replace it');
    }
    registry.set(name, fn);
    places.set(name, place);
  }

  function format(value) {
    if (typeof value === 'string') return value;
    if (value instanceof Error) return userStack(value) || String(value);
    try {
      const json = stringify(value);
      return json === undefined ? String(value) : json;
    } catch (_) {
      return String(value);
    }
  }

  function logger(level) {
    return (...args) => {
      if (logLines >= MAX_LOG_LINES) {
        droppedLogs++;
        return;
      }
      logLines++;
      let text = args.map(format).join(' ');
      if (text.length > MAX_LOG_CHARS) text = text.slice(0, MAX_LOG_CHARS) + '...';
      const req = current;
      emit('L ' + level + ' ' + (req === null ? 0 : req.key) + ' ' +
           stringify([req === null ? '' : req.method, req === null ? null : req.id ?? null,
                      text]));
    };
  }

  // Timers on the isolate's own loop (Atomics.waitAsync is standard ECMAScript). When a
  // delay passes, the timer is only marked due; its callback runs in the next crossing
  // (see runDueTimers), as the request that scheduled it, under that request's limits.
  let nextTimer = 1;
  const timers = new Map();       // id -> {owner, fn, args}
  let due = [];                   // ids of timers whose delay passed
  function setTimeout(fn, delay, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout: callback is not a function');
    const id = nextTimer++;
    timers.set(id, {owner: current, fn, args});
    if (current !== null) current.timers.add(id);
    const cell = new Int32Array(new SharedArrayBuffer(4));
    const wait = Atomics.waitAsync(cell, 0, 0, Math.max(0, Number(delay) || 0));
    const fall = () => {
      if (!timers.has(id)) return;
      due.push(id);
      wake();
    };
    // A zero delay answers at once ({async: false}): it is due after the current code.
    (wait.async ? wait.value : Promise.resolve()).then(fall);
    return id;
  }
  function clearTimeout(id) { timers.delete(id); }

  const madrpc = Object.freeze({
    register, call, stream, RpcError, version: '1',
    // The running request's cancellation signal: read it before the first await.
    get signal() { return signal(); },
  });
  const consoleObject = Object.freeze({
    log: logger('info'), info: logger('info'), debug: logger('debug'),
    warn: logger('warn'), error: logger('error'),
  });
  for (const [name, value] of [['madrpc', madrpc], ['console', consoleObject],
                               ['setTimeout', setTimeout], ['clearTimeout', clearTimeout]]) {
    Object.defineProperty(globalThis, name, {value, writable: false, configurable: false});
  }

  return {
    step,
    flush,
    piece,
    methods: () => stringify([...registry.keys()]),
  };
})
