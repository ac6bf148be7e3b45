// spike: RATE per second, 10x RATE for 10 s in the middle of DURATION (default 30s), open loop.
//   k6 run -e ADMIN_TOKEN=... -e RATE=1000 -e DURATION=30s loadtest/k6/spike.js
import { createKeys, deleteKeys, validateOne, RATE } from './lib.js';

function seconds(d) {
  const m = /^(\d+)(s|m|h)?$/.exec(d);
  if (!m) throw new Error(`DURATION '${d}': use e.g. 30s, 5m`);
  return parseInt(m[1], 10) * ({ s: 1, m: 60, h: 3600 }[m[2] || 's']);
}

const total = seconds(__ENV.DURATION || '30s');
const spike = Math.min(10, Math.floor(total / 3));
const before = Math.floor((total - spike) / 2);
const after = total - spike - before;

export const options = {
  setupTimeout: '600s',
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: RATE,
      timeUnit: '1s',
      preAllocatedVUs: Math.max(20, Math.ceil(RATE / 20)),
      maxVUs: Math.max(200, Math.ceil(RATE)),
      // Steps are near-instant ramps (1 s) so the spike is a step, as in the Rust harness.
      stages: [
        { target: RATE, duration: `${before}s` },
        { target: RATE * 10, duration: '1s' },
        { target: RATE * 10, duration: `${Math.max(0, spike - 1)}s` },
        { target: RATE, duration: '1s' },
        { target: RATE, duration: `${Math.max(0, after - 1)}s` },
      ],
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
};

export function setup() {
  return { keys: createKeys() };
}

export default function (data) {
  validateOne(data.keys);
}

export function teardown(data) {
  deleteKeys(data.keys);
}
