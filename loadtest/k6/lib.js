// Shared by the k6 scenarios: configuration from the environment, key
// creation through the admin API, Zipf key popularity, one validate call.
//
// Environment (k6 run -e NAME=value):
//   BASE_URL      data plane (default http://127.0.0.1:8080)
//   ADMIN_URL     admin plane (default http://127.0.0.1:8081)
//   ADMIN_TOKEN   admin bearer token (required)
//   KEYS          keys to create (default 1000)
//   ZIPF_S        Zipf exponent of key popularity (default 1.0)
//   ALGORITHM, LIMIT, WINDOW_MS   the keys' limit (default fixed_window 100000 per 1000 ms)
//   RATE          requests per second (default 1000)
//   DURATION      e.g. 30s, 10m (defaults per scenario)
//   CLEANUP       "1" deletes the keys in teardown
import http from 'k6/http';
import { check, fail } from 'k6';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const ADMIN_URL = __ENV.ADMIN_URL || 'http://127.0.0.1:8081';
export const RATE = parseInt(__ENV.RATE || '1000', 10);
const KEYS = parseInt(__ENV.KEYS || '1000', 10);
const ZIPF_S = parseFloat(__ENV.ZIPF_S || '1.0');

// 200 (allowed) and 429 (denied) are both answers, not failures.
http.setResponseCallback(http.expectedStatuses(200, 429));

function adminHeaders() {
  if (!__ENV.ADMIN_TOKEN) {
    fail('set ADMIN_TOKEN (k6 run -e ADMIN_TOKEN=...)');
  }
  return { headers: { Authorization: `Bearer ${__ENV.ADMIN_TOKEN}`, 'Content-Type': 'application/json' } };
}

// Creates the keys, 50 per http.batch call. Returns [{key_id, api_key}].
export function createKeys() {
  const body = JSON.stringify({
    owner: 'k6-loadtest',
    tier: 'free',
    limits: [{
      name: 'loadtest',
      algorithm: __ENV.ALGORITHM || 'fixed_window',
      limit: parseInt(__ENV.LIMIT || '100000', 10),
      window_ms: parseInt(__ENV.WINDOW_MS || '1000', 10),
      burst: null,
    }],
  });
  const params = adminHeaders();
  const keys = [];
  for (let i = 0; i < KEYS; i += 50) {
    const reqs = [];
    for (let j = i; j < Math.min(KEYS, i + 50); j++) {
      reqs.push(['POST', `${ADMIN_URL}/api/v1/keys`, body, params]);
    }
    for (const r of http.batch(reqs)) {
      if (r.status !== 201) {
        fail(`creating a key: ${r.status} ${r.body}`);
      }
      const k = r.json();
      keys.push({ key_id: k.key_id, api_key: k.api_key });
    }
  }
  return keys;
}

export function deleteKeys(keys) {
  if (__ENV.CLEANUP !== '1') {
    return;
  }
  const params = adminHeaders();
  for (let i = 0; i < keys.length; i += 50) {
    http.batch(keys.slice(i, i + 50).map((k) => ['DELETE', `${ADMIN_URL}/api/v1/keys/${k.key_id}`, null, params]));
  }
}

// Zipf over ranks 0..n-1: rank k has weight 1/(k+1)^s. Cumulative table + binary search.
let cdf = null;
export function zipfPick(n) {
  if (cdf === null || cdf.length !== n) {
    cdf = new Array(n);
    let sum = 0;
    for (let k = 0; k < n; k++) {
      sum += 1 / Math.pow(k + 1, ZIPF_S);
      cdf[k] = sum;
    }
    for (let k = 0; k < n; k++) {
      cdf[k] /= sum;
    }
  }
  const u = Math.random();
  let lo = 0;
  let hi = n - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cdf[mid] <= u) lo = mid + 1; else hi = mid;
  }
  return lo;
}

const validateParams = { headers: { 'Content-Type': 'application/json' }, tags: { name: 'validate' } };

// One check on a Zipf-chosen key.
export function validateOne(keys) {
  const k = keys[zipfPick(keys.length)];
  const r = http.post(`${BASE_URL}/api/v1/validate`, JSON.stringify({ api_key: k.api_key, cost: 1 }), validateParams);
  check(r, { 'decided (200 or 429)': (res) => res.status === 200 || res.status === 429 });
}
