/**
 * Sized volumes on a data root with project quotas (#6): a loop-mounted XFS with pquota as TSVOL_DATA.
 * Needs a kernel with XFS quota support (CONFIG_XFS_QUOTA). Whether it has it is found out before the
 * tests are declared, by trying the mount; where the kernel refuses, the quota test is declared with
 * test.skip, so ava reports it as skipped (never as passed) and the reason is printed. The probe's
 * fallback to a loop image is checked on plain XFS everywhere.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { requireRoot, startTestServer, tempDir, cleanupDir } from './helpers/server.js';
import { makeLoopFs } from './helpers/tree.js';
import { requireTools } from './helpers/require.js';

requireTools('mkfs.xfs', 'dd');

async function withDataOn(t: { log: (m: string) => void }, fsDir: string, fn: (s: Awaited<ReturnType<typeof startTestServer>>) => Promise<void>): Promise<void> {
  const dir = tempDir();
  // The data root lives on the test filesystem; socket and mountpoints stay in the temp dir.
  fs.symlinkSync(fsDir, path.join(dir, 'data'));
  const s = await startTestServer({ dir });
  try {
    await fn(s);
  } finally {
    await s.kill();
    cleanupDir(dir);
  }
}

/** Why the quota path cannot be exercised on this kernel, or undefined when it can. */
function quotaUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  try {
    makeLoopFs('xfs', 300, 'pquota').cleanup();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

const unavailable = quotaUnavailable();
if (unavailable !== undefined) {
  console.log(`volumes-size-quota: the project-quota test is SKIPPED on this machine: ${unavailable}`);
}

(unavailable === undefined ? test : test.skip)('XFS with pquota: size= is a project quota; dd past it fails, usage comes from the quota', async (t) => {
  const loopFs = makeLoopFs('xfs', 300, 'pquota');
  t.teardown(loopFs.cleanup);
  await withDataOn(t, loopFs.dir, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'qv', Opts: { size: '20m' } });
    t.false(fs.existsSync(path.join(loopFs.dir, 'volumes', 'qv', 'disk.img')), 'no image: a quota');
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'qv', ID: 'c1' })).Mountpoint as string;
    const r = spawnSync('dd', ['if=/dev/zero', `of=${path.join(mp, 'f')}`, 'bs=1M', 'count=40', 'conv=fsync'], { encoding: 'utf8' });
    t.not(r.status, 0);
    t.regex(r.stderr, /Disk quota exceeded|No space left/);
    let status: Record<string, unknown> = {};
    for (let i = 0; i < 50 && status.usage === undefined; i++) {
      status = ((await s.ok('/VolumeDriver.Get', { Name: 'qv' })).Volume as { Status: Record<string, unknown> }).Status;
      await new Promise((res) => setTimeout(res, 100));
    }
    t.is(status.sizeBacking, 'quota');
    t.true((status.usage as { bytes: number }).bytes >= 19 << 20);
    await s.ok('/VolumeDriver.Unmount', { Name: 'qv', ID: 'c1' });
    await s.ok('/VolumeDriver.Remove', { Name: 'qv' });
  });
});

test('XFS without quotas: the probe falls back to a loop image and says why', async (t) => {
  if (!requireRoot(t)) return;
  const loopFs = makeLoopFs('xfs', 300);
  t.teardown(loopFs.cleanup);
  const { probeSizeBacking } = await import('../src/volumes/size-limit.js');
  const probe = probeSizeBacking(loopFs.dir);
  t.is(probe.backing, 'loop');
  t.regex(probe.why, /xfs/);
  await withDataOn(t, loopFs.dir, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'lv', Opts: { size: '16m' } });
    t.true(fs.existsSync(path.join(loopFs.dir, 'volumes', 'lv', 'disk.img')));
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'lv', ID: 'c1' })).Mountpoint as string;
    const r = spawnSync('dd', ['if=/dev/zero', `of=${path.join(mp, 'f')}`, 'bs=1M', 'count=40'], { encoding: 'utf8' });
    t.regex(r.stderr, /No space left/);
    await s.ok('/VolumeDriver.Unmount', { Name: 'lv', ID: 'c1' });
    await s.ok('/VolumeDriver.Remove', { Name: 'lv' });
  });
});
