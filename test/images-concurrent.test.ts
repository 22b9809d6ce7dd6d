/**
 * Image loads without dockerd (#11): two `tsvol image load`s at once whose images share a new layer both
 * succeed and store it once (the layer store's publish is the one place a layer appears, and it is
 * idempotent); compressed layers of an OCI layout are kept byte-exact in the blob area, held by the
 * image's manifest and freed by `image rm` + gc; a load killed at each named crash point leaves nothing
 * that gc does not reclaim, and loads again.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import test from 'ava';
import { blankHeader, encodeHeader, padding } from '../src/layers/tar/format.js';
import { CLI, cleanupDir, startTestServer, tempDir } from './helpers/server.js';
import { openLayerStore } from './helpers/store.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const entry = (p: string, body: Buffer | string): Buffer => {
  const b = Buffer.from(body);
  return Buffer.concat([encodeHeader(blankHeader(p, 'file', { mode: 0o644, size: b.length })), b, Buffer.alloc(padding(b.length))]);
};
const tarOf = (entries: Buffer[]): Buffer => Buffer.concat([...entries, Buffer.alloc(1024)]);

/** A layer of `files` random files under `dir/`. */
const layerOf = (dir: string, files: number): Buffer => tarOf(Array.from({ length: files }, (_, i) => entry(`${dir}/f${i}`, randomBytes(4096))));

