/**
 * Per-request latency on the VolumeDriver socket, without dockerd (#13): tsvol (`node dist/main.js`, log
 * level info, durable store, real directories) against the in-memory plugin server of bench/docker.ts
 * (bench/memory-plugin/server.mjs: a bare node:http server answering from a Map), so that dockerd's
 * noise is out of the figure. Each request is timed alone (c=1) from write to last byte, on a keep-alive
 * connection and on a fresh connection per request (dockerd's plugin client keeps only two idle
 * connections, so at c=8 most of its calls open one). Rounds alternate between the two servers; the
 * figure is the best round's median (and p90). `npm run bench -- socket` runs it alone.
 * Knobs: TSVOL_BENCH_SOCKET_N (requests per op per round, 2000), TSVOL_BENCH_SOCKET_ROUNDS (3).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(HERE, '..', 'dist', 'main.js');
const envInt = (name: string, dflt: number): number => {
  const v = Number(process.env[name]);
  return Number.isInteger(v) && v > 0 ? v : dflt;
};
const N = envInt('TSVOL_BENCH_SOCKET_N', 2000);
const ROUNDS = envInt('TSVOL_BENCH_SOCKET_ROUNDS', 3);

/** One request as dockerd writes it (POST, its Accept header, no Content-Type). */
function request(endpoint: string, body: unknown, close: boolean): Buffer {
  const payload = JSON.stringify(body);
  return Buffer.from(
    `POST ${endpoint} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n` +
      `Accept: application/vnd.docker.plugins.v1.2+json\r\nAccept-Encoding: gzip\r\n${close ? 'Connection: close\r\n' : ''}\r\n${payload}`,
  );
}

/** A minimal HTTP/1.1 client on one connection: sends a request, resolves at the end of the reply's body. */
class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private waiting: ((status: number) => void) | undefined;
  private failed: ((err: Error) => void) | undefined;
  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (c: Buffer) => {
      this.buf = this.buf.length === 0 ? c : Buffer.concat([this.buf, c]);
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buf.toString('latin1', 0, end);
      const m = /content-length: *(\d+)/i.exec(head);
      const len = m === null ? 0 : Number(m[1]);
      if (this.buf.length < end + 4 + len) return;
      const status = Number(head.slice(9, 12));
      this.buf = this.buf.subarray(end + 4 + len);
      const w = this.waiting;
      this.waiting = undefined;
      w?.(status);
    });
    sock.on('error', (err) => this.failed?.(err));
  }
  static open(socket: string): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socket, () => resolve(new Conn(s)));
      s.once('error', reject);
    });
  }
  send(req: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.failed = reject;
      this.sock.write(req);
    });
  }
  close(): void {
    this.sock.destroy();
  }
}

interface Op {
  readonly label: string;
  readonly endpoint: string;
  readonly body: (i: number) => unknown;
  /** The volume does not exist: the reply is an error. */
  readonly missing?: boolean;
}

/** Latencies in µs of `n` requests of `op`, one at a time. */
async function latencies(socket: string, op: Op, n: number, fresh: boolean, round: number): Promise<number[]> {
  const out: number[] = [];
  let conn = fresh ? undefined : await Conn.open(socket);
  for (let i = 0; i < n; i++) {
    const req = request(op.endpoint, op.body(round * n + i), fresh);
    const t0 = process.hrtime.bigint();
    const c = conn ?? (await Conn.open(socket));
    const status = await c.send(req);
    out.push(Number(process.hrtime.bigint() - t0) / 1e3);
    // A missing volume is a 404 from tsvol and a 200 with Err from the in-memory server: both say so.
    if (status !== 200 && !(op.missing === true && status === 404)) throw new Error(`${op.label}: HTTP ${status}`);
    if (fresh) c.close();
  }
  conn?.close();
  return out;
}

/** CPU time in µs that process `pid` has used so far, all its threads (schedstat: nanoseconds on a CPU). */
function cpuUs(pid: number): number {
  let ns = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch (err) {
      // ENOENT: a thread that ended between the listing and the read; its time is lost to the sum.
      if ((err as { code?: string }).code !== 'ENOENT') throw err;
    }
  }
  return ns / 1e3;
}

