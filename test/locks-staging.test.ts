/**
 * Locks and stages held by the kernel (#9 §7, §8, §10c):
 * - the data root's lock, which serializes layer mutations across processes now that one process writes
 *   the metadata at a time (0.1's `layers/store` flock is gone, #10), stays held while its holder's event
 *   loop is blocked for seconds in a layer operation (a slow syncfs), and is free the instant its holder
 *   is killed;
 * - a stage in tmp/ that a live process owns survives a server start, and is swept once its owner is dead;
 *   a `tsvol volume import` straddling a server start completes;
 * - a temp file torn by a crash in 0.1's tags/ or holds/ never counts as a layer tag or hold, and goes.
 * Child processes use the built modules (dist/), like the CLI.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import { openLayerStore } from './helpers/store.js';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { acquireLock } from '../src/sys/lock.js';
import { CLI, ROOT, cleanupDir, post, startTestServer, tempDir, type TestServer } from './helpers/server.js';

const dist = (m: string): string => pathToFileURL(path.join(ROOT, 'dist', m)).href;

/** Runs an ES module given as text in a child node, with `args` as process.argv[1..]. */
function child(code: string, args: string[], env: Record<string, string> = {}): { proc: ChildProcess; exited: Promise<number | null>; stderr: () => string } {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', code, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr?.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  return { proc, exited, stderr: () => err };
}

/** Waits until `cond` holds (polling), failing after `ms`. */
async function until(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function tsvol(data: string, args: string[], input?: Buffer): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, TSVOL_DATA: data }, input, maxBuffer: 1 << 28 });
  return { code: r.status, out: r.stdout.toString().trim(), err: r.stderr.toString() };
}

function entry(h: Partial<TarHeader> & { path: string }, body = Buffer.alloc(0)): Buffer {
  const header: TarHeader = {
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map(), ...h,
  };
  return Buffer.concat([encodeHeader(header), body, Buffer.alloc(padding(body.length))]);
}
const END = Buffer.alloc(1024);

/**
 * A child that takes the data root's lock as a `tsvol` command working alone does, enters a layer
 * mutation (adoptTree runs `prepare` in it), writes `entered`, blocks its event loop synchronously for
 * `blockMs` (as a syncfs on a slow disk does; -1: forever), writes `leaving`, and exits after releasing.
 */
const HOLDER = `
import fs from 'node:fs';
import path from 'node:path';
import { createLayerStore } from ${JSON.stringify(dist('layers/layer-store.js'))};
import { createLayout } from ${JSON.stringify(dist('store/layout.js'))};
import { openMetaStore } from ${JSON.stringify(dist('store/open.js'))};
import { acquireLock } from ${JSON.stringify(dist('sys/lock.js'))};
const [root, marks, blockMs] = process.argv.slice(1);
fs.mkdirSync(root, { recursive: true });
const release = await acquireLock(path.join(path.dirname(root), 'server.lock'), 'tsvol layer operation', 0);
const store = createLayerStore(root, openMetaStore(createLayout(path.dirname(root))).store);
await store.adoptTree(undefined, {
  prepare() {
    fs.writeFileSync(marks + '/entered', String(Date.now()));
    const end = Number(blockMs) < 0 ? Infinity : Date.now() + Number(blockMs);
    while (Date.now() < end);
    fs.writeFileSync(marks + '/leaving', String(Date.now()));
    return undefined;
  },
  beforePublish() {},
  afterPublish() {},
});
await release();
`;