/** A docker-save (20.10 layout) archive of one image `name` over `layers`. */
function dockerArchive(name: string, layers: Buffer[]): Buffer {
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha(l)}`) } });
  const manifest = JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: [name], Layers: layers.map((_, i) => `${i}/layer.tar`) }]);
  // manifest.json last, as Docker 20.10 writes it: the layers stream by before the loader knows them.
  return tarOf([entry(`${sha(config)}.json`, config), ...layers.map((l, i) => entry(`${i}/layer.tar`, l)), entry('manifest.json', manifest)]);
}

/** An OCI layout tar of one image `name` over gzip layers. */
function ociArchive(name: string, layers: Buffer[]): { tar: Buffer; blobs: string[] } {
  const gz = layers.map((l) => zlib.gzipSync(l));
  const config = JSON.stringify({ rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha(l)}`) } });
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
    layers: gz.map((g) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha(g)}`, size: g.length })),
  });
  const index = JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length, annotations: { 'io.containerd.image.name': name } }] });
  const tar = tarOf([
    entry('oci-layout', '{"imageLayoutVersion":"1.0.0"}'),
    ...gz.map((g) => entry(`blobs/sha256/${sha(g)}`, g)),
    entry(`blobs/sha256/${sha(config)}`, config),
    entry(`blobs/sha256/${sha(manifest)}`, manifest),
    entry('index.json', index),
  ]);
  return { tar, blobs: gz.map((g) => sha(g)) };
}

/** Runs the CLI; resolves to its exit status and output. */
function tsvol(data: string, args: string[], input?: Buffer, env: Record<string, string> = {}): Promise<{ status: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, TSVOL_DATA: data, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    p.on('close', (status, signal) => resolve({ status, signal, out }));
    p.stdin.end(input);
  });
}

function json<T>(data: string, args: string[]): T {
  const r = spawnSync(process.execPath, [CLI, ...args, '--json'], { env: { ...process.env, TSVOL_DATA: data }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tsvol ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

const diffsOf = (data: string): string[] => fs.readdirSync(path.join(data, 'layers', 'diffs')).filter((e) => !e.includes('.'));

async function concurrentLoads(t: import('ava').ExecutionContext, data: string, rounds: number): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    // A new shared base each round, two small layers of each image's own.
    const shared = layerOf(`shared${round}`, 300);
    const a = dockerArchive(`race/a:${round}`, [shared, layerOf('a', 2)]);
    const b = dockerArchive(`race/b:${round}`, [shared, layerOf('b', 2)]);
    const [ra, rb] = await Promise.all([tsvol(data, ['image', 'load'], a), tsvol(data, ['image', 'load'], b)]);
    t.is(ra.status, 0, `round ${round}, load a: ${ra.out}`);
    t.is(rb.status, 0, `round ${round}, load b: ${rb.out}`);
    t.is(json<unknown[]>(data, ['layer', 'ls']).length, 3 * (round + 1), `round ${round}: the shared layer is one layer`);
    t.is(diffsOf(data).length, 3 * (round + 1), `round ${round}: its diff is stored once`);
  }
  t.is(json<unknown[]>(data, ['image', 'ls']).length, 2 * rounds);
}

test('the layer store publishes a layer staged twice at once exactly once: both callers get it, one made it', async (t) => {
  const dir = tempDir('tsvol-img-publish-');
  try {
    const store = openLayerStore(path.join(dir, 'data', 'layers'));
    const base = layerOf('base', 50);
    const top = layerOf('top', 50);
    const one = async function* (b: Buffer): AsyncGenerator<Buffer> {
      yield b;
    };
    // Two loads unpack the same layer at once, each into its own stage, then both publish it.
    const [s1, s2] = await Promise.all([store.stageLayer(one(base)), store.stageLayer(one(base))]);
    t.is(s1.diffId, s2.diffId);
    const [p1, p2] = await Promise.all([store.publishLayer(s1), store.publishLayer(s2)]);
    t.is(p1.layer.id, p2.layer.id);
    t.deepEqual([p1.created, p2.created].sort(), [false, true]);
    // On a parent too, and the same diff on another parent is a new layer sharing the stored diff.
    const [s3, s4] = await Promise.all([store.stageLayer(one(top)), store.stageLayer(one(top))]);
    const [p3, p4] = await Promise.all([store.publishLayer(s3, p1.layer.id), store.publishLayer(s4, p1.layer.id)]);
    t.is(p3.layer.id, p4.layer.id);
    t.deepEqual([p3.created, p4.created].sort(), [false, true]);
    const bare = await store.publishLayer(s4);
    t.true(bare.created);
    t.is(bare.layer.diffId, p3.layer.diffId);
    for (const s of [s1, s2, s3, s4]) await s.discard();
    t.is(store.list().length, 3);
    t.is(diffsOf(path.join(dir, 'data')).length, 2, 'one diff per DiffID');
    t.deepEqual(fs.readdirSync(path.join(dir, 'data', 'layers', 'tmp')), [], 'every stage is gone');
    // Its export is the tar, byte for byte.
    const out: Buffer[] = [];
    for await (const c of store.exportLayer(bare.layer.id)) out.push(c);
    t.true(Buffer.concat(out).equals(top));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('two loads at once through the server, sharing a new layer: both succeed, the layer stored once (20 rounds)', async (t) => {
  const server = await startTestServer();
  try {
    await concurrentLoads(t, server.data, 20);
  } finally {
    await server.stop();
    cleanupDir(server.dir);
  }
});

test('two loads at once without a server (each under the server lock): both succeed (5 rounds)', async (t) => {
  const dir = tempDir('tsvol-img-conc-');
  try {
    await concurrentLoads(t, path.join(dir, 'data'), 5);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an OCI layout with gzip layers: the compressed blobs are kept byte-exact, held by the image, freed by image rm + gc', async (t) => {
  const dir = tempDir('tsvol-img-blobs-');
  const data = path.join(dir, 'data');
  try {
    const layers = [layerOf('one', 5), layerOf('two', 5)];
    const { tar, blobs } = ociArchive(`oci/kept:1`, layers);
    const r = await tsvol(data, ['image', 'load'], tar);
    t.is(r.status, 0, r.out);
    const blobDir = path.join(data, 'blobs', 'sha256');
    t.deepEqual(fs.readdirSync(blobDir).sort(), [...blobs].sort());
    for (const b of blobs) t.is(sha(fs.readFileSync(path.join(blobDir, b))), b, 'byte-exact');
    t.deepEqual(json<string[]>(data, ['layer', 'gc']), [], 'held by the image');
    // A second name of the same manifest holds them too.
    t.is((await tsvol(data, ['image', 'tag', 'oci/kept:1', 'oci/kept:2'])).status, 0);
    t.is((await tsvol(data, ['image', 'rm', 'oci/kept:1'])).status, 0);
    t.deepEqual(json<string[]>(data, ['layer', 'gc']), []);
    t.is((await tsvol(data, ['image', 'rm', 'oci/kept:2'])).status, 0);
    const removed = json<string[]>(data, ['layer', 'gc']);
    t.deepEqual(removed.filter((e) => e.startsWith('blobs/')).sort(), blobs.map((b) => `blobs/sha256/${b}`).sort());
    t.deepEqual(fs.readdirSync(blobDir), []);
    t.deepEqual(json<unknown[]>(data, ['layer', 'ls']), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

for (const point of ['layer-publish:after-rename', 'image-store:before-commit']) {
  test(`a load killed at ${point} leaves nothing gc does not reclaim, and loads again`, async (t) => {
    const dir = tempDir('tsvol-img-crash-');
    const data = path.join(dir, 'data');
    try {
      const { tar, blobs } = ociArchive(`oci/crash:1`, [layerOf('one', 5), layerOf('two', 5)]);
      const killed = await tsvol(data, ['image', 'load'], tar, { TSVOL_CRASH_AT: point });
      t.is(killed.signal, 'SIGKILL', killed.out);
      t.deepEqual(json<unknown[]>(data, ['image', 'ls']), [], 'no image: its rows come last');
      // Debris: a diff renamed without its record, or blob files without rows (and the first layer's record).
      const blobDir = path.join(data, 'blobs', 'sha256');
      const debris = diffsOf(data).length + (fs.existsSync(blobDir) ? fs.readdirSync(blobDir).length : 0);
      t.true(debris > 0, 'the crash left something on disk');
      json<string[]>(data, ['layer', 'gc']);
      t.deepEqual(diffsOf(data), []);
      t.deepEqual(fs.existsSync(blobDir) ? fs.readdirSync(blobDir) : [], []);
      t.deepEqual(json<unknown[]>(data, ['layer', 'ls']), []);
      t.deepEqual(fs.readdirSync(path.join(data, 'layers', 'tmp')), [], 'stages of the dead process swept');
      // Loads again, whole.
      const r = await tsvol(data, ['image', 'load'], tar);
      t.is(r.status, 0, r.out);
      t.deepEqual(fs.readdirSync(blobDir).sort(), [...blobs].sort());
      t.is(json<unknown[]>(data, ['layer', 'ls']).length, 2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('a crash between a diff rename and its record: the next load of that layer replaces the debris', async (t) => {
  const dir = tempDir('tsvol-img-debris-');
  const data = path.join(dir, 'data');
  try {
    const layer = layerOf('x', 20);
    const archive = dockerArchive('debris/x:1', [layer]);
    const killed = await tsvol(data, ['image', 'load'], archive, { TSVOL_CRASH_AT: 'layer-publish:after-rename' });
    t.is(killed.signal, 'SIGKILL');
    const diff = path.join(data, 'layers', 'diffs', sha(layer));
    t.true(fs.existsSync(diff));
    // Tear the debris as a crash before the syncfs could: one file gone.
    fs.rmSync(path.join(diff, 'x', 'f3'));
    const r = await tsvol(data, ['image', 'load'], archive);
    t.is(r.status, 0, r.out);
    t.true(fs.existsSync(path.join(diff, 'x', 'f3')), 'the torn debris was replaced by the fresh diff');
    const saved = spawnSync(process.execPath, [CLI, 'image', 'save', 'debris/x:1'], { env: { ...process.env, TSVOL_DATA: data }, maxBuffer: 1 << 26 });
    t.is(saved.status, 0, saved.stderr.toString());
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