/** `n` requests of `op` at concurrency `c`: requests per second, and the server's CPU µs per request. */
async function loaded(socket: string, pid: number, op: Op, n: number, c: number, fresh: boolean, round: number): Promise<[number, number]> {
  let next = 0;
  const cpu0 = cpuUs(pid);
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: c }, async () => {
      let conn = fresh ? undefined : await Conn.open(socket);
      while (next < n) {
        const i = next++;
        const cn = conn ?? (await Conn.open(socket));
        const status = await cn.send(request(op.endpoint, op.body(round * n + i), fresh));
        if (status !== 200 && !(op.missing === true && status === 404)) throw new Error(`${op.label}: HTTP ${status}`);
        if (fresh) cn.close();
      }
      conn?.close();
      conn = undefined;
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  // Background work the phase started still counts: wait until the server is idle (under 1 ms of CPU in
  // 100 ms), at most 10 s.
  for (let last = cpuUs(pid), waited = 0; waited < 10_000; waited += 100) {
    await new Promise((r) => setTimeout(r, 100));
    const now = cpuUs(pid);
    if (now - last < 1000) break;
    last = now;
  }
  return [n / secs, (cpuUs(pid) - cpu0) / n];
}

const pct = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

async function waitFor(socket: string, proc: ChildProcess): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server for ${socket} exited`);
    try {
      const c = await Conn.open(socket);
      await c.send(request('/VolumeDriver.Capabilities', null, false));
      c.close();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const base = fs.mkdtempSync('/var/tmp/tsvol-bench-socket-');
const procs: ChildProcess[] = [];
try {
  const servers: { label: string; socket: string; args: string[]; pid?: number }[] = [
    { label: 'in-memory plugin server', socket: path.join(base, 'memory.sock'), args: [path.join(HERE, 'memory-plugin', 'server.mjs')] },
    { label: 'tsvol (info)', socket: path.join(base, 'tsvol.sock'), args: [MAIN] },
  ];
  for (const s of servers) {
    const dir = path.join(base, path.basename(s.socket, '.sock'));
    const proc = spawn(process.execPath, s.args, {
      env: { ...process.env, TSVOL_SOCKET: s.socket, TSVOL_DATA: path.join(dir, 'data'), TSVOL_MOUNTS: path.join(dir, 'mnt'), TSVOL_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    procs.push(proc);
    s.pid = proc.pid;
    await waitFor(s.socket, proc);
  }
  const ops: Op[] = [
    { label: 'Get', endpoint: '/VolumeDriver.Get', body: () => ({ Name: 'present' }) },
    { label: 'Capabilities', endpoint: '/VolumeDriver.Capabilities', body: () => null },
    { label: 'Path', endpoint: '/VolumeDriver.Path', body: () => ({ Name: 'present' }) },
    { label: 'Get of a missing volume', endpoint: '/VolumeDriver.Get', body: () => ({ Name: 'absent' }), missing: true },
    { label: 'Create', endpoint: '/VolumeDriver.Create', body: (i) => ({ Name: `v${i}`, Opts: null }) },
    { label: 'Remove', endpoint: '/VolumeDriver.Remove', body: (i) => ({ Name: `v${i}` }) },
  ];
  for (const s of servers) {
    const c = await Conn.open(s.socket);
    await c.send(request('/VolumeDriver.Create', { Name: 'present', Opts: null }, false));
    c.close();
  }
  const modes = [
    { label: 'keep-alive', fresh: false },
    { label: 'new connection', fresh: true },
  ];
  // best[server][mode][op] = [p50, p90] of the round with the lowest p50.
  const best = servers.map(() => modes.map(() => ops.map(() => [Infinity, Infinity])));
  // A warm-up round on other names, then ROUNDS measured ones, the servers alternating op by op.
  for (let round = 0; round <= ROUNDS; round++) {
    for (const [m, mode] of modes.entries()) {
      for (const [o, op] of ops.entries()) {
        // Creates and Removes use names of their own per mode and round, so each Remove finds its volume.
        const r = round * 2 + m;
        const order = round % 2 === 0 ? [0, 1] : [1, 0];
        for (const si of order) {
          const xs = await latencies(servers[si]!.socket, op, N, mode.fresh, r);
          if (round === 0) continue;
          const slot = best[si]![m]![o]!;
          const p50 = pct(xs, 0.5);
          if (p50 < slot[0]!) best[si]![m]![o] = [p50, pct(xs, 0.9)];
        }
      }
    }
  }
  // Under load as bench/docker.ts makes it through dockerd (c=8, each volume created, inspected, removed):
  // throughput, and the server's CPU per request including the background work a phase starts (usage
  // walks, the deleter), counted until the server is idle again. Best of ROUNDS alternating rounds.
  const phases: Op[] = [
    { label: 'Create', endpoint: '/VolumeDriver.Create', body: (i) => ({ Name: `l${i}`, Opts: null }) },
    { label: 'Get (first of each volume)', endpoint: '/VolumeDriver.Get', body: (i) => ({ Name: `l${i}` }) },
    { label: 'Get (again)', endpoint: '/VolumeDriver.Get', body: (i) => ({ Name: `l${i}` }) },
    { label: 'Capabilities', endpoint: '/VolumeDriver.Capabilities', body: () => null },
    { label: 'Path', endpoint: '/VolumeDriver.Path', body: (i) => ({ Name: `l${i}` }) },
    { label: 'Get of a missing volume', endpoint: '/VolumeDriver.Get', body: () => ({ Name: 'absent' }), missing: true },
    { label: 'Remove', endpoint: '/VolumeDriver.Remove', body: (i) => ({ Name: `l${i}` }) },
  ];
  const loadBest = servers.map(() => modes.map(() => phases.map(() => [0, Infinity])));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [m, mode] of modes.entries()) {
      for (const si of round % 2 === 0 ? [0, 1] : [1, 0]) {
        for (const [o, op] of phases.entries()) {
          const [rate, cpu] = await loaded(servers[si]!.socket, servers[si]!.pid!, op, N * 2, 8, mode.fresh, round * 2 + m);
          const slot = loadBest[si]![m]![o]!;
          loadBest[si]![m]![o] = [Math.max(slot[0]!, rate), Math.min(slot[1]!, cpu)];
        }
      }
    }
  }
  console.log(`## VolumeDriver socket latency, one request at a time (${N} per op, best median of ${ROUNDS} alternating rounds)\n`);
  console.log('| request | connection | in-memory server p50 / p90 | tsvol p50 / p90 | tsvol extra (p50) |\n|---|---|---:|---:|---:|');
  for (const [m, mode] of modes.entries()) {
    for (const [o, op] of ops.entries()) {
      const [mp50, mp90] = best[0]![m]![o]!;
      const [tp50, tp90] = best[1]![m]![o]!;
      console.log(`| ${op.label} | ${mode.label} | ${mp50!.toFixed(0)} / ${mp90!.toFixed(0)} µs | ${tp50!.toFixed(0)} / ${tp90!.toFixed(0)} µs | ${(tp50! - mp50!).toFixed(0)} µs |`);
    }
  }
  console.log(`\n## A volume's life at c=8 (${N * 2} volumes, best of ${ROUNDS} alternating rounds): requests/s and the server's CPU per request, background work included\n`);
  console.log('| request | connection | in-memory server | tsvol | tsvol extra CPU |\n|---|---|---:|---:|---:|');
  for (const [m, mode] of modes.entries()) {
    for (const [o, op] of phases.entries()) {
      const [mr, mc] = loadBest[0]![m]![o]!;
      const [tr, tc] = loadBest[1]![m]![o]!;
      console.log(`| ${op.label} | ${mode.label} | ${mr!.toFixed(0)}/s, ${mc!.toFixed(0)} µs | ${tr!.toFixed(0)}/s, ${tc!.toFixed(0)} µs | ${(tc! - mc!).toFixed(0)} µs |`);
    }
  }
} finally {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
  await Promise.all(procs.map((p) => (p.exitCode === null ? new Promise((r) => p.once('exit', r)) : undefined)));
  spawnUmount(base);
  fs.rmSync(base, { recursive: true, force: true });
}

/** Unmounts anything the servers left mounted below `dir` (none expected: no volume is mounted here). */
function spawnUmount(dir: string): void {
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').reverse()) {
    const mp = line.split(' ')[4];
    if (mp !== undefined && mp.startsWith(`${dir}/`)) throw new Error(`${mp} is still mounted after the bench; not deleting ${dir}`);
  }
}
