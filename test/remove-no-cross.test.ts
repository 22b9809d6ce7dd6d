/**
 * No recursive rm on data paths (#9): a named volume's rollback, uncommitted-build removal, rebuild and
 * Remove, the image blob gc and the 0.1 migration's cleanup all delete through the deleter's walk
 * (src/sys/remove.ts), which never crosses a mountpoint. Node's fs.rm({ recursive }) does not follow
 * symlinks but does descend into a mount: a bind mount of an outside directory planted in the victim tree
 * had its files deleted through it. Each test plants such a bind holding a canary file and checks the
 * canary survives and the operation says what it left.
 * Needs root (mounts): fails under CI=true without it.
 */
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { createBlobStore } from '../src/images/blob-store.js';
import { createLayout, type Layout } from '../src/store/layout.js';
import { openMetaStore } from '../src/store/open.js';
import type { VolumeRecord } from '../src/store/volume-store.js';
import { bindMount } from '../src/sys/mount.js';
import { createDeleter } from '../src/volumes/deleter.js';
import type { KindContext, RecordOf } from '../src/volumes/kinds/kind.js';
import { NAMED_BEFORE_FILL_PAUSE, named } from '../src/volumes/kinds/named.js';
import { captureLogger } from './helpers/cluster.js';
import { cleanupDir, requireRoot, startTestServer, tempDir } from './helpers/server.js';

const CANARY = 'data that must survive';

/** A directory outside the data root with a canary file, bind-mounted at `at` (made here). */
/** A scratch directory for one test, deleted (mounts first) when the test is done. */
function scratch(t: ExecutionContext): string {
  const dir = tempDir('tsvol-nocross-');
  t.teardown(() => cleanupDir(dir));
  return dir;
}

function plantBind(outside: string, at: string): string {
  const src = path.join(outside, `precious-${path.basename(at)}-${Math.random().toString(36).slice(2, 8)}`);
  fs.mkdirSync(src);
  const canary = path.join(src, 'keep-me');
  fs.writeFileSync(canary, CANARY);
  fs.mkdirSync(at, { recursive: true });
  bindMount(src, at);
  return canary;
}

/** What the named kind uses of a KindContext, on a fresh data root (local scope). */
function namedContext(root: string): { ctx: KindContext; layout: Layout; lines: Record<string, unknown>[] } {
  const layout = createLayout(root);
  fs.mkdirSync(layout.volumesDir, { recursive: true });
  fs.mkdirSync(layout.tmpDir, { recursive: true });
  const { log, lines } = captureLogger('debug');
  const partial: Partial<KindContext> = { layout, log, umask: process.umask(), deleter: createDeleter(layout, log), sharedRoot: undefined, stageRecord: undefined };
  return { ctx: partial as KindContext, layout, lines };
}

function namedRecord(name: string): RecordOf<'named'> {
  const rec: VolumeRecord = { name, createdAt: new Date().toISOString(), spec: { kind: 'named' }, options: Object.create(null) as Record<string, string>, holds: new Map() };
  return rec as RecordOf<'named'>;
}

/** A scratch data root with a named kind's context, and a record of volume "v" in it (not built yet). */
function namedVolume(t: Parameters<typeof scratch>[0]): ReturnType<typeof namedContext> & { dir: string; rec: RecordOf<'named'> } {
  const dir = scratch(t);
  return { dir, ...namedContext(path.join(dir, 'data')), rec: namedRecord('v') };
}

test('named: removing an uncommitted build never deletes through a bind mount inside _data (old code: the canary went)', async (t) => {
  if (!requireRoot(t)) return;
  const { dir, ctx, layout, lines, rec } = namedVolume(t);
  const built = await named.build(rec, ctx);
  const mnt = path.join(layout.dataDir('v'), 'mnt');
  const canary = plantBind(dir, mnt);
  await built.remove();
  t.is(fs.readFileSync(canary, 'utf8'), CANARY);
  t.true(fs.existsSync(mnt), 'the mountpoint and the directories holding it stay');
  t.true(lines.some((l) => l.msg === 'uncommitted volume had mounts inside; left them and their directories' && JSON.stringify(l.mounts) === JSON.stringify([mnt])));
});

test('named: rebuilding a lost _data refuses, and deletes nothing through, a mount left in the volume directory (old code: the canary went)', async (t) => {
  if (!requireRoot(t)) return;
  const { dir, ctx, layout, rec } = namedVolume(t);
  fs.mkdirSync(layout.volumeDir('v'), { mode: 0o701 }); // power loss took _data; something else is there
  const mnt = path.join(layout.volumeDir('v'), 'mnt');
  const canary = plantBind(dir, mnt);
  const err = await t.throwsAsync(named.establish(rec, ctx));
  t.is((err as { code?: string }).code, 'TSVOL_IN_USE');
  t.is(err.message, `volume "v" lost its _data and ${layout.volumeDir('v')} holds mounts: ${mnt}; unmount them, then mount the volume again`);
  t.is(fs.readFileSync(canary, 'utf8'), CANARY);
  t.false(fs.existsSync(layout.dataDir('v')));
});

