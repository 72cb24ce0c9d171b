// The load of tests/integration/test_multihost.py: requests that stay in flight long
// enough for a link to go down under them, and answers that say which execution made them.
'use strict';

// One token per context: with the execution count it names every execution uniquely, so
// two answers for one call can be told apart when they came from two executions.
const RUN = Math.random().toString(36).slice(2, 10);
let executions = 0;

function spin(ms) {
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) x = (x * 31 + 7) % 1000003;
  return x;
}

// Burns cpuMs of CPU, then waits waitMs on a timer (the slow part: the context is free for
// other requests meanwhile), and returns its input with the execution that answered it.
// Logs "EXEC <key> <execution>" when it completes, so executions can be counted per host.
madrpc.register('mh_echo', async ({key, value, cpuMs = 20, waitMs = 0}) => {
  spin(cpuMs);
  if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
  executions += 1;
  const execution = `${RUN}-${executions}`;
  console.log(`EXEC ${key} ${execution}`);
  return {key, value, execution};
});
