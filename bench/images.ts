/**
 * Images (#11) against Docker on the same machine, through the tsvol CLI with a tsvol server running (as
 * users run it beside the managed plugin):
 * - load: `tsvol image load -i TAR` vs `docker load -i TAR` of the same `docker save` tar of a ~300 MB,
 *   10,000-file image (built with `docker build` on the busybox test image, four COPY layers of 2,500
 *   random 30 kB files);
 * - pull: `tsvol image pull` vs `docker pull` of that image from a loopback registry (Debian's
 *   docker-registry; docker pushed it, so the layers are gzip).
 * Each round has a load phase and a pull phase; a phase runs every side once, one after the other, each
 * round starting with another side. A phase starts from the same state for every side: every copy of
 * the image made before (tsvol data roots, docker's image) is deleted, `sync` runs, and then the phase
 * waits TSVOL_BENCH_IMAGES_SETTLE_S (65 s) before its first run, so that no side creates its 10,000
 * files where the bench deleted 10,000 a moment before (ext4 without a journal rescans such inodes for
 * each new file: see clear()). Each tsvol run has a fresh server on a fresh data root; `sync` runs
 * before every timed run, so that no side pays for another's writeback. Figures: best of the rounds per side, and the ratio of the
 * bests (docker time / tsvol time: above 1 is tsvol faster), with the CPU each side used in the run that
 * was its best (tsvol: server + CLI; docker: dockerd, the children it reaped meanwhile (each layer's
 * unpack runs in a re-exec'd dockerd) + CLI; dockerd is shared, so its figure may include another
 * client's work) and the 1-minute load average then (the machine may be shared: a high load
 * average means the figure is not a quiet-machine one). Holds the engine lock (test/helpers/docker.ts)
 * like the image and e2e suites. Knobs: TSVOL_BENCH_IMAGES_ROUNDS (3); TSVOL_BENCH_IMAGES_ONLY = load or
 * pull; TSVOL_BENCH_IMAGES_SETTLE_S (65); TSVOL_BENCH_IMAGES_BEFORE = another built checkout (its dist/), measured as a third side in the
 * same rounds (a before/after comparison). `npm run bench -- images` runs this bench alone.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DOCKER, docker, setupEngine } from '../test/helpers/docker.js';
import { startRegistry } from '../test/helpers/registry.js';
import { cleanupDir, tempDir } from '../test/helpers/server.js';
import { cpuSecondsWithChildren, oldestProcess } from './proc.js';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The tsvol builds measured: this checkout's, and optionally another's (TSVOL_BENCH_IMAGES_BEFORE). */
const BUILDS: { readonly side: string; readonly dist: string }[] = [
  { side: 'tsvol', dist: path.join(ROOT, 'dist') },
  ...(process.env.TSVOL_BENCH_IMAGES_BEFORE ? [{ side: 'tsvol (before)', dist: path.join(process.env.TSVOL_BENCH_IMAGES_BEFORE, 'dist') }] : []),
];
const ROUNDS = Number(process.env.TSVOL_BENCH_IMAGES_ROUNDS ?? 3);
const ONLY = process.env.TSVOL_BENCH_IMAGES_ONLY;
/** Seconds every phase waits after the deletes before its first run (clear()). */
const SETTLE_S = Number(process.env.TSVOL_BENCH_IMAGES_SETTLE_S ?? 65);
const UNIQ = `${process.pid}`;
const BASE = `tsvol-bench-img-base:${UNIQ}`;
const IMAGE = `tsvol-bench-img:${UNIQ}`;

