/**
 * Sized volumes on a data root with project quotas (#6): a loop-mounted XFS with pquota as TSVOL_DATA.
 * Needs a kernel with XFS quota support (CONFIG_XFS_QUOTA); where the mount is refused the quota test
 * skips loudly, and fails under CI=true. Either way the probe's fallback is checked on plain XFS.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { requireRoot, startTestServer, tempDir, cleanupDir } from './helpers/server.js';
import { makeLoopFs } from './helpers/tree.js';

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

test('XFS with pquota: size= is a project quota; dd past it fails, usage comes from the quota', async (t) => {
  if (!requireRoot(t)) return;
  let loopFs;
  try {
    loopFs = makeLoopFs('xfs', 300, 'pquota');
  } catch (err) {
    if (process.env.CI === 'true') throw err;
    t.log(`SKIPPED LOUDLY: ${(err as Error).message}`);
    t.pass();
    return;
  }
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
