// The load of tools/chaos.py: a deterministic checksum, a little waiting, and a log line
// per completed execution ("EXEC <id>") so duplicated executions can be counted.
'use strict';

madrpc.register('chaos_work', async ({id, n, delayMs}) => {
  let sum = 0;
  for (let i = 0; i < n; i++) sum = (sum * 31 + i) % 1000003;
  if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
  console.log('EXEC ' + id);
  return {id, sum};
});

// A fan-out, so nested calls live through the faults too.
madrpc.register('chaos_fan', async ({id, parts, n}) => {
  const results = await Promise.all(Array.from({length: parts}, (_, i) =>
    madrpc.call('chaos_leaf', {n: n + i})));
  console.log('EXEC ' + id);
  return {id, sum: results.reduce((a, b) => a + b, 0)};
});

madrpc.register('chaos_leaf', ({n}) => {
  let sum = 0;
  for (let i = 0; i < n; i++) sum = (sum * 31 + i) % 1000003;
  return sum;
});
