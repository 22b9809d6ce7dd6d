/**
 * The layer store and container layers delete their own directories through the deleter (#13,
 * src/layers/discard.ts): moved into layers/tmp/rm-* first, then deleted off the event loop, through fds
 * beneath the pinned root, never across a mountpoint. So
 * - a bind mount someone left inside a container's upper directory or a layer's directory is never
 *   crossed: the data under it survives `container rm`, `layer rm` and `layer gc`, which say what they left;
 * - a kill -9 in the middle of a removal (named crash points: after the move into tmp/, and mid-tree) leaves
 *   no half-deleted layer or container under its name, and the next start-up deletes the rest.
 * Needs root (mounts): fails under CI=true without it.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { createContainerStore } from '../src/layers/containers.js';
import { STAGED_CRASH } from '../src/layers/discard.js';
import { PROBE_CLEANUP_PAUSE } from '../src/layers/probe.js';
import { layersLayout } from '../src/store/layout.js';
import { bindMount } from '../src/sys/mount.js';
import { MID_TREE_CRASH } from '../src/sys/remove.js';
import { openLayerStore } from './helpers/store.js';
import { simpleTar } from './helpers/tar-block.js';
import { CLI, cleanupDir, requireRoot, startTestServer, tempDir } from './helpers/server.js';

/** A layer tar of `files` files under sub/ (and the directory itself). */
function layerTar(files: number, tag = ''): Buffer {
  return simpleTar([{ path: 'sub/', type: 'dir' }, ...Array.from({ length: files }, (_, i) => ({ path: `sub/f${i}`, type: 'file' as const, body: Buffer.from(`file ${i} ${tag}`) }))]);
}

/** A directory outside the data root with a file in it: what a bind mount exposes. */
function precious(dir: string): { src: string; file: string } {
  const src = path.join(dir, 'precious');
  fs.mkdirSync(src);
  const file = path.join(src, 'keep-me');
  fs.writeFileSync(file, 'data that must survive');
  return { src, file };
}

/** The rm-* stages in layers/tmp/. */
const rmStages = (layersDir: string): string[] => fs.readdirSync(layersLayout(layersDir).tmpDir).filter((e) => e.startsWith('rm-'));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

test('container rm never crosses a bind mount left inside its upper directory: the data under it survives', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-layer-rm-');
  try {
    const root = path.join(dir, 'data', 'layers');
    const layers = openLayerStore(root);
    const containers = createContainerStore(root, layers, 'overlay');
    const base = await layers.importLayer(Readable.from([layerTar(3)]));
    const merged = await containers.create('web', base.id);
    fs.writeFileSync(path.join(merged, 'written'), 'by the container');
    const { src, file } = precious(dir);
    const upper = layersLayout(root).containerDirs('web').upper;
    fs.mkdirSync(path.join(upper, 'mnt'));
    bindMount(src, path.join(upper, 'mnt'));

    const err = await t.throwsAsync(containers.remove('web'));
    t.regex(err.message, /container layer "web" removed, but mounts inside were left: .*\/tmp\/rm-[^/]+\/upper\/mnt/);
    t.is(fs.readFileSync(file, 'utf8'), 'data that must survive');
    t.false(fs.existsSync(layersLayout(root).containerDirs('web').base), 'the name is free');
    t.deepEqual(containers.list(), []);
    // Everything else of the container went; what holds the mount stays in tmp/ until it is unmounted.
    const [stage] = rmStages(root);
    t.deepEqual(fs.readdirSync(path.join(layersLayout(root).tmpDir, stage!)), ['upper']);
    t.deepEqual(fs.readdirSync(path.join(layersLayout(root).tmpDir, stage!, 'upper')), ['mnt']);
  } finally {
    cleanupDir(dir);
  }
});

