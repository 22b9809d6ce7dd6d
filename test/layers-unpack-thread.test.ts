/**
 * A layer's unpack runs on a worker thread (#11, src/layers/unpack-thread.ts): the store's thread stays free
 * for other requests while a layer unpacks (its CPU is a small part of the import's), a refused tar keeps
 * its error's kind and words across the thread, and when the source is cut mid-layer or the worker dies,
 * the import fails cleanly: its stage is deleted once the worker has stopped, and no worker stays busy.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import test from 'ava';
import { InternalError, InvalidArgumentError } from '../src/errors.js';
import { unpackIntoStage } from '../src/layers/stage-unpack.js';
import { WORKER_CRASH_POINT } from '../src/layers/unpack-protocol.js';
import { unpackThreads } from '../src/layers/unpack-thread.js';
import { ingestLayer } from '../src/images/ingest.js';
import { threadCpuSeconds } from '../bench/proc.js';
import { openLayerStore } from './helpers/store.js';
import { cleanupDir, requireRoot, tempDir } from './helpers/server.js';
import { simpleTar } from './helpers/tar-block.js';

/** A layer tar of `files` files of `size` bytes under `dir/` (content varies: nothing dedupes). */
function layerTar(dir: string, files: number, size: number): Buffer {
  const body = Buffer.alloc(size, 0x61);
  return simpleTar(
    Array.from({ length: files }, (_, i) => {
      const b = Buffer.from(body);
      b.writeUInt32LE(i, 0);
      return { path: `${dir}/f${i}`, type: 'file' as const, body: b };
    }),
  );
}

/** `bytes` in 64 KiB chunks (a request body's), then `fail` thrown if given. */
async function* chunks(bytes: Buffer, fail?: Error): AsyncGenerator<Buffer> {
  for (let off = 0; off < bytes.length; off += 64 << 10) {
    await new Promise<void>((r) => setImmediate(r)); // as a socket hands them out: a turn of the event loop each
    yield bytes.subarray(off, off + (64 << 10));
  }
  if (fail !== undefined) throw fail;
}

/** A scratch directory of the test, deleted when it ends. */
function scratch(t: { teardown(fn: () => void): void }): string {
  const dir = tempDir();
  t.teardown(() => cleanupDir(dir));
  return dir;
}

/** The layer store's stages (layers/tmp/import-*) left on disk. */
const stagesIn = (root: string): string[] => fs.readdirSync(path.join(root, 'tmp')).filter((e) => e.startsWith('import-'));

/** CPU seconds the main thread of this process has used. */
const mainCpu = (): number => threadCpuSeconds(process.pid).get('main')!;

test.serial('the store thread stays free while a layer unpacks: its CPU is a small part of the import, done on an unpack worker', async (t) => {
  if (!requireRoot(t)) return;
  const root = path.join(scratch(t), 'layers');
  const store = openLayerStore(root);
  await store.importLayer(chunks(layerTar('warm', 10, 100))); // the worker's start (tsx in tests) is not what is measured
  const tar = layerTar('big', 3000, 8192); // ~26 MB, 3,000 files
  const cpu0 = process.cpuUsage();
  const main0 = mainCpu();
  const layer = await store.importLayer(chunks(tar));
  const used = process.cpuUsage(cpu0);
  const total = (used.user + used.system) / 1e6;
  const main = mainCpu() - main0;
  t.is(layer.files, 3000);
  t.log(`import: ${total.toFixed(2)} s CPU in all, ${main.toFixed(2)} s of it on the main thread`);
  // Unpacked on the main thread, nearly all of it was there (creating 3,000 files and their metadata).
  t.true(main < total * 0.35, `main thread ${main.toFixed(2)} s of ${total.toFixed(2)} s`);
  t.true(unpackThreads().spawned >= 1);
  t.is(unpackThreads().busy, 0);
});

test.serial('a hostile tar refused on the worker keeps the error kind and words of an unpack on the calling thread', async (t) => {
  if (!requireRoot(t)) return;
  const dir = scratch(t);
  const root = path.join(dir, 'layers');
  const store = openLayerStore(root);
  const evil = simpleTar([
    { path: 'a/', type: 'dir' },
    { path: 'a/f', type: 'file', body: Buffer.from('data') },
    { path: '../../etc/evil', type: 'file', body: Buffer.from('x') },
  ]);
  for (const bytes of [evil, zlib.gzipSync(evil), Buffer.from('not a tar at all, not even gzip'.repeat(40))]) {
    // The same bytes unpacked on this thread, into a stage of the test's own.
    const here = path.join(dir, `here-${Math.random()}`);
    fs.mkdirSync(path.join(here, 'diff'), { recursive: true });
    const local = await unpackIntoStage({ dir: here, diff: path.join(here, 'diff'), split: path.join(here, 'split') }, chunks(bytes)).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    const remote = await store.stageLayer(chunks(bytes)).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    t.true(local instanceof InvalidArgumentError, String(local));
    t.true(remote instanceof InvalidArgumentError, `${remote?.name}: ${remote?.message}`);
    t.is(remote?.message, local?.message);
    t.regex(remote?.message ?? '', /^layer tar refused: /);
    t.deepEqual(stagesIn(root), []);
  }
  t.is(unpackThreads().busy, 0);
});

