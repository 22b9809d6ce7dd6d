/**
 * Images (#11) against Docker on the same machine, through the tsvol CLI with a tsvol server running (as
 * users run it beside the managed plugin):
 * - load: `tsvol image load -i TAR` vs `docker load -i TAR` of the same `docker save` tar of a ~300 MB,
 *   10,000-file image (built with `docker build` on the busybox test image, four COPY layers of 2,500
 *   random 30 kB files);
 * - pull: `tsvol image pull` vs `docker pull` of that image from a loopback registry (Debian's
 *   docker-registry; docker pushed it, so the layers are gzip).
 * Each round runs both sides one after the other, alternating which goes first; before each timed run the
 * side's copy is removed (a fresh tsvol data root and server; `docker rmi`) and `sync` runs, so that
 * neither pays for the other's writeback. Figures: best of the rounds per side, and the ratio of the
 * bests (docker time / tsvol time: above 1 is tsvol faster). Holds the engine lock (test/helpers/docker.ts)
 * like the image and e2e suites. Knobs: TSVOL_BENCH_IMAGES_ROUNDS (3); TSVOL_BENCH_IMAGES_ONLY = load or
 * pull. `npm run bench -- images` runs this bench alone.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DOCKER, docker, setupEngine } from '../test/helpers/docker.js';
import { startRegistry } from '../test/helpers/registry.js';
import { cleanupDir, startTestServer, tempDir, type TestServer } from '../test/helpers/server.js';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const ROUNDS = Number(process.env.TSVOL_BENCH_IMAGES_ROUNDS ?? 3);
const ONLY = process.env.TSVOL_BENCH_IMAGES_ONLY;
const UNIQ = `${process.pid}`;
const BASE = `tsvol-bench-img-base:${UNIQ}`;
const IMAGE = `tsvol-bench-img:${UNIQ}`;

function sh(cmd: string, args: string[], env: Record<string, string> = {}): string {
  const r = spawnSync(cmd, args, { env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function timed(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const env = await setupEngine(BASE);
const work = tempDir('tsvol-bench-images-');
let reg: Awaited<ReturnType<typeof startRegistry>> | undefined;
const servers: TestServer[] = [];
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

  /** One tsvol run: a fresh server and data root (untimed), then the timed command. */
  const tsvolRun = async (args: string[]): Promise<number> => {
    const server = await startTestServer();
    servers.push(server);
    sh('sync', []);
    try {
      return timed(() => sh(process.execPath, [CLI, ...args], { TSVOL_DATA: server.data }));
    } finally {
      await server.stop();
      cleanupDir(server.dir);
      servers.pop();
    }
  };
  // Every name of the image goes before a docker run: a layer another tag still holds would be reused.
  const dockerRun = (args: string[]): number => {
    spawnSync(DOCKER, ['rmi', '-f', IMAGE, remote]);
    const left = spawnSync(DOCKER, ['image', 'inspect', IMAGE]).status === 0 || spawnSync(DOCKER, ['image', 'inspect', remote]).status === 0;
    if (left) throw new Error('docker rmi left the bench image in place');
    sh('sync', []);
    return timed(() => sh(DOCKER, args));
  };

  const results = new Map<string, { tsvol: number[]; docker: number[] }>();
  const record = (op: string, side: 'tsvol' | 'docker', ms: number): void => {
    const r = results.get(op) ?? { tsvol: [], docker: [] };
    r[side].push(ms);
    results.set(op, r);
  };
  for (let round = 0; round < ROUNDS; round++) {
    const order: ('tsvol' | 'docker')[] = round % 2 === 0 ? ['tsvol', 'docker'] : ['docker', 'tsvol'];
    for (const side of order) {
      if (ONLY !== 'pull') {
        record('load', side, side === 'tsvol' ? await tsvolRun(['image', 'load', '-i', tar]) : dockerRun(['load', '-i', tar]));
      }
      if (ONLY !== 'load') {
        record('pull', side, side === 'tsvol' ? await tsvolRun(['image', 'pull', remote]) : dockerRun(['pull', remote]));
      }
    }
  }
  const rows = [
    `## Images (${mb.toFixed(0)} MB docker save tar, 10,000 files in 4 layers; ${ROUNDS} interleaved rounds; tsvol through its CLI with a server running)\n`,
    '| operation | tsvol (best; all) | docker (best; all) | speed vs docker | target |',
    '|---|---:|---:|---:|---:|',
  ];
  for (const [op, r] of results) {
    const t = Math.min(...r.tsvol);
    const d = Math.min(...r.docker);
    const ratio = d / t;
    const all = (xs: number[]): string => xs.map((x) => (x / 1000).toFixed(2)).join(', ');
    const what = op === 'load' ? '`image load -i` vs `docker load -i`' : '`image pull` vs `docker pull` (loopback registry)';
    rows.push(`| ${what} | ${(t / 1000).toFixed(2)} s (${all(r.tsvol)}) | ${(d / 1000).toFixed(2)} s (${all(r.docker)}) | ${ratio.toFixed(2)}× | ≥ 1.0× ${ratio >= 1 ? 'met' : 'NOT met'} |`);
  }
  console.log(rows.join('\n'));
} finally {
  for (const s of servers) await s.stop();
  spawnSync(DOCKER, ['rmi', '-f', IMAGE]);
  await reg?.stop();
  fs.rmSync(work, { recursive: true, force: true });
  env.teardown();
}