test('layer rm and layer gc never cross a bind mount left inside a layer directory: the data under it survives', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-layer-rm-');
  try {
    const root = path.join(dir, 'data', 'layers');
    const layers = openLayerStore(root);
    const { src, file } = precious(dir);
    // layer rm.
    const a = await layers.importLayer(Readable.from([layerTar(3, 'a')]));
    bindMount(src, path.join(layers.diffDir(a), 'sub'));
    const err = await t.throwsAsync(layers.remove(a.id));
    t.regex(err.message, /deleted, but mounts inside its directory were left: .*\/tmp\/rm-[^/]+\/sub/);
    t.is(fs.readFileSync(file, 'utf8'), 'data that must survive');
    t.false(fs.existsSync(layers.diffDir(a)), 'no diff directory under the layer\'s name');
    t.deepEqual(layers.list(), []);
    // gc of an orphan diff (a published diff whose record was never committed, as a crash leaves it).
    const b = await layers.importLayer(Readable.from([layerTar(3, 'b')]));
    const orphan = layersLayout(root).diffDir('0'.repeat(64));
    fs.renameSync(layers.diffDir(b), orphan);
    await layers.remove(b.id);
    bindMount(src, path.join(orphan, 'sub'));
    const gcErr = await t.throwsAsync(layers.gc());
    t.regex(gcErr.message, /left mounts it found inside them: .*\/tmp\/rm-[^/]+\/sub/);
    t.is(fs.readFileSync(file, 'utf8'), 'data that must survive');
    t.false(fs.existsSync(orphan));
  } finally {
    cleanupDir(dir);
  }
});

for (const point of [STAGED_CRASH, MID_TREE_CRASH]) {
  test(`kill -9 at ${point} during layer rm and container rm leaves no half-made layer or container; start-up deletes the rest`, async (t) => {
    if (!requireRoot(t)) return;
    const dir = tempDir('tsvol-layer-rm-crash-');
    try {
      const data = path.join(dir, 'data');
      const root = path.join(data, 'layers');
      const env = { ...process.env, TSVOL_DATA: data, TSVOL_LAYER_DRIVER: 'overlay' };
      const tsvol = (args: string[], crash?: string): { status: number | null; signal: NodeJS.Signals | null; out: string } => {
        const r = spawnSync(process.execPath, [CLI, ...args], { env: crash === undefined ? env : { ...env, TSVOL_CRASH_AT: crash }, encoding: 'utf8' });
        return { status: r.status, signal: r.signal, out: r.stdout.trim() };
      };
      // 2,000 files: the mid-tree point is reached after 100 of them.
      fs.mkdirSync(data, { recursive: true });
      fs.writeFileSync(path.join(dir, 'layer.tar'), layerTar(2000));
      const id = tsvol(['layer', 'import', path.join(dir, 'layer.tar')]).out;
      t.regex(id, /^sha256:/);
      const diffDir = layersLayout(root).diffDir(id.slice(7));
      t.true(fs.existsSync(diffDir));

      const killed = tsvol(['layer', 'rm', id], point);
      t.is(killed.signal, 'SIGKILL', `the layer rm died at ${point}`);
      t.is(tsvol(['layer', 'ls', '--json']).out, '[]', 'the layer is gone from the records');
      t.false(fs.existsSync(diffDir), 'no half-deleted diff under its name');
      // The directory goes into tmp/ first, then its split file: a kill between leaves the split file for
      // start-up to delete (the next test).
      t.is(fs.existsSync(`${diffDir}.split`), point === STAGED_CRASH);
      t.is(rmStages(root).length, 1, 'what was left is one stage in layers/tmp/');

      // A container on a fresh layer, with 2,000 files of its own, killed while it is removed.
      const base = tsvol(['layer', 'import', path.join(dir, 'layer.tar')]).out;
      const merged = tsvol(['container', 'create', 'web', '--from', base]).out;
      for (let i = 0; i < 2000; i++) fs.writeFileSync(path.join(merged, `own-${i}`), `${i}`);
      t.is(tsvol(['container', 'rm', 'web'], point).signal, 'SIGKILL', `the container rm died at ${point}`);
      t.false(fs.existsSync(layersLayout(root).containerDirs('web').base), 'no half-deleted container under its name');
      t.is(rmStages(root).length, 2);
      // The name is free: a new container of that name starts empty.
      const again = tsvol(['container', 'create', 'web', '--from', base]).out;
      t.deepEqual(fs.readdirSync(again).sort(), ['sub']);
      t.is(tsvol(['container', 'rm', 'web']).status, 0);

      // Start-up deletes what the killed removals left.
      const s = await startTestServer({ dir });
      try {
        t.true(await until(() => rmStages(root).length === 0, 60_000), 'start-up deleted the leftovers');
        t.is(tsvol(['layer', 'rm', base]).status, 0);
        t.is(tsvol(['layer', 'gc']).status, 0);
        t.deepEqual(fs.readdirSync(layersLayout(root).diffsDir), [], 'and gc anything else');
      } finally {
        await s.stop();
      }
    } finally {
      cleanupDir(dir);
    }
  });
}

