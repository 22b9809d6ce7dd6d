/**
 * The 0.1 migration (#10) on a data root written by tsvol 0.1 itself (test/fixtures/v01-data-root.tar.gz,
 * made by scripts/make-v01-fixture.sh): the new server finds every volume, layer, tag, hold and container;
 * layers still export to their original bytes; a held layer is still refused; no JSON record is left.
 * Then each named crash point of the migration (src/store/migrate.ts, TSVOL_CRASH_AT) is hit with a
 * SIGKILL, and the next start ends in the same state; JSON left after the mark is deleted, never imported.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { CLI, ROOT, cleanupDir, isMounted, startTestServer, tempDir } from './helpers/server.js';
import { requireTools } from './helpers/require.js';
import { layerHolds, withDb } from './helpers/store.js';

requireTools('tar', 'umount');

const FIXTURE = path.join(ROOT, 'test', 'fixtures', 'v01-data-root.tar.gz');

interface Manifest {
  layers: Record<'base' | 'app' | 'conf' | 'committed', string>;
  tags: Record<string, string>;
  holds: [string, string][];
  containers: Record<string, string>;
  volumes: string[];
}

/** Unpacks the fixture into a fresh directory: `dir/data` is the 0.1 data root. */
function unpack(): { dir: string; data: string; manifest: Manifest } {
  const dir = tempDir('tsvol-v01-');
  const r = spawnSync('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xzpf', FIXTURE, '-C', dir]);
  if (r.status !== 0) throw new Error(`unpack fixture: ${r.stderr.toString()}`);
  return { dir, data: path.join(dir, 'data'), manifest: JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest };
}

function tsvol(data: string, args: string[], env: Record<string, string> = {}): { code: number | null; signal: NodeJS.Signals | null; out: string; err: string; raw: Buffer } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, TSVOL_DATA: data, ...env }, maxBuffer: 1 << 26 });
  return { code: r.status, signal: r.signal, out: r.stdout.toString().trim(), err: r.stderr.toString(), raw: r.stdout };
}

/** 0.1's record files under layers/ that are still there. */
function jsonLeft(data: string): string[] {
  const layers = path.join(data, 'layers');
  const out: string[] = [];
  for (const d of ['chains', 'tags', 'holds']) if (fs.existsSync(path.join(layers, d))) out.push(d);
  for (const f of fs.readdirSync(path.join(layers, 'containers'))) if (f.endsWith('.json')) out.push(`containers/${f}`);
  if (fs.existsSync(path.join(layers, 'store'))) out.push('store');
  return out;
}

/** The layer side of the database as the test compares it. */
function dbState(data: string): { layers: string[]; tags: [string, string][]; holds: [string, string][]; containers: [string, string][]; marked: boolean } {
  return withDb(data, (db) => ({
    layers: (db.prepare('SELECT id FROM layers ORDER BY id').pluck().all() as string[]),
    tags: (db.prepare('SELECT name, layer FROM tags ORDER BY name').raw().all() as [string, string][]),
    holds: layerHolds(data).map((h) => [h.layer, h.holder] as [string, string]),
    containers: (db.prepare('SELECT name, base FROM containers ORDER BY name').raw().all() as [string, string][]),
    marked: db.prepare("SELECT count(*) FROM meta WHERE key = 'migrated-0.1-layers'").pluck().get() === 1,
  }));
}