test.serial('a source cut mid-layer fails the import with its error; the stage is gone once it fails, and no worker is left busy', async (t) => {
  if (!requireRoot(t)) return;
  const root = path.join(scratch(t), 'layers');
  const store = openLayerStore(root);
  const tar = layerTar('cut', 600, 8192); // ~5 MB: several batches reach the worker before the cut
  for (const bytes of [tar, zlib.gzipSync(tar, { level: 1 })]) {
    const half = bytes.subarray(0, bytes.length >> 1);
    const err = await t.throwsAsync(store.stageLayer(chunks(half, new Error('connection reset by the test'))));
    t.true(err instanceof InvalidArgumentError, err?.name);
    t.is(err?.message, 'layer tar refused: connection reset by the test');
    // At once, not eventually: the worker stopped and answered before the stage was removed.
    t.deepEqual(stagesIn(root), []);
    t.is(unpackThreads().busy, 0);
  }
  // The store goes on: the next import of the whole tar works.
  const layer = await store.importLayer(chunks(tar));
  t.is(layer.files, 600);
});

test.serial('an unpack worker that dies mid-layer fails that import with an InternalError and deletes its stage; the next import works', async (t) => {
  if (!requireRoot(t)) return;
  const root = path.join(scratch(t), 'layers');
  const store = openLayerStore(root);
  const tar = layerTar('crash', 600, 8192);
  const spawned = unpackThreads().spawned;
  process.env.TSVOL_CRASH_AT = WORKER_CRASH_POINT; // read by the worker for its next job only (it is per job)
  let err: Error | undefined;
  try {
    err = await t.throwsAsync(store.stageLayer(chunks(tar)));
  } finally {
    delete process.env.TSVOL_CRASH_AT;
  }
  t.true(err instanceof InternalError, err?.name);
  t.regex(err?.message ?? '', /unpack worker died/);
  t.deepEqual(stagesIn(root), []);
  t.is(unpackThreads().busy, 0);
  const layer = await store.importLayer(chunks(tar));
  t.is(layer.files, 600);
  t.log(`workers started: ${unpackThreads().spawned - spawned} (the dead one is replaced)`);
});

test.serial('a kept gzip blob unpacks from its file on the worker: a cut source removes the stage and the kept file, a hostile one keeps its words', async (t) => {
  if (!requireRoot(t)) return;
  const dir = scratch(t);
  const root = path.join(dir, 'layers');
  const store = openLayerStore(root);
  const tar = layerTar('kept', 600, 8192);
  const gz = zlib.gzipSync(tar, { level: 1 });
  // Whole: the blob is kept byte for byte, and the layer unpacks from that file.
  const whole = await ingestLayer(chunks(gz), store, { unpack: true, keep: path.join(dir, 'whole') });
  t.is(whole.error, undefined);
  t.is(whole.staged?.files, 600);
  t.deepEqual(fs.readFileSync(path.join(dir, 'whole')), gz);
  await whole.staged?.discard();
  // Cut mid-blob: the source's own error, and nothing left (the worker stopped before the stage went).
  const cut = await t.throwsAsync(ingestLayer(chunks(gz.subarray(0, gz.length >> 1), new Error('connection reset by the test')), store, { unpack: true, keep: path.join(dir, 'cut') }));
  t.is(cut?.message, 'connection reset by the test');
  t.false(fs.existsSync(path.join(dir, 'cut')));
  t.deepEqual(stagesIn(root), []);
  t.like(unpackThreads(), { busy: 0, waiting: 0 });
  // Hostile: refused with the words an unpack on this thread gives.
  const evil = zlib.gzipSync(simpleTar([{ path: '../../etc/evil', type: 'file', body: Buffer.from('x') }]));
  const here = path.join(dir, 'here');
  fs.mkdirSync(path.join(here, 'diff'), { recursive: true });
  const local = await unpackIntoStage({ dir: here, diff: path.join(here, 'diff'), split: path.join(here, 'split') }, chunks(evil)).then(
    () => undefined,
    (err: unknown) => err as Error,
  );
  const refused = await ingestLayer(chunks(evil), store, { unpack: true, keep: path.join(dir, 'evil') });
  t.true(refused.error instanceof InvalidArgumentError);
  t.is(refused.error?.message, local?.message);
  t.is(refused.staged, undefined);
  t.deepEqual(stagesIn(root), []);
  t.like(unpackThreads(), { busy: 0, waiting: 0 });
});

test.serial('imports at once take turns: one unpack worker per core runs, the others wait (their sources unread), and all finish', async (t) => {
  if (!requireRoot(t)) return;
  const root = path.join(scratch(t), 'layers');
  const store = openLayerStore(root);
  const cores = os.availableParallelism();
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const reads: number[] = [];
  async function* held(i: number, tar: Buffer): AsyncGenerator<Buffer> {
    reads[i] = 0;
    for (let off = 0; off < tar.length; off += 64 << 10) {
      if (off > 0) await gate; // the first chunk reaches the worker; the rest waits for the test
      reads[i]++;
      yield tar.subarray(off, off + (64 << 10));
    }
  }
  const imports = Array.from({ length: cores + 1 }, (_, i) => store.importLayer(held(i, layerTar(`turn${i}`, 100, 8192))));
  try {
    for (let i = 0; i < 200 && unpackThreads().busy + unpackThreads().waiting < cores + 1; i++) await new Promise((r) => setTimeout(r, 10));
    t.like(unpackThreads(), { busy: cores, waiting: 1 });
    t.is(imports.filter((_, i) => reads[i] === undefined).length, 1, 'the waiting import has not read its source');
  } finally {
    open(); // whatever was seen, every import goes on to its end
  }
  const layers = await Promise.all(imports);
  t.deepEqual(layers.map((l) => l.files), layers.map(() => 100));
  t.like(unpackThreads(), { busy: 0, waiting: 0 });
});
