/**
 * Docker-level throughput (issue #4): `docker volume create`, `inspect` and `rm` through the Engine API
 * (HTTP on /var/run/docker.sock, concurrency 8) for the tsvol managed plugin vs Docker's built-in local
 * driver, side by side in one run. Uses the end-to-end fixture: it starts dockerd and builds the plugin if
 * needed, and stops what it started.
 */
import http from 'node:http';
import { setupDocker } from '../test/helpers/docker.js';

const CONCURRENCY = 8;
const N = 1500;
const ROUNDS = 3;

function api(method: string, path: string, body?: unknown): Promise<number> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath: '/var/run/docker.sock',
        method,
        path,
        agent,
        headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } : {},
      },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode! < 300 ? resolve(res.statusCode!) : reject(new Error(`${method} ${path}: ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

async function rate(count: number, call: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) await call(next++);
    }),
  );
  return count / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function measure(driver: string, round: number): Promise<[number, number, number]> {
  const name = (i: number): string => `bench-${driver.replace(/\W/g, '')}-${round}-${i}`;
  const create = await rate(N, (i) => api('POST', '/volumes/create', { Name: name(i), Driver: driver }));
  const inspect = await rate(N, (i) => api('GET', `/volumes/${name(i)}`));
  const remove = await rate(N, (i) => api('DELETE', `/volumes/${name(i)}`));
  return [create, inspect, remove];
}

const env = await setupDocker();
try {
  env.createPlugin();
  const best = { local: [0, 0, 0], tsvol: [0, 0, 0] };
  await measure('local', -1); // warm-up
  await measure('tsvol', -1);
  for (let r = 0; r < ROUNDS; r++) {
    for (const d of ['local', 'tsvol'] as const) {
      const m = await measure(d, r);
      best[d] = best[d].map((v, i) => Math.max(v, m[i]!));
    }
  }
  console.log(`## Docker Engine API, c=${CONCURRENCY}, ${N} volumes, best of ${ROUNDS} interleaved rounds\n`);
  console.log('| operation | local driver | tsvol plugin | ratio | target |');
  console.log('|---|---:|---:|---:|---:|');
  ['docker volume create', 'docker volume inspect', 'docker volume rm'].forEach((op, i) => {
    const l = best.local[i]!;
    const v = best.tsvol[i]!;
    const target = i === 1 ? '—' : `≥ 0.7× ${v / l >= 0.7 ? 'met' : 'NOT met'}`;
    console.log(`| ${op} | ${l.toFixed(0)}/s | ${v.toFixed(0)}/s | ${(v / l).toFixed(2)}× | ${target} |`);
  });
} finally {
  agent.destroy();
  await env.teardown();
}