function sh(cmd: string, args: string[], env: Record<string, string> = {}): string {
  const r = spawnSync(cmd, args, { env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** One timed run: wall ms, CPU ms (the command and its server), the 1-minute load average at its start. */
interface Run {
  readonly ms: number;
  readonly cpuMs: number;
  readonly load: number;
}

/**
 * Runs `cmd args` under `sh -c '…; times'`, timed: the shell's `times` prints its children's CPU (the
 * command's), and `server` (a pid) is charged what it used meanwhile.
 */
function timed(cmd: string, args: string[], env: Record<string, string>, server: number | undefined): Run {
  const load = os.loadavg()[0]!;
  const before = server === undefined ? 0 : cpuSecondsWithChildren(server) * 1000;
  const t0 = process.hrtime.bigint();
  const out = sh('sh', ['-c', '"$@" >/dev/null && times', 'sh', cmd, ...args], env);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const after = server === undefined ? 0 : cpuSecondsWithChildren(server) * 1000;
  // `times`: the shell's own user and system time, then its children's: "0m0.391s 0m0.600s".
  const children = out.trim().split('\n').at(-1)!.match(/(\d+)m([\d.]+)s/g) ?? [];
  const cliMs = children.reduce((n, t) => {
    const [, m, sec] = /(\d+)m([\d.]+)s/.exec(t)!;
    return n + (Number(m) * 60 + Number(sec)) * 1000;
  }, 0);
  return { ms, cpuMs: cliMs + after - before, load };
}

const env = await setupEngine(BASE);
const work = tempDir('tsvol-bench-images-');
let reg: Awaited<ReturnType<typeof startRegistry>> | undefined;
const servers: ChildProcess[] = [];
/** Data roots of finished tsvol runs, kept until clear(). */
const kept: string[] = [];
try {
  // ~300 MB in 10,000 files: 4 directories of 2,500 files of 30 kB (content varies so nothing dedupes),
  // one COPY layer each.
  const ctx = path.join(work, 'ctx');
  const chunk = randomBytes(30_000);
  for (let d = 0; d < 4; d++) {
    fs.mkdirSync(path.join(ctx, `d${d}`), { recursive: true });
    for (let f = 0; f < 2500; f++) {
      chunk.writeUInt32LE(d * 2500 + f, 0);
      fs.writeFileSync(path.join(ctx, `d${d}`, `f${f}`), chunk);
    }
  }
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), [`FROM ${BASE}`, ...[0, 1, 2, 3].map((d) => `COPY d${d} /d${d}`), ''].join('\n'));
  sh(DOCKER, ['build', '--network', 'none', '-t', IMAGE, ctx], { DOCKER_BUILDKIT: '0' });
  const tar = path.join(work, 'image.tar');
  docker('save', '-o', tar, IMAGE);
  const mb = fs.statSync(tar).size / 1e6;
  reg = await startRegistry(work, 17000 + (process.pid % 1000) * 2);
  const remote = `${reg.direct}/bench/img:${UNIQ}`;
  docker('tag', IMAGE, remote);
  docker('push', remote);

  /** One tsvol run: a fresh server of `dist` on a fresh data root (untimed), then the timed command. */
  const tsvolRun = async (dist: string, args: string[]): Promise<Run> => {
    const dir = tempDir('tsvol-bench-img-srv-');
    const data = path.join(dir, 'data');
    const server = spawn(process.execPath, [path.join(dist, 'main.js')], {
      env: { ...process.env, TSVOL_SOCKET: path.join(dir, 'tsvol.sock'), TSVOL_DATA: data, TSVOL_BIND_ROOTS: '', TSVOL_LOG_LEVEL: 'warn' },
      stdio: 'ignore',
    });
    servers.push(server);
    try {
      for (let i = 0; !fs.existsSync(path.join(data, 'control.sock')); i++) {
        if (i > 300 || server.exitCode !== null) throw new Error(`the tsvol server of ${dist} did not start`);
        await new Promise((r) => setTimeout(r, 50));
      }
      sh('sync', []);
      return timed(process.execPath, [path.join(dist, 'cli.js'), ...args], { TSVOL_DATA: data }, server.pid);
    } finally {
      server.kill('SIGTERM');
      if (server.exitCode === null) await once(server, 'exit');
      servers.splice(servers.indexOf(server), 1);
      kept.push(dir); // deleted by clear(), not before the other sides' runs of this phase
    }
  };
  // Docker's copy goes in clear(); every name of it: a layer another tag still holds would be reused.
  const dockerRun = (args: string[]): Run => {
    const left = spawnSync(DOCKER, ['image', 'inspect', IMAGE]).status === 0 || spawnSync(DOCKER, ['image', 'inspect', remote]).status === 0;
    if (left) throw new Error('the bench image is still in docker before a docker run');
    sh('sync', []);
    return timed(DOCKER, args, {}, oldestProcess('dockerd'));
  };
  /**
   * Deletes every side's copy (tsvol data roots, docker's image), syncs, and waits SETTLE_S: on an ext4
   * without a journal a file made where another was deleted in the last minute costs up to ten times
   * the kernel time (fs/ext4/ialloc.c `recently_deleted`), so a run right after a delete pays for it,
   * whichever side it is. Every side's runs of a phase start after the same settle.
   */
  const clear = async (): Promise<void> => {
    for (const dir of kept.splice(0)) cleanupDir(dir);
    spawnSync(DOCKER, ['rmi', '-f', IMAGE, remote]);
    sh('sync', []);
    await new Promise((r) => setTimeout(r, SETTLE_S * 1000));
  };

  /** Per operation, per side: every run. */
  const results = new Map<string, Map<string, Run[]>>();
  const record = (op: string, side: string, run: Run): void => {
    const r = results.get(op) ?? new Map<string, Run[]>();
    r.set(side, [...(r.get(side) ?? []), run]);
    results.set(op, r);
  };
  const sides = [...BUILDS.map((b) => b.side), 'docker'];
  for (let round = 0; round < ROUNDS; round++) {
    // Each round starts with another side, so that none always runs first (or last).
    const order = sides.map((_, i) => sides[(i + round) % sides.length]!);
    for (const op of ['load', 'pull'] as const) {
      if (ONLY !== undefined && ONLY !== op) continue;
      // One phase: every side once, from the same settled state; the copies go only after the last.
      await clear();
      for (const side of order) {
        const build = BUILDS.find((b) => b.side === side);
        const args = op === 'load' ? ['load', '-i', tar] : ['pull', remote];
        record(op, side, build ? await tsvolRun(build.dist, ['image', ...args]) : dockerRun(args));
      }
    }
  }
  const rows = [
    `## Images (${mb.toFixed(0)} MB docker save tar, 10,000 files in 4 layers; ${ROUNDS} interleaved rounds; tsvol through its CLI with a server running)\n`,
    '| operation | side | best | CPU of the best | load avg of the best | all runs (s) | speed vs docker (bests) | target |',
    '|---|---|---:|---:|---:|---:|---:|---:|',
  ];
  const bestOf = (runs: Run[]): Run => runs.reduce((a, b) => (b.ms < a.ms ? b : a));
  for (const [op, r] of results) {
    const d = bestOf(r.get('docker')!).ms;
    const what = op === 'load' ? '`image load -i` / `docker load -i`' : '`image pull` / `docker pull` (loopback registry)';
    for (const [side, runs] of r) {
      const best = bestOf(runs);
      const ratio = d / best.ms;
      const all = runs.map((x) => (x.ms / 1000).toFixed(2)).join(', ');
      const target = side === 'docker' ? '-' : `≥ 1.0× ${ratio >= 1 ? 'met' : 'NOT met'}`;
      const cpu = `${(best.cpuMs / 1000).toFixed(2)} s`;
      rows.push(`| ${what} | ${side} | ${(best.ms / 1000).toFixed(2)} s | ${cpu} | ${best.load.toFixed(1)} | ${all} | ${side === 'docker' ? '-' : `${ratio.toFixed(2)}×`} | ${target} |`);
    }
  }
  console.log(rows.join('\n'));
} finally {
  for (const s of servers) s.kill('SIGKILL');
  for (const dir of kept) cleanupDir(dir);
  spawnSync(DOCKER, ['rmi', '-f', IMAGE]);
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
  env.teardown();
}
