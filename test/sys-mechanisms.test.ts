/**
 * The one-module mechanisms of #10, on real mounts and real directories:
 * - unmount (sys/mount.ts): one family, every caller saying what a busy mount means — detached lazily or
 *   reported and left mounted; nothing mounted is an answer, not an error; a symlink at the target is
 *   never followed;
 * - stage-then-publish (sys/staging.ts): built in a locked stage, renamed into place, locked until the
 *   caller's record is committed, removed on any failure (from tmp/ or from its published name).
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { isMountRoot, tryFlock } from '../src/sys/libc.js';
import { bindMount, unmountTarget, unmountTargetAsync } from '../src/sys/mount.js';
import { buildStaged, stageThenPublish, withStage } from '../src/sys/staging.js';
import { cleanupDir, requireRoot, tempDir } from './helpers/server.js';

/** A directory with a file, bind-mounted on an empty one; returns both and the file's path under the mount. */
function bound(base: string, name: string): { source: string; target: string; file: string } {
  const source = path.join(base, `${name}-src`);
  const target = path.join(base, name);
  fs.mkdirSync(source);
  fs.mkdirSync(target);
  fs.writeFileSync(path.join(source, 'file'), name);
  bindMount(source, target);
  return { source, target, file: path.join(target, 'file') };
}

test('unmount: unmounted, not-mounted, busy reported (still mounted) or detached (gone, users keep reading); sync and async alike', async (t) => {
  if (!requireRoot(t)) return;
  const base = tempDir('tsvol-unmount-');
  t.teardown(() => cleanupDir(base));
  for (const [label, run] of [
    ['sync', async (p: string, ifBusy: 'detach' | 'report') => unmountTarget(p, { ifBusy })],
    ['async', async (p: string, ifBusy: 'detach' | 'report') => unmountTargetAsync(p, { ifBusy })],
  ] as const) {
    const idle = bound(base, `idle-${label}`);
    t.is(await run(idle.target, 'report'), 'unmounted', label);
    t.false(isMountRoot(idle.target), label);
    t.is(await run(idle.target, 'detach'), 'not-mounted', `${label}: nothing mounted`);
    t.is(await run(path.join(base, 'missing'), 'detach'), 'not-mounted', `${label}: no such path`);

    const busy = bound(base, `busy-${label}`);
    const fd = fs.openSync(busy.file, 'r'); // an open file keeps the mount busy
    try {
      t.is(await run(busy.target, 'report'), 'busy', label);
      t.true(isMountRoot(busy.target), `${label}: a reported busy mount stays`);
      t.is(await run(busy.target, 'detach'), 'detached', label);
      t.false(isMountRoot(busy.target), `${label}: detached from its name at once`);
      t.is(fs.readFileSync(fd, 'utf8'), `busy-${label}`, `${label}: its user keeps reading`);
    } finally {
      fs.closeSync(fd);
    }

    // A symlink at the target is never followed (UMOUNT_NOFOLLOW): the mount it points at stays.
    const pointed = bound(base, `pointed-${label}`);
    const link = path.join(base, `link-${label}`);
    fs.symlinkSync(pointed.target, link);
    t.is(await run(link, 'detach'), 'not-mounted', label);
    t.true(isMountRoot(pointed.target), `${label}: the mount behind the symlink stays`);
    t.is(await run(pointed.target, 'detach'), 'unmounted', label);
  }
});

/** True if another open file can take the flock of directory `dir` (its stage owner let go or is gone). */
function unlocked(dir: string): boolean {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    return tryFlock(fd);
  } finally {
    fs.closeSync(fd);
  }
}

test('stageThenPublish: filled in tmp/, published at its name, locked until the record is committed, then released', async (t) => {
  const base = tempDir('tsvol-publish-');
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const tmpDir = path.join(base, 'tmp');
  fs.mkdirSync(tmpDir);
  const dest = path.join(base, 'volumes', 'v');
  fs.mkdirSync(path.dirname(dest));
  let filledIn = '';
  const out = await stageThenPublish(
    { tmpDir, kind: 'new', mode: 0o701, dest },
    async (dir) => {
      filledIn = dir;
      t.true(dir.startsWith(`${tmpDir}/new-`), 'built in tmp/');
      fs.writeFileSync(path.join(dir, 'data'), 'built');
    },
    async (dir) => {
      t.is(dir, dest);
      t.false(fs.existsSync(filledIn), 'renamed, not copied');
      t.is(fs.readFileSync(path.join(dest, 'data'), 'utf8'), 'built');
      t.false(unlocked(dest), 'still locked while the record is committed: no sweep can take it');
      return 'committed';
    },
  );
  t.is(out, 'committed');
  t.true(unlocked(dest), 'released once committed');
  t.is(fs.statSync(dest).mode & 0o777, 0o701 & ~process.umask());
  t.deepEqual(fs.readdirSync(tmpDir), []);
});

test('stageThenPublish removes the tree when the fill, the rename or the commit fails; a taken name is the caller\'s error', async (t) => {
  const base = tempDir('tsvol-publish-fail-');
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const tmpDir = path.join(base, 'tmp');
  fs.mkdirSync(tmpDir);
  const dest = path.join(base, 'v');
  const fill = async (dir: string): Promise<void> => fs.writeFileSync(path.join(dir, 'data'), 'x');
  const commit = async (): Promise<string> => 'committed';

  await t.throwsAsync(stageThenPublish({ tmpDir, kind: 'new', dest }, async () => Promise.reject(new Error('fill broke')), commit), { message: 'fill broke' });
  t.deepEqual(fs.readdirSync(tmpDir), [], 'a failed fill leaves nothing in tmp/');
  t.false(fs.existsSync(dest));

  await t.throwsAsync(stageThenPublish({ tmpDir, kind: 'new', dest }, fill, async () => Promise.reject(new Error('commit broke'))), { message: 'commit broke' });
  t.false(fs.existsSync(dest), 'a failed commit removes the published tree');
  t.deepEqual(fs.readdirSync(tmpDir), []);

  fs.mkdirSync(dest);
  fs.writeFileSync(path.join(dest, 'theirs'), 'someone else');
  await t.throwsAsync(stageThenPublish({ tmpDir, kind: 'new', dest, taken: () => new Error('name taken') }, fill, commit), { message: 'name taken' });
  t.deepEqual(fs.readdirSync(dest), ['theirs'], 'what holds the name is left alone');
  t.deepEqual(fs.readdirSync(tmpDir), []);

  // buildStaged: the first half, for a caller that commits later; the stage is still locked at dest.
  fs.rmSync(dest, { recursive: true });
  const stage = await buildStaged({ tmpDir, kind: 'new', dest }, fill);
  t.is(stage.dir, dest);
  t.false(unlocked(dest));
  stage.release();
  t.true(unlocked(dest));
});

test('withStage: a scratch stage locked while its work runs, removed afterwards whether the work succeeds or fails', async (t) => {
  const base = tempDir('tsvol-scratch-');
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const tmpDir = path.join(base, 'tmp');
  fs.mkdirSync(tmpDir);
  t.is(await withStage(tmpDir, 'commit-c', async (dir) => {
    t.true(path.basename(dir).startsWith('commit-c-'));
    t.false(unlocked(dir), 'locked while it works');
    fs.writeFileSync(path.join(dir, 'scratch'), 'x');
    return 42;
  }), 42);
  t.deepEqual(fs.readdirSync(tmpDir), []);
  await t.throwsAsync(withStage(tmpDir, 'import', async () => Promise.reject(new Error('work broke'))), { message: 'work broke' });
  t.deepEqual(fs.readdirSync(tmpDir), []);
});
