/**
 * Benchmark for issue #6 (standalone: `node --import tsx bench/volumes-extra.ts`): on a real server,
 * - clone (`-o from=`) of a 1 GB / 10,000-file volume vs `cp -a --reflink=auto` of the same tree;
 * - `tsvol volume export` / `import` vs `tar -c` / `tar -x` of the same tree;
 * - Create of a sized volume (p50/p99).
 * Works under /var/tmp (ext4 here: no reflinks, so clone and cp both copy), then repeats the clone race on a
 * loop-mounted XFS (reflinks: both sides share extents), and cleans up. Sizes: env
 * BENCH_MB (default 1024) and BENCH_FILES (default 10000).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CLI, cleanupDir, startTestServer } from '../test/helpers/server.js';

const MB = Number(process.env.BENCH_MB ?? 1024);
const FILES = Number(process.env.BENCH_FILES ?? 10000);

function fill(dir: string): void {
  const per = Math.floor((MB << 20) / FILES / 4) * 4;
  const buf = Buffer.alloc(per);
  for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
  for (let i = 0; i < FILES; i++) {
    const d = path.join(dir, `d${i % 100}`);
    if (i < 100) fs.mkdirSync(d);
    buf.writeUInt32LE(i, 0);
    fs.writeFileSync(path.join(d, `f${i}`), buf);
  }
}

function timed(fn: () => void): number {
  spawnSync('sync');
  const t0 = process.hrtime.bigint();
  fn();
  spawnSync('sync'); // both sides pay for getting their data to disk
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function sh(cmd: string, args: string[], env?: NodeJS.ProcessEnv): void {
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.toString()}`);
}

const s = await startTestServer();
const rows: string[][] = [['operation', 'tsvol', 'baseline', 'speed-up (baseline/tsvol)']];
try {
  const env = { ...process.env, TSVOL_DATA: s.data, TSVOL_SOCKET: s.socket, TSVOL_MOUNTS: s.mounts ?? '' };
  await s.ok('/VolumeDriver.Create', { Name: 'src', Opts: {} });
  const src = path.join(s.data, 'volumes', 'src', '_data');
  fill(src);
  const best = async (n: number, f: () => Promise<number> | number): Promise<number> => {
    let b = Infinity;
    for (let i = 0; i < n; i++) b = Math.min(b, await f());
    return b;
  };
  let k = 0;
  const clone = await best(2, async () => {
    spawnSync('sync');
    const t0 = process.hrtime.bigint();
    await s.ok('/VolumeDriver.Create', { Name: `c${k++}`, Opts: { from: 'src' } });
    spawnSync('sync');
    return Number(process.hrtime.bigint() - t0) / 1e6;
  });
  const cp = await best(2, () => {
    const dst = path.join(s.dir, `cp${k++}`);
    return timed(() => sh('cp', ['-a', '--reflink=auto', src, dst]));
  });
  rows.push([`clone ${MB} MB / ${FILES} files`, `${clone.toFixed(0)} ms`, `${cp.toFixed(0)} ms (cp -a)`, `${(cp / clone).toFixed(2)}x`]);

  const tarFile = path.join(s.dir, 'x.tar');
  const exp = await best(2, () => timed(() => sh(process.execPath, [CLI, 'volume', 'export', 'src', '-o', path.join(s.dir, 'v.tar')], env)));
  const tarc = await best(2, () => timed(() => sh('tar', ['-C', src, '--xattrs', '-cf', tarFile, '.'], env)));
  rows.push(['export', `${exp.toFixed(0)} ms`, `${tarc.toFixed(0)} ms (tar -c)`, `${(tarc / exp).toFixed(2)}x`]);
  const imp = await best(2, () => timed(() => sh(process.execPath, [CLI, 'volume', 'import', `i${k++}`, path.join(s.dir, 'v.tar')], env)));
  const tarx = await best(2, () => {
    const dst = path.join(s.dir, `x${k++}`);
    fs.mkdirSync(dst);
    return timed(() => sh('tar', ['-C', dst, '--xattrs', '-xpf', tarFile]));
  });
  rows.push(['import', `${imp.toFixed(0)} ms`, `${tarx.toFixed(0)} ms (tar -x)`, `${(tarx / imp).toFixed(2)}x`]);

  const times: number[] = [];
  for (let i = 0; i < 100; i++) {
    const t0 = process.hrtime.bigint();
    await s.ok('/VolumeDriver.Create', { Name: `sized${i}`, Opts: { size: '1G' } });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  rows.push(['Create size=1G (100x)', `p50 ${times[49]!.toFixed(1)} ms, p99 ${times[98]!.toFixed(1)} ms`, '-', '-']);
} finally {
  await s.kill();
  cleanupDir(s.dir);
}
// The same clone on XFS (reflink=1, mkfs.xfs's default), where both sides share extents instead of copying.
{
  const { makeLoopFs } = await import('../test/helpers/tree.js');
  const xfs = makeLoopFs('xfs', 3 * 1024 + 512);
  const dir = path.join(xfs.dir, 'server');
  fs.mkdirSync(dir);
  const x = await startTestServer({ dir });
  try {
    await x.ok('/VolumeDriver.Create', { Name: 'src', Opts: {} });
    const src = path.join(x.data, 'volumes', 'src', '_data');
    fill(src);
    let k = 0;
    let clone = Infinity;
    for (let i = 0; i < 2; i++) {
      spawnSync('sync');
      const t0 = process.hrtime.bigint();
      await x.ok('/VolumeDriver.Create', { Name: `c${k++}`, Opts: { from: 'src' } });
      spawnSync('sync');
      clone = Math.min(clone, Number(process.hrtime.bigint() - t0) / 1e6);
    }
    let cp = Infinity;
    for (let i = 0; i < 2; i++) cp = Math.min(cp, timed(() => sh('cp', ['-a', '--reflink=auto', src, path.join(x.dir, `cp${k++}`)])));
    const free = fs.statfsSync(xfs.dir);
    rows.push([`clone on XFS (reflink) ${MB} MB`, `${clone.toFixed(0)} ms`, `${cp.toFixed(0)} ms (cp -a)`, `${(cp / clone).toFixed(2)}x`]);
    rows.push([`  XFS space used after ${k} copies`, `${(((free.blocks - free.bfree) * free.bsize) / 2 ** 20).toFixed(0)} MiB`, '-', '-']);
  } finally {
    await x.kill();
    cleanupDir(dir);
    xfs.cleanup();
  }
}

const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('  '));
