// Generators that stream their items, for tests/integration/test_streams.py.
'use strict';

let produced = 0;       // items the generators below have produced, all requests together
let finalized = 0;      // generators whose finally block ran

madrpc.register('noop', (x) => x);
madrpc.register('produced', () => produced);
madrpc.register('finalized', () => finalized);
madrpc.register('reset', () => { produced = 0; finalized = 0; return true; });

madrpc.register('count', function* (n) {
  for (let i = 0; i < n; i++) { produced++; yield i; }
});

madrpc.register('slow_count', async function* ({n, ms}) {
  for (let i = 0; i < n; i++) {
    await new Promise((resolve) => setTimeout(resolve, ms));
    produced++;
    yield i;
  }
});

madrpc.register('count_then_throw', function* ({n}) {
  for (let i = 0; i < n; i++) yield i;
  throw new RangeError('broke after ' + n + ' items');
});

madrpc.register('endless', function* () {
  try {
    for (let i = 0; ; i++) { produced++; yield i; }
  } finally {
    finalized++;
  }
});

madrpc.register('spin_after', function* ({n}) {
  for (let i = 0; i < n; i++) yield i;
  while (true) {}
});

madrpc.register('lines', function* ({n, size}) {
  const pad = 'x'.repeat(size);
  for (let i = 0; i < n; i++) yield {i, pad};
});

// Nested streams: read another method's stream from JavaScript.
madrpc.register('sum_stream', async ({method, args, window}) => {
  let sum = 0;
  let n = 0;
  for await (const x of madrpc.stream(method, args, {window})) {
    sum += x;
    n++;
  }
  return {sum, n};
});

madrpc.register('take_from_stream', async ({method, args, take}) => {
  const out = [];
  for await (const x of madrpc.stream(method, args, {window: 4})) {
    out.push(x);
    if (out.length >= take) break;
  }
  return out;
});

madrpc.register('catch_stream', async ({method, args}) => {
  const out = [];
  try {
    for await (const x of madrpc.stream(method, args)) out.push(x);
  } catch (e) {
    return {out, code: e.code, message: e.message};
  }
  return {out};
});
