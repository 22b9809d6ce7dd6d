/**
 * Benchmark for the background deleter (#13; standalone: `node --import tsx bench/deleter.ts`, or
 * `npm run bench -- deleter`). On a real server over its socket:
 * - cycles: BENCH_CYCLES create → write a few files → Get → Remove cycles, BENCH_CONC at a time: ops/s;
 * - one large delete: Remove of a volume of BENCH_BIG_FILES files, then the time until its tmp/rm-* stage
 *   is gone.
 * In both, a probe sends a Get every 2 ms to another volume for the whole phase: its latency is the server's
 * main-thread responsiveness (event-loop delay as a client sees it) while the deleter works.
 */
import fs from 'node:fs';
import path from 'node:path';
import { cleanupDir, startTestServer, type TestServer } from '../test/helpers/server.js';

const CYCLES = Number(process.env.BENCH_CYCLES ?? 600);
const CONC = Number(process.env.BENCH_CONC ?? 8);
const FILES = Number(process.env.BENCH_FILES ?? 20);
const BIG = Number(process.env.BENCH_BIG_FILES ?? 50_000);

/**
 * Writes `n` small files (100 per directory) into `dir`, asynchronously: the probe runs in this process
 * too, and a synchronous fill would show up as the server's latency.
 */
async function fill(dir: string, n: number): Promise<void> {
  for (let d = 0; d * 100 < n; d++) {
    const sub = path.join(dir, `d${d}`);
    await fs.promises.mkdir(sub);
    const files = Array.from({ length: Math.min(100, n - d * 100) }, (_, i) => fs.promises.writeFile(path.join(sub, `f${d * 100 + i}`), 'x'));
    await Promise.all(files);
  }
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? NaN;
}

/**
 * Sends Gets of `name`, each 2 ms after the previous answer, until `stop()` is true; returns their latencies
 * (ms), sorted. Paced, not back to back: a probe that saturates the server's main thread would measure how
 * the kernel shares two cores between it and the deleter's thread, not how responsive the server is.
 */
async function probe(s: TestServer, name: string, stop: () => boolean): Promise<number[]> {
  const lat: number[] = [];
  while (!stop()) {
    const t0 = performance.now();
    await s.ok('/VolumeDriver.Get', { Name: name });
    lat.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, 2));
  }
  return lat.sort((a, b) => a - b);
}

const fmt = (lat: number[]): string[] => [String(lat.length), pct(lat, 50).toFixed(1), pct(lat, 99).toFixed(1), (lat.at(-1) ?? NaN).toFixed(1)];

const s = await startTestServer({ env: { TSVOL_LOG_LEVEL: 'warn' } });
try {
  const dataOf = (name: string): string => path.join(s.data, 'volumes', name, '_data');
  const tmp = path.join(s.data, 'tmp');
  const stagesLeft = (): number => fs.readdirSync(tmp).filter((e) => e.startsWith('rm-')).length;
  await s.ok('/VolumeDriver.Create', { Name: 'probe', Opts: {} });
  const rows: string[][] = [['phase', 'ops/s', 'probe Gets', 'probe p50 ms', 'probe p99 ms', 'probe max ms']];

  // Idle: the probe alone, for reference.
  const idleEnd = Date.now() + 1000;
  rows.push(['idle (1 s)', '', ...fmt(await probe(s, 'probe', () => Date.now() > idleEnd))]);

  // Cycles.
  let next = 0;
  let done = false;
  const t0 = performance.now();
  const workers = Array.from({ length: CONC }, async () => {
    for (let i = next++; i < CYCLES; i = next++) {
      const name = `c${i}`;
      await s.ok('/VolumeDriver.Create', { Name: name, Opts: {} });
      await fill(dataOf(name), FILES);
      await s.ok('/VolumeDriver.Get', { Name: name });
      await s.ok('/VolumeDriver.Remove', { Name: name });
    }
  });
  const probing = probe(s, 'probe', () => done);
  await Promise.all(workers);
  const cycleMs = performance.now() - t0;
  done = true;
  const cycleLat = await probing;
  while (stagesLeft() > 0) await new Promise((r) => setTimeout(r, 10));
  rows.push([`${CYCLES} cycles of ${FILES} files, c=${CONC}`, (CYCLES / (cycleMs / 1000)).toFixed(0), ...fmt(cycleLat)]);

  // One large delete.
  await s.ok('/VolumeDriver.Create', { Name: 'big', Opts: {} });
  await fill(dataOf('big'), BIG);
  const r0 = performance.now();
  await s.ok('/VolumeDriver.Remove', { Name: 'big' });
  const replyMs = performance.now() - r0;
  let gone = false;
  const bigProbe = probe(s, 'probe', () => gone);
  while (stagesLeft() > 0) await new Promise((r) => setTimeout(r, 5));
  const deleteMs = performance.now() - r0;
  gone = true;
  rows.push([`Remove of ${BIG} files (reply ${replyMs.toFixed(0)} ms, gone after ${deleteMs.toFixed(0)} ms)`, '', ...fmt(await bigProbe)]);

  console.log(`### deleter (${CONC} clients; machine shared, figures under load)\n`);
  for (const [i, row] of rows.entries()) {
    console.log(`| ${row.join(' | ')} |`);
    if (i === 0) console.log(`|${row.map(() => '---').join('|')}|`);
  }
} finally {
  await s.kill();
  cleanupDir(s.dir);
}
