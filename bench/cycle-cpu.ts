/**
 * CPU per Docker volume cycle, on the socket, without dockerd (#13): the calls dockerd 20.10 makes for one
 * `docker volume create` (Capabilities, Get, Create), `inspect` (2 Capabilities, Get) and `rm`
 * (6 Capabilities, 2 Gets, Remove), C volumes at once, each call on a fresh connection as most of
 * dockerd's are. Reports each server's CPU (all threads, /proc/PID/stat) per create, inspect and rm, for
 * tsvol builds (TSVOL_BENCH_CYCLE_BUILDS: comma-separated repo dirs, default this one) and the in-memory
 * managed plugin's server. Rounds interleave. Knobs: TSVOL_BENCH_CYCLE_N (volumes, 1000), _C (8), _ROUNDS (3),
 * _THREADS=1 (CPU per thread), _PROF=DIR (tsvol under --cpu-prof) or =perf (--perf-basic-prof), _SKIP_MEMORY=1
 * (neither the in-memory server nor the durable floor: the same server with the least durable work any
 * plugin laid out as Docker's local driver must do, bench/memory-plugin/server.mjs TSVOL_FLOOR_DURABLE).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuSeconds, threadCpuSeconds } from './proc.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const envInt = (name: string, dflt: number): number => {
  const v = Number(process.env[name]);
  return Number.isInteger(v) && v > 0 ? v : dflt;
};
const N = envInt('TSVOL_BENCH_CYCLE_N', 1000);
const C = envInt('TSVOL_BENCH_CYCLE_C', 8);
const ROUNDS = envInt('TSVOL_BENCH_CYCLE_ROUNDS', 3);
const BUILDS = (process.env.TSVOL_BENCH_CYCLE_BUILDS ?? path.join(HERE, '..')).split(',').filter(Boolean);

function call(socket: string, endpoint: string, body: unknown): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = http.request(
      { socketPath: socket, method: 'POST', path: endpoint, agent: false, headers: { 'Content-Length': Buffer.byteLength(payload), Accept: 'application/vnd.docker.plugins.v1.2+json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

async function phase(socket: string, names: string[], steps: (name: string) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < names.length) await steps(names[next++]!);
    }),
  );
}

interface Server { label: string; args: string[]; env: Record<string, string>; durable?: boolean }

async function runOnce(s: Server, dir: string): Promise<{ create: number; inspect: number; rm: number; wall: number[] }> {
  const socket = path.join(dir, 'p.sock');
  const proc: ChildProcess = spawn(process.execPath, s.args, {
    env: { ...process.env, TSVOL_SOCKET: socket, TSVOL_DATA: path.join(dir, 'data'), TSVOL_MOUNTS: path.join(dir, 'mnt'), TSVOL_LOG_LEVEL: 'info', ...s.env, ...(s.durable ? { TSVOL_FLOOR_DURABLE: path.join(dir, 'floor') } : {}) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  proc.stdout!.resume(); // dockerd reads the plugin's stdout
  for (let i = 0; ; i++) {
    if (fs.existsSync(socket)) {
      try {
        await call(socket, '/Plugin.Activate', {});
        break;
      } catch (err) {
        // Not listening yet: the socket file exists before listen() accepts.
        if (!['ECONNREFUSED', 'ENOENT'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
      }
    }
    if (i > 300) throw new Error(`${s.label} did not start`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const names = Array.from({ length: N }, (_, i) => `cyc${i}`);
  const caps = () => call(socket, '/VolumeDriver.Capabilities', {});
  const out = { create: 0, inspect: 0, rm: 0, wall: [] as number[] };
  for (const [key, steps] of [
    ['create', async (n: string) => { await caps(); await call(socket, '/VolumeDriver.Get', { Name: n }); const r = await call(socket, '/VolumeDriver.Create', { Name: n, Opts: null }); if (r.Err) throw new Error(String(r.Err)); }],
    ['inspect', async (n: string) => { await caps(); await caps(); await call(socket, '/VolumeDriver.Get', { Name: n }); }],
    ['rm', async (n: string) => { for (let i = 0; i < 6; i++) await caps(); await call(socket, '/VolumeDriver.Get', { Name: n }); await call(socket, '/VolumeDriver.Get', { Name: n }); const r = await call(socket, '/VolumeDriver.Remove', { Name: n }); if (r.Err) throw new Error(String(r.Err)); }],
  ] as const) {
    const t0 = cpuSeconds(proc.pid!);
    const th0 = threadCpuSeconds(proc.pid!);
    const w0 = performance.now();
    await phase(socket, names, steps);
    out.wall.push(performance.now() - w0);
    out[key] = ((cpuSeconds(proc.pid!) - t0) / N) * 1e6; // µs per op
    if (process.env.TSVOL_BENCH_CYCLE_THREADS) {
      const parts: string[] = [];
      for (const [k, v] of threadCpuSeconds(proc.pid!)) {
        const d = ((v - (th0.get(k) ?? 0)) / N) * 1e6;
        if (d > 0) parts.push(`${k} ${d.toFixed(0)}`);
      }
      console.log(`  ${s.label} ${key} per-thread µs/op: ${parts.join(', ')}`);
    }
  }
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
  return out;
}

const servers: Server[] = [
  { label: 'in-memory', args: [path.join(HERE, 'memory-plugin', 'server.mjs')], env: {} },
  // The same server plus the least durable work: the volume's two directories and a group-committed,
  // fdatasynced journal line per Create and Remove (bench/memory-plugin/server.mjs).
  { label: 'durable floor', args: [path.join(HERE, 'memory-plugin', 'server.mjs')], env: {}, durable: true },
  ...BUILDS.map((b) => ({ label: `tsvol ${path.basename(b)}`, args: [...(process.env.TSVOL_BENCH_CYCLE_PROF ? (process.env.TSVOL_BENCH_CYCLE_PROF === 'perf' ? ['--perf-basic-prof'] : ['--cpu-prof', '--cpu-prof-dir', process.env.TSVOL_BENCH_CYCLE_PROF]) : []), path.join(b, 'dist', 'main.js')], env: {} })),
];
if (process.env.TSVOL_BENCH_CYCLE_SKIP_MEMORY) servers.splice(0, 2);
const best = new Map<string, { create: number; inspect: number; rm: number; wall: number[] }>();
for (let r = 0; r < ROUNDS; r++) {
  for (const s of servers) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvol-cycle-'));
    try {
      const o = await runOnce(s, dir);
      const b = best.get(s.label);
      if (b === undefined) best.set(s.label, o);
      else for (const k of ['create', 'inspect', 'rm'] as const) b[k] = Math.min(b[k], o[k]);
      console.log(`round ${r} ${s.label}: CPU µs/op create ${o.create.toFixed(0)} inspect ${o.inspect.toFixed(0)} rm ${o.rm.toFixed(0)}; wall ms ${o.wall.map((w) => w.toFixed(0)).join('/')} (load ${os.loadavg()[0]!.toFixed(1)})`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}
console.log(`\n## Plugin CPU per Docker volume operation, on the socket (c=${C}, ${N} volumes, best of ${ROUNDS} interleaved rounds)\n`);
console.log('| server | create | inspect | rm |\n|---|---:|---:|---:|');
const mem = best.get('in-memory');
const floor = best.get('durable floor');
for (const [label, b] of best) {
  // Each tsvol build against the in-memory server, then against the durable floor.
  const of = (base: typeof b | undefined, k: 'create' | 'inspect' | 'rm'): string => (base === undefined ? '–' : `${(b[k] / base[k]).toFixed(2)}×`);
  const ratio = (k: 'create' | 'inspect' | 'rm'): string => (label === 'in-memory' || label === 'durable floor' ? (label === 'durable floor' ? ` (${of(mem, k)})` : '') : ` (${of(mem, k)}; ${of(floor, k)} of the floor)`);
  console.log(`| ${label} | ${b.create.toFixed(0)} µs${ratio('create')} | ${b.inspect.toFixed(0)} µs${ratio('inspect')} | ${b.rm.toFixed(0)} µs${ratio('rm')} |`);
}
