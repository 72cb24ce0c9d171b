// Written the way scripts for the earlier MaDRPC (Rust/Boa and QUIC/QuickJS) were:
// strict mode, object args, async handlers, Promise.all fan-out several levels deep.
"use strict";

function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

madrpc.register("fib", async (args) => {
  const n = args.n;
  return { n: n, value: fib(n) };
});

madrpc.register("fib_many", async (args) => {
  const calls = [];
  for (let i = 0; i < args.count; i++) {
    calls.push(madrpc.call("fib", { n: args.n }));
  }
  const results = await Promise.all(calls);
  console.log("fib_many computed " + results.length + " values");
  return { total: results.reduce((sum, r) => sum + r.value, 0) };
});

madrpc.register("tree", async (args) => {
  if (args.level === 0) {
    return { leaves: 1 };
  }
  const children = await Promise.all([
    madrpc.call("tree", { level: args.level - 1 }),
    madrpc.call("tree", { level: args.level - 1 }),
  ]);
  return { leaves: children[0].leaves + children[1].leaves };
});

madrpc.register("validate", async (args) => {
  if (typeof args.value !== "number") {
    throw new Error("value must be a number");
  }
  return args.value * 2;
});

madrpc.register("no_return", async (args) => {
  console.log("no_return called with", JSON.stringify(args));
});
