// A few functions that show what a MaDRPC script can do.
'use strict';

// Positional params: madrpc call echo '["hi"]'
madrpc.register('echo', (value) => value);

// Positional params: madrpc call add '[1, 2]'. Bad params get -32602 via madrpc.RpcError.
madrpc.register('add', (a, b) => {
  if (typeof a !== 'number' || typeof b !== 'number') {
    throw new madrpc.RpcError(-32602, 'Invalid params: add expects two numbers');
  }
  return a + b;
});

// Named params arrive as one object: madrpc call greet '{"name": "Ada"}'
madrpc.register('greet', ({name, greeting = 'Hello'}) => `${greeting}, ${name}!`);

// Async functions return a Promise; setTimeout works inside the engine.
madrpc.register('slow_square', async (x, delayMs = 10) => {
  await new Promise((resolve) => setTimeout(resolve, delayMs));
  return x * x;
});

// A thrown error reaches the caller as a JSON-RPC error with name, message and stack.
madrpc.register('fail', (message = 'something went wrong') => {
  throw new TypeError(message);
});

// Nested calls: fan out over the grid and combine.
madrpc.register('sum_of_squares', async (n) => {
  const squares = await Promise.all(
    Array.from({length: n}, (_, i) => madrpc.call('slow_square', [i, 0])));
  console.log(`summed ${n} squares`);
  return squares.reduce((total, value) => total + value, 0);
});

// A generator streams its items: madrpc call --stream count '[3]' prints 0, 1, 2 as they
// come (a plain call gets them all as one array).
madrpc.register('count', function* (n) {
  for (let i = 0; i < n; i++) yield i;
});

// So does an async generator: one {tick} every ms milliseconds.
madrpc.register('ticks', async function* (n, ms) {
  for (let i = 0; i < n; i++) {
    await new Promise((resolve) => setTimeout(resolve, ms));
    yield {tick: i};
  }
});
