// MaDRPC runtime: evaluated in every V8 context before the user's script.
//
// It evaluates to a function that the engine calls once with (notify, markerBuffer) and
// that returns the host interface {step, flush, methods}. Everything the engine needs
// stays inside this closure; the script only sees `madrpc`, `console` and the timers.
//
// One engine crossing = one call to step(): it settles nested-call results, drops
// cancelled requests, starts new requests, runs all their microtasks, and returns the
// outbox as newline-separated lines (JSON.stringify never emits a raw newline):
//   R <key> <fragment>            a request finished; fragment is "result":.. or "error":..
//   C <call> <owner> <body>       a nested call made by request <owner>
//   L <level> <owner> <json>      a console line: [method, id, text]
// User code runs only inside a crossing (a step or a flush), where the engine's watchdog
// can stop it: a timer whose delay passed only records that it is due and calls notify()
// once; the engine then calls flush(), which runs the due timers' callbacks and collects
// what they produced.
//
// The marker (a shared Float64Array) tells the engine which request's code is running
// and for how long it may run: [sequence, key, budget_ms, 1 if the budget is the CPU
// limit's rest, 2 if the deadline's]. A request's budget is what is
// left of its CPU limit (all its segments count: the first step, continuations after
// nested calls, timers and promises) or of its deadline, whichever is less. The engine's
// watchdog terminates a segment that outlives its budget.
(function (notify, markerBuffer) {
  'use strict';
  const parse = JSON.parse;
  const stringify = JSON.stringify;
  const now = Date.now;
  const marker = new Float64Array(markerBuffer);
  const checkpoint = () => { %PerformMicrotaskCheckpoint(); };

  const RUNTIME_URL = 'madrpc-runtime.js';
  const RESERVED = new Set(['_metrics', '_info', '_ping', '_cancel', '_drain']);
  const MAX_LOG_LINES = 1000;     // per crossing; the rest are counted, not kept
  const MAX_LOG_CHARS = 8192;     // per console line
  const JS_EXCEPTION = -32000;
  const METHOD_NOT_FOUND = -32601;
  const NOT_SERIALIZABLE = -32009;
  const CANCELLED = -32011;
  // JSON.stringify writes a lone surrogate as an escape (a pair stays as characters): one
  // after an even number of backslashes is a string no JSON parser downstream will take.
  const LONE_SURROGATE = /(?:^|[^\\])(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;

  // Nested calls carry idempotency keys (this prefix + call id), so a call sent again to
  // a restarted broker joins the execution the old one had started instead of repeating it.
  const KEY_PREFIX = 'js-' + Math.random().toString(36).slice(2) +
                     Math.random().toString(36).slice(2);
  const registry = new Map();     // method name -> function
  const requests = new Map();     // key -> {key, method, id, deadline, cpu, calls}
  const calls = new Map();        // call id -> {resolve, reject, owner}
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

  // The error's stack without the frames of this runtime.
  function userStack(e) {
    return String(e.stack || '').split('\n')
      .filter((line) => !line.includes(RUNTIME_URL)).join('\n');
  }

  // The request is over: forget it and the timers it set.
  function forget(req) {
    requests.delete(req.key);
    for (const id of req.timers) timers.delete(id);
  }

  function finish(req, value) {
    if (requests.get(req.key) !== req) return;   // cancelled meanwhile
    forget(req);
    let json;
    try {
      json = stringify(value === undefined ? null : value);
    } catch (e) {
      emit('R ' + req.key + ' ' + errorFragment(NOT_SERIALIZABLE,
        'Result not serializable: ' + (e && e.message), {method: req.method}));
      return;
    }
    if (json !== undefined && json.indexOf('\\ud') !== -1 && LONE_SURROGATE.test(json)) {
      emit('R ' + req.key + ' ' + errorFragment(NOT_SERIALIZABLE,
        'Result not serializable: it holds a lone surrogate (a string that is not valid ' +
        'Unicode)', {method: req.method}));
      return;
    }
    emit('R ' + req.key + ' "result":' + (json === undefined ? 'null' : json));
  }

  function fail(req, e) {
    if (requests.get(req.key) !== req) return;
    forget(req);
    emit('R ' + req.key + ' ' + describe(e));
  }

  function start(entry) {
    const [key, deadline, cpu, depth, body] = entry;
    const method = body.method;
    const req = {key, method, id: body.id, deadline, cpu, depth, calls: new Set(),
                 timers: new Set(), spent: 0};
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
        Promise.resolve(result).then((v) => finish(req, v), (e) => fail(req, e));
      } else {
        finish(req, result);
      }
    });
  }

  // The request was cancelled on the grid: it will never answer. Its signal fires and
  // the nested calls it awaits reject with a cancellation error, as its own code, so
  // that cleanup (finally blocks, abort listeners) runs under its limits.
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

  // Results of nested calls, grouped by the request that made them, so each request's
  // continuations run (and are timed) as that request.
  function settle(results) {
    const groups = new Map();
    for (const [id, outcome] of results) {
      const call = calls.get(id);
      if (call === undefined) continue;
      calls.delete(id);
      const owner = call.owner;
      if (owner !== null) {
        if (requests.get(owner.key) !== owner) continue;   // owner was cancelled
        owner.calls.delete(id);
      }
      if (!groups.has(owner)) groups.set(owner, []);
      groups.get(owner).push([call, outcome]);
    }
    for (const [owner, group] of groups) {
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
      if (owner !== null && requests.get(owner.key) !== owner) continue;
      runAs(owner, () => timer.fn(...timer.args));
    }
  }

  function drain() {
    if (droppedLogs > 0) {
      out.push('L warn 0 ' + stringify(['', null,
        droppedLogs + ' console lines dropped (more than ' + MAX_LOG_LINES + ')']));
    }
    const text = out.join('\n');
    out = [];
    logLines = 0;
    droppedLogs = 0;
    notified = false;
    return text;
  }

  // After a crossing: if timers fell due meanwhile, ask for another one.
  function afterCrossing() {
    inCrossing = false;
    enter(null);
    if (due.length > 0) wake();
  }

  function step() {
    inCrossing = true;
    try {
      const payload = parse(this);
      if (payload.x !== undefined) for (const key of payload.x) cancel(key);
      if (payload.s !== undefined) settle(payload.s);
      if (payload.r !== undefined) for (const entry of payload.r) start(entry);
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

  function call(method, args, options) {
    if (typeof method !== 'string' || method === '') {
      return Promise.reject(new TypeError('madrpc.call: method must be a non-empty string'));
    }
    if (args !== undefined && (args === null || typeof args !== 'object')) {
      return Promise.reject(new TypeError(
        'madrpc.call: args must be an array, an object or undefined'));
    }
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

  function register(name, fn) {
    if (typeof name !== 'string' || name === '') {
      throw new TypeError('madrpc.register: name must be a non-empty string');
    }
    if (typeof fn !== 'function') {
      throw new TypeError('madrpc.register: ' + name + ' is not a function');
    }
    if (RESERVED.has(name) || name.startsWith('rpc.')) {
      throw new TypeError('madrpc.register: ' + name + ' is a reserved name');
    }
    registry.set(name, fn);
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
    register, call, RpcError, version: '1',
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
    methods: () => stringify([...registry.keys()]),
  };
})
