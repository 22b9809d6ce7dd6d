/**
 * The metadata store (src/store/meta-store.ts): one SQLite database whose foreign keys refuse what would
 * leave a dangling or stolen layer, change sets that commit atomically (a layered volume and its layer
 * hold together, or neither), a volume cache that needs no refresh and keeps the committed objects, and
 * reads that are key or index lookups whatever the number of layers.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { InUseError, NotFoundError } from '../src/errors.js';
import { createLayout } from '../src/store/layout.js';
import { createMetaStore, type MetaStore } from '../src/store/meta-store.js';
import type { LayerRecord, VolumeRecord } from '../src/store/records.js';
import { POINT_READS, READS } from '../src/store/schema.js';
import { createVolumeStore } from '../src/store/volume-store.js';
import { fsyncDirShared } from '../src/sys/durable.js';
import { tempDir } from './helpers/server.js';
import { withDb } from './helpers/store.js';

const hex = (n: number): string => n.toString(16).padStart(64, '0');
const layer = (n: number, parent?: number): LayerRecord => ({
  id: `sha256:${hex(n)}`,
  diffId: `sha256:${hex(n + 1_000_000)}`,
  parent: parent === undefined ? undefined : `sha256:${hex(parent)}`,
  size: n,
  files: 1,
  createdAt: '2026-01-01T00:00:00.000Z',
});
const volume = (name: string, spec: VolumeRecord['spec'] = { kind: 'named' }): VolumeRecord => ({
  name,
  createdAt: '2026-01-01T00:00:00.000Z',
  spec,
  options: Object.create(null) as Record<string, string>,
  holds: new Map(),
});

async function withStore(fn: (store: MetaStore, data: string) => Promise<void>): Promise<void> {
  const dir = tempDir('tsvol-meta-');
  const data = path.join(dir, 'data');
  const store = createMetaStore(createLayout(data));
  try {
    await fn(store, data);
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('foreign keys refuse deleting a layer that is a parent, tagged, held or under a container, and naming a missing layer', async (t) => {
  await withStore(async (store) => {
    await store.commit([{ op: 'layer.put', layer: layer(1) }, { op: 'layer.put', layer: layer(2, 1) }]);
    const base = layer(1).id;
    const top = layer(2).id;
    // A parent.
    await t.throwsAsync(store.commit([{ op: 'layer.delete', id: base }]), { instanceOf: InUseError });
    // Tagged, held, under a container: each alone keeps the top layer.
    const holders = [
      { op: 'tag.put', name: 'app', layer: top },
      { op: 'layerHold.put', layer: top, holder: 'volume "db"' },
      { op: 'container.put', record: { name: 'ctr', from: top, driver: 'overlay', createdAt: '2026-01-01T00:00:00.000Z' } },
    ] as const;
    const releases = [
      { op: 'tag.delete', name: 'app' },
      { op: 'layerHold.delete', layer: top, holder: 'volume "db"' },
      { op: 'container.delete', name: 'ctr' },
    ] as const;
    for (const [i, hold] of holders.entries()) {
      await store.commit([hold]);
      const err = await t.throwsAsync(store.commit([{ op: 'layer.delete', id: top }]), { instanceOf: InUseError });
      t.regex(err?.message ?? '', /layer still held/);
      t.truthy(store.getLayer(top), `${hold.op}: the layer is still there`);
      await store.commit([releases[i]!]);
    }
    // Nothing names a missing layer: parent, tag, hold, container base.
    const missing = `sha256:${hex(99)}`;
    for (const change of [
      { op: 'layer.put', layer: layer(3, 99) },
      { op: 'tag.put', name: 'ghost', layer: missing },
      { op: 'layerHold.put', layer: missing, holder: 'volume "x"' },
      { op: 'container.put', record: { name: 'c2', from: missing, driver: 'copy', createdAt: '2026-01-01T00:00:00.000Z' } },
    ] as const) {
      await t.throwsAsync(store.commit([change]), { instanceOf: NotFoundError }, change.op);
    }
    t.deepEqual([store.getTag('ghost'), store.getContainer('c2'), store.getLayer(layer(3).id), store.holdsOf(missing)], [undefined, undefined, undefined, []]);
    // Unheld now: the top layer, then its parent, go.
    await store.commit([{ op: 'layer.delete', id: top }, { op: 'layer.delete', id: base }]);
    t.deepEqual(store.layers(), []);
  });
});

test('a change set commits whole or not at all: a layered volume and its hold land together; a refused set does not sink its batch', async (t) => {
  await withStore(async (store, data) => {
    await store.commit([{ op: 'layer.put', layer: layer(1) }]);
    const lv = volume('lv', { kind: 'layered', layer: layer(1).id });
    await store.commit([{ op: 'volume.put', record: lv }, { op: 'layerHold.put', layer: layer(1).id, holder: 'volume "lv"' }]);
    t.is(store.getVolume('lv'), lv);
    t.deepEqual(store.holdsOf(layer(1).id), ['volume "lv"']);

    // The hold names a layer that does not exist: the volume is not kept either, in the database or the cache.
    const ghost = volume('ghost', { kind: 'layered', layer: `sha256:${hex(7)}` });
    const concurrent = [
      store.commit([{ op: 'volume.put', record: ghost }, { op: 'layerHold.put', layer: `sha256:${hex(7)}`, holder: 'volume "ghost"' }]),
      store.commit([{ op: 'volume.put', record: volume('ok') }]),
    ];
    const [bad, good] = await Promise.allSettled(concurrent);
    t.is(bad?.status, 'rejected');
    t.is(good?.status, 'fulfilled', 'the other set in the same batch commits');
    t.is(store.getVolume('ghost'), undefined);
    t.truthy(store.getVolume('ok'));
    withDb(data, (db) => {
      t.deepEqual(db.prepare('SELECT name FROM volumes ORDER BY name').pluck().all(), ['lv', 'ok']);
    });
    // Removing the volume and its hold in one set frees the layer.
    await store.commit([{ op: 'volume.delete', name: 'lv' }, { op: 'layerHold.delete', layer: layer(1).id, holder: 'volume "lv"' }]);
    await store.commit([{ op: 'layer.delete', id: layer(1).id }]);
    t.is(store.getVolume('lv'), undefined);
    t.is(store.getLayer(layer(1).id), undefined);
  });
});

test('no refresh: a commit updates the cache with the very object committed, and a new open reads it from disk', async (t) => {
  const dir = tempDir('tsvol-meta-');
  try {
    const layout = createLayout(path.join(dir, 'data'));
    const view = createVolumeStore(layout);
    const recs = Array.from({ length: 50 }, (_, i) => volume(`v${i}`));
    await Promise.all(recs.map((r) => view.put(r)));
    recs.forEach((r, i) => t.is(view.get(`v${i}`), r, 'the same object: identity-keyed caches keep hitting'));
    await view.putMeta('bootId', 'b1');
    await view.delete('v0');
    t.is(view.size, 49);
    await view.close();
    const again = createMetaStore(layout);
    try {
      t.is(again.volumeCount, 49);
      t.deepEqual(again.getVolume('v1'), recs[1]);
      t.is(again.getMeta('bootId'), 'b1');
    } finally {
      await again.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('volume records with holds in 0.1\'s object form are read as a Map', async (t) => {
  const dir = tempDir('tsvol-meta-');
  try {
    const data = path.join(dir, 'data');
    const layout = createLayout(data);
    await createMetaStore(layout).close();
    withDb(data, (db) => {
      const rec = { name: 'old', createdAt: '2025-01-01T00:00:00.000Z', spec: { kind: 'named' }, options: {}, holds: { c1: 2, constructor: 'x' } };
      db.prepare('INSERT INTO volumes (name, record) VALUES (?, ?)').run('old', JSON.stringify(rec));
    });
    const store = createMetaStore(layout);
    try {
      t.deepEqual([...store.getVolume('old')!.holds], [['c1', 2], ['constructor', 1]]);
    } finally {
      await store.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('every read that serves one operation is a key or index lookup, never a scan (cost does not grow with the layers)', async (t) => {
  await withStore(async (store, data) => {
    // Enough rows for the planner to prefer an index where it has one.
    const changes = Array.from({ length: 300 }, (_, i) => ({ op: 'layer.put', layer: layer(i + 1, i === 0 ? undefined : i) }) as const);
    await store.commit(changes);
    withDb(data, (db) => {
      db.exec('ANALYZE');
      for (const name of POINT_READS) {
        const sql = READS[name];
        const params = Array.from({ length: (sql.match(/\?/g) ?? []).length }, () => 'x');
        const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as { detail: string }[]).map((r) => r.detail).join('; ');
        t.notRegex(plan, /\bSCAN\b/, `${name}: ${plan}`);
      }
      // The foreign keys' own checks (a delete looks for referencing rows) use the child indexes too.
      for (const [table, column] of [['layers', 'parent'], ['tags', 'layer'], ['layer_holds', 'layer'], ['containers', 'base'], ['images', 'top'], ['manifest_blobs', 'blob']]) {
        const plan = (db.prepare(`EXPLAIN QUERY PLAN SELECT 1 FROM ${table} WHERE ${column} = ?`).all('x') as { detail: string }[]).map((r) => r.detail).join('; ');
        t.notRegex(plan, /\bSCAN\b/, `${table}.${column}: ${plan}`);
      }
    });
    t.is(store.layersByPrefix(hex(5).slice(0, 60), 2).length, 2, 'a prefix range finds its layers');
    t.deepEqual(store.childrenOf(layer(5).id), [layer(6).id]);
  });
});

test('a refused upsert keeps the old record: a layer cannot be moved onto a parent that does not exist', async (t) => {
  await withStore(async (store) => {
    await store.commit([{ op: 'layer.put', layer: layer(1) }]);
    await t.throwsAsync(store.commit([{ op: 'layer.put', layer: { ...layer(1), parent: `sha256:${hex(5)}` } }]), { instanceOf: NotFoundError });
    t.deepEqual(store.getLayer(layer(1).id), layer(1));
  });
});

test('fsyncDirShared: callers share syncs, but never one that was already running when they called', async (t) => {
  const dir = tempDir('tsvol-sync-');
  const open = fs.promises.open;
  const started: number[] = [];
  // Counts the syncs of `dir` (each opens it) and when each starts, by the order of calls.
  let calls = 0;
  fs.promises.open = (async (...args: Parameters<typeof open>) => {
    if (args[0] === dir) started.push(calls);
    return open(...args);
  }) as typeof open;
  try {
    const first = fsyncDirShared(dir); // starts sync 1 at once
    calls++;
    // 200 renames meanwhile: sync 1 may have begun before them, so they must share one new sync.
    const rest = Array.from({ length: 200 }, (_, i) => {
      fs.writeFileSync(path.join(dir, `f${i}`), 'x');
      calls++;
      return fsyncDirShared(dir);
    });
    await Promise.all([first, ...rest]);
    t.deepEqual(started, [0, 201], 'two syncs for 201 callers; the second began after the last call');
    await t.throwsAsync(fsyncDirShared(path.join(dir, 'missing')), { code: 'ENOENT' });
    // A failed sync does not poison the next one of that directory.
    await fsyncDirShared(dir);
    t.is(started.length, 3);
  } finally {
    fs.promises.open = open;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a schema-2 tsvol.db (images without origin, no blob tables) opens: its images read as received, blobs can be recorded', async (t) => {
  const dir = tempDir('tsvol-meta-v2-');
  const data = path.join(dir, 'data');
  try {
    fs.mkdirSync(data, { recursive: true });
    // The tables #11's first images wrote (schema 2), with one image on one layer.
    const db = new Database(path.join(data, 'tsvol.db'));
    db.exec(`
      CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
      CREATE TABLE layers (id TEXT PRIMARY KEY, diff_id TEXT NOT NULL, parent TEXT REFERENCES layers (id) ON DELETE RESTRICT,
        size INTEGER NOT NULL, files INTEGER NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID;
      CREATE TABLE images (name TEXT PRIMARY KEY, id TEXT NOT NULL, digest TEXT NOT NULL,
        top TEXT NOT NULL REFERENCES layers (id) ON DELETE RESTRICT, config TEXT NOT NULL, manifest TEXT NOT NULL,
        created_at TEXT NOT NULL) WITHOUT ROWID;
    `);
    const l = layer(1);
    db.prepare('INSERT INTO layers VALUES (?, ?, NULL, 1, 1, ?)').run(l.id, l.diffId, l.createdAt);
    db.prepare('INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?)').run('docker.io/library/old:1', `sha256:${hex(7)}`, `sha256:${hex(8)}`, l.id, '{}', '{}', l.createdAt);
    db.close();
    const store = createMetaStore(createLayout(data));
    try {
      const img = store.getImage('docker.io/library/old:1');
      t.is(img?.origin, 'received');
      t.is(img?.top, l.id);
      const blob = { digest: `sha256:${hex(9)}`, size: 3, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', source: '127.0.0.1:5000/x', createdAt: l.createdAt };
      await store.commit([{ op: 'blob.put', blob }, { op: 'manifestBlob.put', manifest: `sha256:${hex(8)}`, blob: blob.digest }]);
      t.deepEqual(store.blobsOf(`sha256:${hex(8)}`), [blob]);
      // A hold names a blob that exists: the foreign key refuses one that does not, and a held blob's delete.
      await t.throwsAsync(store.commit([{ op: 'manifestBlob.put', manifest: 'm', blob: `sha256:${hex(10)}` }]));
      await t.throwsAsync(store.commit([{ op: 'blob.delete', digest: blob.digest }]));
    } finally {
      await store.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
