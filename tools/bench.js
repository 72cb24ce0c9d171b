// Functions used by tools/bench.py.
'use strict';
madrpc.register('noop', (x) => x);
madrpc.register('nested_noop', async ({calls = 1000, parallel = false} = {}) => {
  // `calls` nested no-op calls through the broker, one after another (or all at once).
  if (parallel) {
    await Promise.all(Array.from({length: calls}, (_, i) => madrpc.call('noop', [i])));
  } else {
    for (let i = 0; i < calls; i++) await madrpc.call('noop', [i]);
  }
  return calls;
});
madrpc.register('count', function* (n) {
  // Streams the numbers 0..n-1 (the streaming section of tools/bench.py).
  for (let i = 0; i < n; i++) yield i;
});
madrpc.register('length_of', (text) => text.length);   // a big payload in, a number out
madrpc.register('text_of', (n) => 'x'.repeat(n));       // a number in, a big payload out