test(`kill -9 at ${STAGED_CRASH} during layer rm leaves the diff's split file and short link; the next start-up deletes them, before any gc`, async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-layer-rm-crash-');
  try {
    const data = path.join(dir, 'data');
    const root = path.join(data, 'layers');
    const env = { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: path.join(dir, 'tsvol.sock'), TSVOL_LAYER_DRIVER: 'overlay' };
    const tsvol = (args: string[], crash?: string): { status: number | null; signal: NodeJS.Signals | null; out: string } => {
      const r = spawnSync(process.execPath, [CLI, ...args], { env: crash === undefined ? env : { ...env, TSVOL_CRASH_AT: crash }, encoding: 'utf8' });
      return { status: r.status, signal: r.signal, out: r.stdout.trim() };
    };
    fs.mkdirSync(data, { recursive: true });
    fs.writeFileSync(path.join(dir, 'layer.tar'), layerTar(3));
    const id = tsvol(['layer', 'import', path.join(dir, 'layer.tar')]).out;
    const hex = id.slice('sha256:'.length);
    const lay = layersLayout(root);
    // Mounted once (a container on it), so that the diff has a short link too.
    t.is(tsvol(['container', 'create', 'web', '--from', id]).status, 0);
    t.is(tsvol(['container', 'rm', 'web']).status, 0);
    const link = fs.readFileSync(lay.linkFile(hex), 'utf8').trim();
    t.true(fs.existsSync(lay.shortLink(link)));

    t.is(tsvol(['layer', 'rm', id], STAGED_CRASH).signal, 'SIGKILL');
    const leftovers = (): string[] => [lay.splitFile(hex), lay.linkFile(hex), lay.shortLink(link)].filter((f) => fs.existsSync(f) || fs.lstatSync(f, { throwIfNoEntry: false }) !== undefined);
    t.deepEqual(leftovers().length, 3, 'the kill left the split file, the link file and the short link');
    const s = await startTestServer({ dir, env: { TSVOL_LAYER_DRIVER: 'overlay' } });
    try {
      t.true(await until(() => leftovers().length === 0, 10_000), `start-up deleted them: ${leftovers().join(', ')}`);
      t.true(await until(() => rmStages(root).length === 0, 10_000), 'and the stage the kill left');
      t.deepEqual(fs.readdirSync(lay.diffsDir), []);
    } finally {
      await s.stop();
    }
  } finally {
    cleanupDir(dir);
  }
});

test('the overlay probe deletes its scratch directory without following a symlink or crossing a mount planted in it', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-probe-');
  try {
    const data = path.join(dir, 'data');
    const layersDir = path.join(data, 'layers');
    const { src, file } = precious(dir);
    // `tsvol info` probes overlayfs under layers/, and waits before deleting its scratch directory.
    const child = spawn(process.execPath, [CLI, 'info', '--json'], {
      env: { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: path.join(dir, 'no-server.sock'), TSVOL_PAUSE_AT: `${PROBE_CLEANUP_PAUSE}=3000` },
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const scratchOf = (): string | undefined => (fs.existsSync(layersDir) ? fs.readdirSync(layersDir).find((e) => e.startsWith('.probe-')) : undefined);
    t.true(await until(() => scratchOf() !== undefined, 10_000), 'the probe made its scratch directory');
    const scratch = path.join(layersDir, scratchOf()!);
    // Planted while the probe waits: a symlink and a bind mount, both to data outside.
    fs.symlinkSync(src, path.join(scratch, 'link'));
    fs.mkdirSync(path.join(scratch, 'mnt'));
    bindMount(src, path.join(scratch, 'mnt'));
    const code = await exited;
    t.true(fs.existsSync(file) && fs.readFileSync(file, 'utf8') === 'data that must survive', 'nothing was deleted through the symlink or the mount');
    t.is(code, 0);
    const info = JSON.parse(out) as { why: string };
    t.regex(info.why, /mounts inside its scratch directory were left in place: .*\/\.probe-[^/]+\/mnt; unmount them/);
    t.deepEqual(fs.readdirSync(scratch), ['mnt'], 'everything else went, the symlink as a symlink');
  } finally {
    cleanupDir(dir);
  }
});