test('named: Remove of a volume with a bind mount inside _data leaves what is mounted (already so before: regression guard)', async (t) => {
  if (!requireRoot(t)) return;
  const { dir, ctx, layout, lines, rec } = namedVolume(t);
  const built = await named.build(rec, ctx);
  built.release();
  const canary = plantBind(dir, path.join(layout.dataDir('v'), 'mnt'));
  await named.destroy(rec, ctx);
  await ctx.deleter.drain();
  t.is(fs.readFileSync(canary, 'utf8'), CANARY);
  t.false(fs.existsSync(layout.volumeDir('v')), 'the name is free: what is left is in tmp/');
  t.true(lines.some((l) => l.msg === 'removed volume had mounts inside; left them and their directories in tmp/'));
});

test('named: a failed Create rolls back without deleting through a mount planted in its directory (old code: the canary went)', async (t) => {
  if (!requireRoot(t)) return;
  const dir = scratch(t);
  // Create pauses between making volumes/v and its _data; the test plants _data with a bind inside, so the
  // mkdir of _data fails (EEXIST) and the rollback runs over the mount.
  const s = await startTestServer({ dir, env: { TSVOL_PAUSE_AT: `${NAMED_BEFORE_FILL_PAUSE}=1500` } });
  try {
    const vdir = path.join(s.data, 'volumes', 'vv');
    let answered = false;
    const reply = s.call('/VolumeDriver.Create', { Name: 'vv' }).finally(() => (answered = true));
    while (!fs.existsSync(vdir) && !answered) await new Promise((r) => setTimeout(r, 5));
    t.false(answered, 'Create paused after making the volume directory');
    const mnt = path.join(vdir, '_data', 'mnt');
    const canary = plantBind(dir, mnt);
    const r = await reply;
    t.regex(String(r.json.Err), /EEXIST.*_data.* was left in place, with the mounts inside it: .*\/volumes\/vv\/_data\/mnt; unmount them and delete it/);
    t.is(fs.readFileSync(canary, 'utf8'), CANARY);
    t.regex(String((await s.call('/VolumeDriver.Get', { Name: 'vv' })).json.Err), /volume "vv" not found/);
  } finally {
    await s.kill();
  }
});

test('image blob gc deletes a stray directory among the blobs without crossing a mount inside it, and says so (old code: the canary went)', async (t) => {
  if (!requireRoot(t)) return;
  const dir = scratch(t);
  const layout = createLayout(path.join(dir, 'data'));
  fs.mkdirSync(layout.root);
  const { store } = openMetaStore(layout);
  const blobs = createBlobStore(layout, store);
  fs.mkdirSync(layout.blobsDir, { recursive: true });
  const stray = path.join(layout.blobsDir, 'a'.repeat(64));
  fs.writeFileSync(path.join(layout.blobsDir, 'b'.repeat(64)), 'an unheld blob');
  const canary = plantBind(dir, path.join(stray, 'mnt'));
  const err = await t.throwsAsync(blobs.gc());
  t.is((err as { code?: string }).code, 'TSVOL_IN_USE');
  t.is(err.message, `image gc: mounts inside ${layout.blobsDir} were left in place: ${stray}/mnt; unmount them and run gc again`);
  t.is(fs.readFileSync(canary, 'utf8'), CANARY);
  t.false(fs.existsSync(path.join(layout.blobsDir, 'b'.repeat(64))), 'the unheld blob file still went');
  await store.close();
});

test("the 0.1 migration's cleanup leaves a mount inside 0.1's record directories and reports it (old code: the canary went)", async (t) => {
  if (!requireRoot(t)) return;
  const dir = scratch(t);
  const layout = createLayout(path.join(dir, 'data'));
  const old = layout.layers.legacy01;
  fs.mkdirSync(old.tagsDir, { recursive: true });
  fs.writeFileSync(path.join(old.tagsDir, 'stale'), 'sha256:00');
  const canary = plantBind(dir, path.join(old.chainsDir, 'x', 'mnt'));
  const { store, migration } = openMetaStore(layout);
  t.deepEqual(migration.left, [path.join(old.chainsDir, 'x', 'mnt')]);
  t.is(fs.readFileSync(canary, 'utf8'), CANARY);
  t.false(fs.existsSync(old.tagsDir), 'the rest went');
  await store.close();
});
