/**
 * Volume driver throughput (issue #3): tsvol vs a raw node:http floor answering the same calls from
 * memory, at concurrency 8 over a Unix socket; Create rate with 10,000 volumes resident; List of 10k;
 * start-up with 100k volumes. Real durable writes and real bind mounts (run as root).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(HERE, '..', 'dist', 'main.js');
const CONCURRENCY = 8;
const OPS = 4000;
const ROUNDS = 3;

function call(agent: http.Agent, socket: string, endpoint: string, body: unknown): Promise<Record<string, unknown>> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath: socket, agent, method: 'POST', path: endpoint, headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(payload) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const json = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>;
          if (res.statusCode !== 200 || (json.Err !== undefined && json.Err !== '')) reject(new Error(`${endpoint}: ${JSON.stringify(json)}`));
          else resolve(json);
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** Runs `count` calls at CONCURRENCY; returns calls per second. */
async function rate(socket: string, endpoint: string, count: number, body: (i: number) => unknown): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) {
        const i = next++;
        await call(agent, socket, endpoint, body(i));
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  agent.destroy();
  return count / secs;
}

async function waitUp(socket: string, proc: ChildProcess): Promise<void> {
  const agent = new http.Agent();
  for (;;) {
    if (proc.exitCode !== null) throw new Error('server exited');
    try {
      await call(agent, socket, '/VolumeDriver.Capabilities', null);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

function startTsvol(dir: string): ChildProcess {
  return spawn(process.execPath, [MAIN], {
    env: { ...process.env, TSVOL_SOCKET: path.join(dir, 's.sock'), TSVOL_DATA: path.join(dir, 'data'), TSVOL_MOUNTS: path.join(dir, 'mnt'), TSVOL_LOG_LEVEL: 'info' },
    stdio: 'ignore',
  });
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  const done = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await done;
}

/** One untimed pass of every phase on other names, so both servers are measured JIT-warm. */
async function warmUp(socket: string): Promise<void> {
  for (const p of phases) {
    await rate(socket, p.endpoint, 1000, (i) => {
      const b = p.body(i) as { Name: string };
      return { ...b, Name: `warm-${b.Name}` };
    });
  }
}

interface Phase {
  op: string;
  endpoint: string;
  body: (i: number) => unknown;
  target: number;
}

const phases: Phase[] = [
  { op: 'Create', endpoint: '/VolumeDriver.Create', body: (i) => ({ Name: `v${i}`, Opts: null }), target: 0.5 },
  { op: 'Get', endpoint: '/VolumeDriver.Get', body: (i) => ({ Name: `v${i}` }), target: 0.8 },
  { op: 'Mount', endpoint: '/VolumeDriver.Mount', body: (i) => ({ Name: `v${i}`, ID: `id${i}` }), target: 0.2 },
  { op: 'Path', endpoint: '/VolumeDriver.Path', body: (i) => ({ Name: `v${i}` }), target: 0.8 },
  { op: 'Unmount', endpoint: '/VolumeDriver.Unmount', body: (i) => ({ Name: `v${i}`, ID: `id${i}` }), target: 0.2 },
  { op: 'Remove', endpoint: '/VolumeDriver.Remove', body: (i) => ({ Name: `v${i}` }), target: 0.5 },
];

async function main(): Promise<void> {
  const base = fs.mkdtempSync('/var/tmp/tsvol-bench-');
  const rows: string[] = [];
  try {
    // Floor and tsvol side by side: ROUNDS interleaved rounds of every phase on fresh names, best of each
    // (interference from anything else on the machine only ever slows a round down).
    const floorSock = path.join(base, 'floor.sock');
    const floor = spawn(process.execPath, ['--import', 'tsx', path.join(HERE, 'floor-server.ts'), floorSock], { stdio: 'ignore' });
    await waitUp(floorSock, floor);
    const dir = path.join(base, 'tsvol');
    fs.mkdirSync(dir);
    const sock = path.join(dir, 's.sock');
    let proc = startTsvol(dir);
    await waitUp(sock, proc);
    await warmUp(floorSock);
    await warmUp(sock);
    const floorRates = phases.map(() => 0);
    const tsvolRates = phases.map(() => 0);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [socket, best] of [[floorSock, floorRates], [sock, tsvolRates]] as const) {
        for (const [i, p] of phases.entries()) {
          const r = await rate(socket, p.endpoint, OPS, (n) => {
            const b = p.body(n) as { Name: string };
            return { ...b, Name: `r${round}-${b.Name}` };
          });
          best[i] = Math.max(best[i]!, r);
        }
      }
    }
    floor.kill();

    rows.push('| operation | floor (raw node:http, memory) | tsvol | ratio | target |', '|---|---:|---:|---:|---:|');
    phases.forEach((p, i) => {
      const f = floorRates[i]!;
      const v = tsvolRates[i]!;
      rows.push(`| ${p.op} | ${f.toFixed(0)}/s | ${v.toFixed(0)}/s | ${(v / f).toFixed(2)}× | ≥ ${p.target}× ${v / f >= p.target ? 'met' : 'NOT met'} |`);
    });

    // Create rate with 10k resident vs none (none = the Create phase above on an empty store).
    await rate(sock, '/VolumeDriver.Create', 10_000, (i) => ({ Name: `resident${i}`, Opts: null }));
    const at10k = await rate(sock, '/VolumeDriver.Create', OPS, (i) => ({ Name: `more${i}`, Opts: null }));
    const at0 = tsvolRates[0]!;
    rows.push('', '| scale | figure | target |', '|---|---:|---:|');
    rows.push(`| Create rate with 10k resident / with none | ${at10k.toFixed(0)}/s / ${at0.toFixed(0)}/s = ${(at10k / at0).toFixed(2)}× | ≥ 0.8× ${at10k / at0 >= 0.8 ? 'met' : 'NOT met'} |`);
    await rate(sock, '/VolumeDriver.Remove', OPS, (i) => ({ Name: `more${i}` }));
    const agent = new http.Agent({ keepAlive: true });
    const listTimes: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = process.hrtime.bigint();
      const r = await call(agent, sock, '/VolumeDriver.List', null);
      listTimes.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if ((r.Volumes as unknown[]).length !== 10_000) throw new Error(`List returned ${(r.Volumes as unknown[]).length}`);
    }
    agent.destroy();
    listTimes.sort((a, b) => a - b);
    const listP50 = listTimes[10]!;
    rows.push(`| List of 10k volumes (p50 of 20, over the socket) | ${listP50.toFixed(1)} ms | < 50 ms ${listP50 < 50 ? 'met' : 'NOT met'} |`);
    await stop(proc);

    // Start-up with 100k volumes: seed the store directly (rows + directories, as Create leaves them).
    const db = new Database(path.join(dir, 'data', 'tsvol.db'));
    const ins = db.prepare('INSERT OR REPLACE INTO volumes (name, record) VALUES (?, ?)');
    const created = new Date().toISOString();
    db.transaction(() => {
      for (let i = 0; i < 90_000; i++) {
        const name = `seed${i}`;
        ins.run(name, JSON.stringify({ name, createdAt: created, spec: { kind: 'named' }, options: {}, holds: {} }));
      }
    })();
    db.close();
    for (let i = 0; i < 90_000; i++) fs.mkdirSync(path.join(dir, 'data', 'volumes', `seed${i}`, '_data'), { recursive: true });
    const startTimes: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = process.hrtime.bigint();
      proc = startTsvol(dir);
      await waitUp(sock, proc);
      startTimes.push(Number(process.hrtime.bigint() - t0) / 1e6);
      await stop(proc);
    }
    startTimes.sort((a, b) => a - b);
    const st = startTimes[1]!;
    rows.push(`| Start-up with 100k volumes (process spawn to first reply, median of 3) | ${st.toFixed(0)} ms | < 2000 ms ${st < 2000 ? 'met' : 'NOT met'} |`);
    console.log(`## Volume driver (c=${CONCURRENCY}, ${OPS} calls per operation, best of ${ROUNDS} interleaved rounds, durable commits, real bind mounts)\n`);
    console.log(rows.join('\n'));
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
}

await main();