test('§8: the data root lock stays held while its holder blocks its event loop for 3.5 s in a layer operation; nobody enters before it releases', async (t) => {
  const dir = tempDir('tsvol-lock-');
  try {
    const root = path.join(dir, 'data', 'layers');
    const lock = path.join(dir, 'data', 'server.lock');
    const holder = child(HOLDER, [root, dir, '3500']);
    await until('the holder to take the lock', () => fs.existsSync(path.join(dir, 'entered')));
    // A second process (this one) wants to change layers meanwhile: it waits for the lock (up to 30 s).
    const release = await acquireLock(lock, 'test', 30_000);
    try {
      await openLayerStore(root).gc();
    } finally {
      await release();
    }
    const gcDone = Date.now();
    t.is(await holder.exited, 0, holder.stderr());
    const leaving = Number(fs.readFileSync(path.join(dir, 'leaving'), 'utf8'));
    t.true(gcDone >= leaving, `gc ran ${leaving - gcDone} ms before the holder left its critical section`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('§8: kill -9 of the lock holder frees the lock at once; while it lives, the error names it', async (t) => {
  const dir = tempDir('tsvol-lock-');
  try {
    const root = path.join(dir, 'data', 'layers');
    const lock = path.join(dir, 'data', 'server.lock');
    const holder = child(HOLDER, [root, dir, '-1']);
    await until('the holder to take the lock', () => fs.existsSync(path.join(dir, 'entered')));
    const err = await t.throwsAsync(acquireLock(lock, 'test', 0));
    t.regex(err?.message ?? '', new RegExp(`is locked by another tsvol layer operation \\(pid ${holder.proc.pid}\\)`));
    holder.proc.kill('SIGKILL');
    await holder.exited;
    // No wait: the kernel dropped the lock with the process.
    const release = await acquireLock(lock, 'test', 0);
    try {
      t.deepEqual(await openLayerStore(root).gc(), { removed: [] });
    } finally {
      await release();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('§8: leftovers of the old lock (server.lock/, server.lock.lock/, layers/store/, layers/store.lock/) break nothing', async (t) => {
  const dir = tempDir('tsvol-lock-');
  let s: TestServer | undefined;
  try {
    const data = path.join(dir, 'data');
    for (const d of ['server.lock', 'server.lock.lock', 'layers/store', 'layers/store.lock']) fs.mkdirSync(path.join(data, d), { recursive: true });
    s = await startTestServer({ dir, mounts: false });
    t.true(fs.statSync(path.join(data, 'server.lock')).isFile(), 'the empty directory was replaced by the lock file');
    t.regex(fs.readFileSync(path.join(data, 'server.lock'), 'utf8'), new RegExp(`^${s.proc.pid} tsvol server\n$`));
    const imp = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'a' }, Buffer.from('a')), END]));
    t.is(imp.code, 0, imp.err);
    // 0.1's layer lock is gone: the migration at the server's first start deleted its leftovers.
    t.false(fs.existsSync(path.join(data, 'layers', 'store')));
    t.false(fs.existsSync(path.join(data, 'layers', 'store.lock')));
  } finally {
    await s?.kill();
    cleanupDir(dir);
  }
});

/**
 * A child that makes a stage in `tmpDir` (and, with `volumesDir`, a second one renamed into
 * volumes/pending, like an import between its rename and its commit), writes a file in each, reports the
 * stage's path in `marks/stage`, and then lives until killed.
 */
const STAGER = `
import fs from 'node:fs';
import path from 'node:path';
import { createStage } from ${JSON.stringify(dist('sys/staging.js'))};
const [tmpDir, marks, volumesDir] = process.argv.slice(1);
const stage = await createStage(tmpDir, 'new', 0o701);
fs.writeFileSync(path.join(stage.dir, 'work'), 'in progress');
if (volumesDir) {
  const pending = await createStage(tmpDir, 'new', 0o701);
  fs.mkdirSync(path.join(pending.dir, '_data'));
  fs.writeFileSync(path.join(pending.dir, '_data', 'f'), 'imported');
  pending.rename(path.join(volumesDir, 'pending'));
}
fs.writeFileSync(path.join(marks, 'stage'), stage.dir);
setInterval(() => {}, 1 << 30);
`;

test('§7: a stage owned by a live process survives a server start (in tmp/ and renamed into volumes/); its debris goes once the owner is dead', async (t) => {
  const dir = tempDir('tsvol-stage-');
  let s: TestServer | undefined;
  let owner: ReturnType<typeof child> | undefined;
  try {
    const data = path.join(dir, 'data');
    const tmp = path.join(data, 'tmp');
    const volumes = path.join(data, 'volumes');
    fs.mkdirSync(tmp, { recursive: true });
    fs.mkdirSync(volumes, { recursive: true });
    // Debris of dead processes: a half-built stage, a stray file, and a record-less volume directory.
    fs.mkdirSync(path.join(tmp, 'new-dead', '_data'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'new-dead', '_data', 'f'), 'x');
    fs.writeFileSync(path.join(tmp, 'stray'), 'x');
    fs.mkdirSync(path.join(volumes, 'ghost', '_data'), { recursive: true });
    owner = child(STAGER, [tmp, dir, volumes]);
    await until('the owner to make its stages', () => fs.existsSync(path.join(dir, 'stage')));
    const live = fs.readFileSync(path.join(dir, 'stage'), 'utf8');

    s = await startTestServer({ dir, mounts: false });
    await until('start-up to delete the dead debris', () => !fs.existsSync(path.join(tmp, 'new-dead')) && !fs.existsSync(path.join(tmp, 'stray')));
    await until('start-up to delete the record-less volume', () => !fs.existsSync(path.join(volumes, 'ghost')));
    t.is(fs.readFileSync(path.join(live, 'work'), 'utf8'), 'in progress', 'the live stage in tmp/ is untouched');
    t.is(fs.readFileSync(path.join(volumes, 'pending', '_data', 'f'), 'utf8'), 'imported', 'the live renamed stage is untouched');
    t.regex(s.output(), /"liveStages":1/);
    t.regex(s.output(), /volume directory is locked by a live process/);
    await s.kill();

    owner.proc.kill('SIGKILL');
    await owner.exited;
    s = await startTestServer({ dir, mounts: false });
    await until('the next start-up to delete the dead owner\'s stages', () => !fs.existsSync(live) && !fs.existsSync(path.join(volumes, 'pending')));
    t.deepEqual(fs.readdirSync(volumes), []);
    await until('tmp/ to be empty', () => fs.readdirSync(tmp).length === 0);
  } finally {
    if (owner?.proc.exitCode === null && owner.proc.signalCode === null) owner.proc.kill('SIGKILL');
    await s?.kill();
    cleanupDir(dir);
  }
});

test('§7: layer gc leaves a live process\'s stage in layers/tmp (a copy-driver commit) and sweeps it once the owner is dead', async (t) => {
  const dir = tempDir('tsvol-stage-');
  let owner: ReturnType<typeof child> | undefined;
  try {
    const data = path.join(dir, 'data');
    const tmp = path.join(data, 'layers', 'tmp');
    t.is(tsvol(data, ['layer', 'ls']).code, 0); // makes the store
    owner = child(STAGER, [tmp, dir]);
    await until('the owner to make its stage', () => fs.existsSync(path.join(dir, 'stage')));
    const live = fs.readFileSync(path.join(dir, 'stage'), 'utf8');
    const gc = tsvol(data, ['layer', 'gc', '--json']);
    t.is(gc.code, 0, gc.err);
    t.deepEqual(JSON.parse(gc.out), []);
    t.is(fs.readFileSync(path.join(live, 'work'), 'utf8'), 'in progress');
    owner.proc.kill('SIGKILL');
    await owner.exited;
    const gc2 = tsvol(data, ['layer', 'gc', '--json']);
    t.deepEqual(JSON.parse(gc2.out), [`tmp/${path.basename(live)}`]);
    t.deepEqual(fs.readdirSync(tmp), []);
  } finally {
    if (owner?.proc.exitCode === null && owner.proc.signalCode === null) owner.proc.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('§7: a `tsvol volume import` of a 48 MB tar straddling a server start completes, and the volume is whole', async (t) => {
  const dir = tempDir('tsvol-stage-');
  let s: TestServer | undefined;
  try {
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    const FILES = 3000;
    for (let i = 0; i < FILES; i++) fs.writeFileSync(path.join(src, `f${i}`), Buffer.alloc(16 << 10, i % 251));
    const tar = spawnSync('tar', ['-C', src, '-c', '.'], { maxBuffer: 1 << 28 });
    t.is(tar.status, 0, tar.stderr?.toString());
    const data = path.join(dir, 'data');
    const socket = path.join(dir, 'tsvol.sock');
    const imp = spawn(process.execPath, [CLI, 'volume', 'import', 'big', '-'], {
      env: { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: socket },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let impErr = '';
    imp.stderr.on('data', (c: Buffer) => (impErr += c.toString()));
    imp.stdin.on('error', () => undefined); // EPIPE if the import dies: its exit code reports it
    const impExit = new Promise<number | null>((resolve) => imp.once('exit', (c) => resolve(c)));
    // Half the archive, then a server start while the import is paused in mid-unpack, then the rest.
    const half = Math.floor(tar.stdout.length / 2);
    imp.stdin.write(tar.stdout.subarray(0, half));
    const staged = (): string[] => (fs.existsSync(path.join(data, 'tmp')) ? fs.readdirSync(path.join(data, 'tmp')) : []);
    const unpacked = (e: string): number => (fs.existsSync(path.join(data, 'tmp', e, '_data')) ? fs.readdirSync(path.join(data, 'tmp', e, '_data')).length : 0);
    await until('the import to unpack into its stage', () => staged().some((e) => unpacked(e) >= 100));
    // The CLI found no server, so it holds the server lock for its whole command (#9 §6): a server started
    // now waits for it instead of sweeping the import's stage, and starts once the import is done.
    const starting = startTestServer({ dir, mounts: false, startMs: 120_000 });
    starting.catch(() => undefined); // awaited below
    await new Promise((r) => setTimeout(r, 1500));
    t.true(staged().some((e) => unpacked(e) >= 100), 'the stage is still there while the server waits');
    imp.stdin.end(tar.stdout.subarray(half));
    t.is(await impExit, 0, impErr);
    s = await starting;
    t.regex(s.output(), /waiting for another process holding the data root/);
    const got = await post(s.socket, '/VolumeDriver.Get', { Name: 'big' });
    t.is(got.json.Err, '', got.raw);
    const files = fs.readdirSync(path.join(data, 'volumes', 'big', '_data'));
    t.is(files.length, FILES);
    for (const i of [0, 100, 1500, FILES - 1]) t.true(fs.readFileSync(path.join(data, 'volumes', 'big', '_data', `f${i}`)).equals(Buffer.alloc(16 << 10, i % 251)));
  } finally {
    await s?.kill();
    cleanupDir(dir);
  }
});

test('§10c: temp files torn by a crash in 0.1\'s tags/ and holds/ count as no tag and no hold, and are deleted', async (t) => {
  const dir = tempDir('tsvol-temp-');
  try {
    const data = path.join(dir, 'data');
    const layers = path.join(data, 'layers');
    const a = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'a' }, Buffer.from('a')), END])).out;
    const b = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'b' }, Buffer.from('b')), END])).out;
    const plant = (id: string, n: string): string[] => {
      const hex = id.slice(7);
      fs.mkdirSync(path.join(layers, 'holds', hex), { recursive: true });
      fs.mkdirSync(path.join(layers, 'tags'), { recursive: true });
      // writeFileDurable's temp names: `.<name>.tmp-<hex>`, left by a kill -9 of 0.1 between its write and rename.
      fs.writeFileSync(path.join(layers, 'tags', `.${n}.tmp-0123456789ab`), id);
      fs.writeFileSync(path.join(layers, 'holds', hex, `.volume%20%22${n}%22.tmp-0123456789ab`), `volume "${n}"`);
      return [`tags/.${n}.tmp-0123456789ab`, `holds/${hex}/.volume%20%22${n}%22.tmp-0123456789ab`];
    };
    const tempsA = plant(a, 'x');
    const rm = tsvol(data, ['layer', 'rm', a]);
    t.is(rm.code, 0, rm.err);
    const tempsB = plant(b, 'y');
    const gc = tsvol(data, ['layer', 'gc', '--json']);
    t.is(gc.code, 0, gc.err);
    t.true((JSON.parse(gc.out) as string[]).includes(b), 'the layer nothing holds is removed');
    for (const f of [...tempsA, ...tempsB]) t.false(fs.existsSync(path.join(layers, f)), `${f} is removed`);
    t.false(fs.existsSync(path.join(layers, 'tags')));
    t.false(fs.existsSync(path.join(layers, 'holds')));
    t.deepEqual(JSON.parse(tsvol(data, ['layer', 'ls', '--json']).out), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('§10c: a holder whose name starts with a dot (or is . or ..) is a real hold, never taken for a temp file', async (t) => {
  const dir = tempDir('tsvol-temp-');
  try {
    const data = path.join(dir, 'data');
    const id = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'a' }, Buffer.from('a')), END])).out;
    const store = openLayerStore(path.join(data, 'layers'));
    for (const h of ['.hidden', '.', '..']) await store.holdLayer(id, h);
    t.deepEqual(
      store.listHolds().map((h) => h.holder).sort(),
      ['.', '..', '.hidden'],
    );
    const rm = tsvol(data, ['layer', 'rm', id]);
    t.is(rm.code, 1);
    t.regex(rm.err, /is held by \., \.\., \.hidden;/);
    t.deepEqual(JSON.parse(tsvol(data, ['layer', 'gc', '--json']).out), []);
    for (const h of ['.hidden', '.', '..']) await store.releaseLayer(id, h);
    t.deepEqual(store.listHolds(), []);
    t.is(tsvol(data, ['layer', 'rm', id]).code, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
