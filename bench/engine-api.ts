/**
 * The Docker Engine API as the Docker-path benches drive it (bench/docker.ts, bench/cluster.ts): one call on
 * an engine's socket over a keep-alive agent, and a rate measured with a fixed number of callers.
 */
import http from 'node:http';

/** The callers at once, and the agent's sockets. */
export const CONCURRENCY = 8;

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

/** One Engine API call on the engine at `socketPath`; resolves to the status, rejects on a status ≥ 300. */
export function engineCall(socketPath: string, method: string, urlPath: string, body?: unknown): Promise<number> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        method,
        path: urlPath,
        agent,
        headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          if (status < 300) resolve(status);
          else reject(new Error(`${method} ${urlPath}: ${status} ${Buffer.concat(chunks).toString().trim()}`));
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** Calls per second of `count` calls made by CONCURRENCY callers at once. */
export async function rate(count: number, call: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) await call(next++);
    }),
  );
  return count / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/** Closes the agent's kept-alive sockets (at the end of a bench, so the process can exit). */
export function closeEngineApi(): void {
  agent.destroy();
}