/** What every migrated data root must hold, whatever crashed on the way. */
function expected(m: Manifest): ReturnType<typeof dbState> {
  return {
    layers: Object.values(m.layers).sort(),
    tags: Object.entries(m.tags).sort(),
    holds: [...m.holds].sort((a, b) => (a[0] + a[1]).localeCompare(b[0] + b[1])),
    containers: Object.entries(m.containers),
    marked: true,
  };
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

test('a 0.1 data root: the new server finds every volume, layer, tag, hold and container; exports are byte-identical; a held layer is refused', async (t) => {
  const { dir, data, manifest: m } = unpack();
  try {
    t.true(jsonLeft(data).length > 0, 'the fixture is 0.1: JSON records under layers/');
    // A hold 0.1 left for a Create it did not finish (hold taken, record never committed): not imported.
    fs.writeFileSync(path.join(data, 'layers', 'holds', m.layers.conf.slice(7), encodeURIComponent('volume "ghost"')), 'volume "ghost"');
    let s = await startTestServer({ dir, mounts: false });
    t.deepEqual(jsonLeft(data), [], 'the JSON records are gone');
    t.deepEqual(dbState(data), expected(m));
    const mark = withDb(data, (db) => JSON.parse(db.prepare("SELECT value FROM meta WHERE key = 'migrated-0.1-layers'").pluck().get() as string) as { skipped: string[] });
    t.deepEqual(mark.skipped, [`hold volume "ghost" on ${m.layers.conf} (no such layered volume: a Create or Remove 0.1 did not finish)`]);

    const list = (await s.ok('/VolumeDriver.List', {})).Volumes as { Name: string }[];
    t.deepEqual(list.map((v) => v.Name).sort(), m.volumes);
    const lv = ((await s.ok('/VolumeDriver.Get', { Name: 'lv' })).Volume as { Status: Record<string, unknown> }).Status;
    t.is(lv.layer, m.layers.conf);
    t.is(fs.readFileSync(path.join(data, 'volumes', 'plain', '_data', 'file.txt'), 'utf8'), 'kept\n');
    // The layered volume mounts on its migrated chain: the layers' files, the whiteout, its own write.
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'lv', ID: 'c1' })).Mountpoint as string;
    t.is(fs.readFileSync(path.join(mp, 'etc', 'app.conf'), 'utf8'), 'color=blue\n');
    t.is(fs.readFileSync(path.join(mp, 'etc', 'motd'), 'utf8'), 'base\n');
    t.false(fs.existsSync(path.join(mp, 'etc', 'old.conf')), 'deleted by the top layer');
    t.is(fs.readFileSync(path.join(mp, 'written.txt'), 'utf8'), 'written\n');
    await s.ok('/VolumeDriver.Unmount', { Name: 'lv', ID: 'c1' });

    // Layers: the chain, the tags, byte-identical exports.
    const ls = JSON.parse(tsvol(data, ['layer', 'ls', '--json']).out) as { id: string; parent?: string }[];
    t.deepEqual(ls.map((l) => l.id).sort(), Object.values(m.layers).sort());
    const hist = JSON.parse(tsvol(data, ['layer', 'history', 'app:1', '--json']).out) as { id: string }[];
    t.deepEqual(hist.map((l) => l.id), [m.layers.conf, m.layers.app, m.layers.base]);
    for (const name of ['base', 'app', 'conf'] as const) {
      const tar = fs.readFileSync(path.join(dir, 'tars', `${name}.tar`));
      const exp = tsvol(data, ['layer', 'export', m.layers[name]]);
      t.is(exp.code, 0, exp.err);
      t.true(exp.raw.equals(tar), `${name} exports to its original bytes`);
      if (name === 'base') t.is(sha(exp.raw), m.layers.base);
    }

    // Holds and structure still refuse: a held layer, a tagged one, a parent, a container's base.
    t.regex(tsvol(data, ['layer', 'rm', m.layers.conf]).err, /is held by child layer [0-9a-f]{12}, tag "app:1", volume "lv"; remove those first/);
    t.regex(tsvol(data, ['layer', 'rm', m.layers.base]).err, /is held by child layer [0-9a-f]{12}, tag "base", volume "lv2"; remove those first/);
    t.regex(tsvol(data, ['layer', 'rm', m.layers.committed]).err, /held by container layer "ctr"/);
    t.deepEqual(JSON.parse(tsvol(data, ['layer', 'gc', '--json']).out), [], 'gc finds nothing unheld');

    // The container: on its committed layer, with its uncommitted change, mounted again on demand.
    const c = tsvol(data, ['container', 'diff', 'ctr']);
    t.is(c.out, 'A /pending.txt', c.err);
    const merged = tsvol(data, ['container', 'mount', 'ctr']).out;
    t.true(isMounted(merged));
    t.is(fs.readFileSync(path.join(merged, 'committed.txt'), 'utf8'), 'committed\n');
    t.is(fs.readFileSync(path.join(merged, 'pending.txt'), 'utf8'), 'pending\n');
    t.is(tsvol(data, ['container', 'rm', 'ctr']).code, 0);

    // A restart finds the same state, imported once.
    await s.stop();
    s = await startTestServer({ dir, mounts: false });
    t.deepEqual({ ...dbState(data), containers: [] }, { ...expected(m), containers: [] });
    t.regex(s.output(), /"volumes":3/);
    await s.kill();
  } finally {
    cleanupDir(dir);
  }
});

const CRASH_POINTS = ['migrate:before-commit', 'migrate:after-commit', 'migrate:mid-delete'] as const;

for (const point of CRASH_POINTS) {
  test(`a migration killed at ${point} ends, at the next start, in the same state`, (t) => {
    const { dir, data, manifest: m } = unpack();
    try {
      const all = jsonLeft(data);
      const killed = tsvol(data, ['layer', 'ls', '--json'], { TSVOL_CRASH_AT: point });
      t.is(killed.signal, 'SIGKILL', `killed at ${point}: ${killed.err}`);
      const state = dbState(data);
      if (point === 'migrate:before-commit') {
        t.deepEqual(state.layers, [], 'nothing imported before the commit');
        t.false(state.marked);
        t.deepEqual(jsonLeft(data), all);
      } else {
        t.deepEqual(state, expected(m), 'the commit holds the whole import and the mark');
        const left = jsonLeft(data);
        if (point === 'migrate:after-commit') t.deepEqual(left, all, 'killed before any deletion');
        else t.true(left.length > 0 && left.length < all.length, `killed between deletions: ${left.join(' ')}`);
      }
      // JSON left after the mark is stale: a record planted now must never be imported.
      if (point !== 'migrate:before-commit') {
        fs.mkdirSync(path.join(data, 'layers', 'tags'), { recursive: true });
        fs.writeFileSync(path.join(data, 'layers', 'tags', 'stale'), m.layers.base);
      }
      const next = tsvol(data, ['layer', 'ls', '--json']);
      t.is(next.code, 0, next.err);
      t.deepEqual((JSON.parse(next.out) as { id: string }[]).map((l) => l.id).sort(), Object.values(m.layers).sort());
      t.deepEqual(dbState(data), expected(m), 'the same state whatever the crash');
      t.deepEqual(jsonLeft(data), []);
      t.regex(tsvol(data, ['layer', 'rm', m.layers.base]).err, /volume "lv2"/, 'holds survive');
    } finally {
      cleanupDir(dir);
    }
  });
}
