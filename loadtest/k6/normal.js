// normal: Zipf popularity over KEYS keys at a constant arrival rate (open loop).
//   k6 run -e ADMIN_TOKEN=... -e RATE=2000 -e DURATION=60s loadtest/k6/normal.js
import { createKeys, deleteKeys, validateOne, RATE } from './lib.js';

export const options = {
  setupTimeout: '600s',
  scenarios: {
    normal: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: Math.max(10, Math.ceil(RATE / 50)),
      maxVUs: Math.max(100, Math.ceil(RATE / 5)),
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
