// Functions that exercise the runtime's limits, for tests/integration/test_runtime.py.
'use strict';

madrpc.register('noop', (x) => x);
madrpc.register('nothing', () => undefined);

madrpc.register('fan', async ({n}) => {
  const results = await Promise.all(Array.from({length: n}, (_, i) => madrpc.call('noop', [i])));
  return results.reduce((a, b) => a + b, 0);
});

madrpc.register('recurse', async ({depth, width}) => {
  if (depth === 0) return 1;
  const leaves = await Promise.all(
    Array.from({length: width}, () => madrpc.call('recurse', {depth: depth - 1, width})));
  return leaves.reduce((a, b) => a + b, 0);
});

madrpc.register('chain', async ({depth}) =>
  depth === 0 ? 0 : 1 + await madrpc.call('chain', {depth: depth - 1}));

function busyFor(ms) {
  const end = Date.now() + ms;
  let spins = 0;
  while (Date.now() < end) spins++;
  return spins;
}

madrpc.register('busy', ({ms}) => { busyFor(ms); return ms; });

// Each level computes for `ms` and then calls the next level.
madrpc.register('slow_chain', async ({depth, ms}) => {
  busyFor(ms);
  return depth === 0 ? 0 : 1 + await madrpc.call('slow_chain', {depth: depth - 1, ms});
});

madrpc.register('spin', () => { while (true) {} });

madrpc.register('hog_objects', () => {
  const keep = [];
  for (let i = 0; ; i++) keep.push({i, text: 'x' + i});
});

madrpc.register('hog_doubles', () => {
  const keep = [];
  while (true) keep.push(new Array(1000).fill(1.5));
});

madrpc.register('buffer_bomb', () => {
  const keep = [];
  while (true) keep.push(new ArrayBuffer(64 * 1024 * 1024));
});

// About `mb` MiB of small-integer arrays (4 bytes an element), kept until it returns.
madrpc.register('alloc', ({mb}) => {
  const keep = [];
  for (let i = 0; i < mb * 16; i++) keep.push(new Array(16384).fill(i & 0xff));
  return keep.length;
});

madrpc.register('sleep', async ({ms}) => {
  await new Promise((resolve) => setTimeout(resolve, ms));
  return ms;
});

madrpc.register('shout', ({text}) => {
  console.log('shouting', text);
  console.warn('careful with', {text});
  return text.toUpperCase();
});

// Global state persists within a context (pooled) and starts afresh per request (fresh).
madrpc.register('counter', () => {
  globalThis.calls = (globalThis.calls || 0) + 1;
  return globalThis.calls;
});

madrpc.register('version', () => 1);

// Counts executions per context; `ms` keeps it running for a while first.
madrpc.register('tally', async ({ms = 0} = {}) => {
  globalThis.tally = (globalThis.tally || 0) + 1;
  const mine = globalThis.tally;
  if (ms) await new Promise((resolve) => setTimeout(resolve, ms));
  return mine;
});
madrpc.register('tally_now', () => globalThis.tally || 0);
madrpc.register('global_x', () => typeof globalThis.x);
madrpc.register('blob', ({bytes}) => 'x'.repeat(bytes));
// Runaway JavaScript in every phase of a request (each must meet its CPU limit).
madrpc.register('spin_after_timer', async () => {
  await new Promise((resolve) => setTimeout(resolve, 5));
  while (true) {}
});
madrpc.register('spin_after_call', async () => { await madrpc.call('noop', [1]); while (true) {} });
madrpc.register('spin_after_promise', async () => {
  await new Promise((resolve) => resolve(1));
  while (true) {}
});
madrpc.register('spin_in_timer', () => new Promise(() => setTimeout(() => { while (true) {} }, 5)));
madrpc.register('drip', async ({n, ms}) => {   // n slices of ms each, a timer between them
  for (let i = 0; i < n; i++) {
    const started = Date.now();
    while (Date.now() - started < ms) {}
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  return n;
});
// Cancellation: long work that notices (or not) that it was cancelled.
madrpc.register('long_spin', ({ms}) => { const t = Date.now(); while (Date.now() - t < ms) {} return ms; });
madrpc.register('long_wait', async ({ms}) => {
  const signal = madrpc.signal;
  await new Promise((resolve) => setTimeout(resolve, ms));
  return signal.aborted ? 'aborted' : 'done';
});
madrpc.register('fan_long', async ({n, ms}) =>
  (await Promise.all(Array.from({length: n}, () => madrpc.call('long_wait', {ms})))).length);
madrpc.register('watch_cancel', async ({ms}) => {
  const signal = madrpc.signal;
  signal.addEventListener('abort', () => console.log('ABORTED ' + signal.reason.code));
  try {
    await madrpc.call('long_wait', {ms});
  } catch (e) {
    console.log('NESTED REJECTED ' + e.code);
    throw e;
  } finally {
    console.log('CLEANUP RAN');
  }
});
madrpc.register('lone_surrogate', () => 'a\ud800b');
madrpc.register('paired_surrogate', () => 'a\ud83d\ude00b');
madrpc.register('escaped_backslash_u', () => '\\ud800 is text');
madrpc.register('first', (first) => first);
