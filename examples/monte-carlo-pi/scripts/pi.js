// Monte Carlo estimate of pi, spread over the grid.
//
//   monte_carlo_sample({samples = 1000000, seed = 0}) -> {inside, total}
//       Draws `samples` points in the unit square from a 32-bit LCG seeded with
//       `seed` (same seed, same answer) and counts those inside the quarter circle.
//   aggregate({numNodes = 10, samplesPerNode = 1000000}) -> {piEstimate, totalInside, totalSamples}
//       Fans out numNodes calls to monte_carlo_sample (seeds 0..numNodes-1) across the
//       grid with madrpc.call and Promise.all, and combines them.
'use strict';

const MAX_SAMPLES = 1e10;

function countInside(samples, seed) {
  // Scramble the seed so that neighbouring seeds start far apart.
  let state = (Math.imul(seed >>> 0, 2654435761) + 0x9e3779b9) >>> 0;
  let inside = 0;
  for (let i = 0; i < samples; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const x = state / 4294967296;
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const y = state / 4294967296;
    if (x * x + y * y <= 1) inside++;
  }
  return inside;
}

function integerParam(value, name, min, max) {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new madrpc.RpcError(-32602, `Invalid params: ${name} must be an integer in [${min}, ${max}]`);
  }
  return value;
}

madrpc.register('monte_carlo_sample', ({samples = 1000000, seed = 0} = {}) => {
  integerParam(samples, 'samples', 0, MAX_SAMPLES);
  integerParam(seed, 'seed', 0, 0xffffffff);
  return {inside: countInside(samples, seed), total: samples};
});

madrpc.register('aggregate', async ({numNodes = 10, samplesPerNode = 1000000} = {}) => {
  integerParam(numNodes, 'numNodes', 1, 100000);
  integerParam(samplesPerNode, 'samplesPerNode', 1, MAX_SAMPLES);
  const results = await Promise.all(
    Array.from({length: numNodes}, (_, seed) =>
      madrpc.call('monte_carlo_sample', {samples: samplesPerNode, seed})));
  let totalInside = 0;
  let totalSamples = 0;
  for (const {inside, total} of results) {
    totalInside += inside;
    totalSamples += total;
  }
  return {piEstimate: (4 * totalInside) / totalSamples, totalInside, totalSamples};
});
