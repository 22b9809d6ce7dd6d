/**
 * A container whose commit was killed after its journal (named crash point `layer-publish:after-rename`)
 * is settled by the next operation on it (src/layers/containers.ts: settle). Two operations on it at once
 * must both get a clear answer, one settling and the other finding it settled, never the first one's claim
 * on the stale upper ("locked by another live process"): in-process (both in one tick, as two control
 * requests resumed together run), through the server's control socket, and as two commands working
 * without a server. Needs root (overlay mounts): fails under CI=true without it.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { createContainerStore } from '../src/layers/containers.js';
import { encodeHeader, padding } from '../src/layers/tar/format.js';
import { layersLayout } from '../src/store/layout.js';
import { openLayerStore, withDb } from './helpers/store.js';
import { CLI, cleanupDir, requireRoot, startTestServer, tempDir } from './helpers/server.js';

const PUBLISH_CRASH = 'layer-publish:after-rename';

/** A base layer of a few files. */
function baseTar(): Buffer {
  const parts: Buffer[] = [];
  for (const [p, body] of [['seed', 'seed\n'], ['etc-conf', 'k=v\n']] as const) {
    const b = Buffer.from(body);
    parts.push(encodeHeader({ path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, size: b.length, mtime: 1_700_000_000, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map() }), b, Buffer.alloc(padding(b.length)));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

/**
 * A data root under `dir` with container "web" on a base layer, written to, whose `container commit` was
 * killed after its journal was saved and its diff renamed into place: the record still has the journal
 * of a dead process.
 */
function crashedContainer(dir: string): { data: string; env: NodeJS.ProcessEnv; tsvol: (args: string[], crash?: string) => Run } {
  const data = path.join(dir, 'data');
  const env = { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: path.join(dir, 'tsvol.sock'), TSVOL_LAYER_DRIVER: 'overlay' };
  const tsvol = (args: string[], crash?: string): Run => {
    const r = spawnSync(process.execPath, [CLI, ...args], { env: crash === undefined ? env : { ...env, TSVOL_CRASH_AT: crash }, encoding: 'utf8' });
    return { status: r.status, signal: r.signal, out: r.stdout.trim(), err: r.stderr };
  };
  fs.mkdirSync(data, { recursive: true });
  fs.writeFileSync(path.join(dir, 'base.tar'), baseTar());
  const base = tsvol(['layer', 'import', path.join(dir, 'base.tar')]).out;
  const merged = tsvol(['container', 'create', 'web', '--from', base]).out;
  fs.writeFileSync(path.join(merged, 'written'), 'by the container\n');
  const killed = tsvol(['container', 'commit', 'web'], PUBLISH_CRASH);
  if (killed.signal !== 'SIGKILL') throw new Error(`the commit did not die at ${PUBLISH_CRASH}: ${killed.status} ${killed.err}`);
  const journal = withDb(data, (db) => db.prepare("SELECT record FROM containers WHERE name = 'web'").pluck().get() as string);
  if (!journal.includes('"next"')) throw new Error(`no journal left: ${journal}`);
  return { data, env, tsvol };
}

/** The container's upper directories (one once settled and committed). */
const uppers = (data: string): string[] => fs.readdirSync(layersLayout(path.join(data, 'layers')).containerDirs('web').base).filter((f) => f.startsWith('upper'));

function runAsync(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('exit', (status, signal) => resolve({ status, signal, out: out.trim(), err }));
  });
}

test('in-process: two operations at once on a container a killed commit left both get a clear answer', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-settle-');
  try {
    const { data } = crashedContainer(dir);
    const root = path.join(data, 'layers');
    const layers = openLayerStore(root);
    const containers = createContainerStore(root, layers, 'overlay');
    // Started in one tick: each settles the journal it reads, unless the other's settle is waited for.
    const [a, b] = await Promise.allSettled([containers.commit('web'), containers.commit('web')]);
    t.is(a.status, 'fulfilled', a.status === 'rejected' ? String(a.reason) : '');
    t.is(b.status, 'fulfilled', b.status === 'rejected' ? String(b.reason) : '');
    t.deepEqual(uppers(data).length, 1, 'one upper directory left');
    t.true(fs.existsSync(path.join(await containers.mergedPath('web'), 'written')));
    // A commit and a remove at once: in arrival order, the commit commits, then the remove removes (the
    // old code let the remove overtake the commit, which then said "not found").
    fs.writeFileSync(path.join(await containers.mergedPath('web'), 'more'), 'more\n');
    const committed = await Promise.allSettled([containers.commit('web'), containers.remove('web')]);
    t.deepEqual(committed.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok')), ['ok', 'ok']);
    t.deepEqual(containers.list(), []);
    // Two removes at once: one removes it, the other says it is not there (the old code said both removed it).
    await containers.create('web', layers.list()[0]!.id);
    const removed = await Promise.allSettled([containers.remove('web'), containers.remove('web')]);
    t.is(removed.filter((r) => r.status === 'fulfilled').length, 1);
    const failed = removed.find((r) => r.status === 'rejected');
    t.regex(String(failed?.reason), /container layer "web" not found/);
  } finally {
    cleanupDir(dir);
  }
});

test('two `tsvol container` commands at once on a container a killed commit left both succeed, through the server and without one', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-settle-');
  try {
    const { data, env, tsvol } = crashedContainer(dir);
    // Without a server: one command works alone holding the data root, the other waits for it.
    const alone = await Promise.all([runAsync(['container', 'commit', 'web'], env), runAsync(['container', 'commit', 'web'], env)]);
    for (const r of alone) t.is(r.status, 0, r.err);
    t.is(uppers(data).length, 1);

    // Again through the server's control socket, on a fresh crash.
    fs.writeFileSync(path.join(tsvol(['container', 'mount', 'web']).out, 'again'), 'more\n');
    const killed = tsvol(['container', 'commit', 'web'], PUBLISH_CRASH);
    t.is(killed.signal, 'SIGKILL');
    const server = await startTestServer({ dir, env: { TSVOL_LAYER_DRIVER: 'overlay' } });
    try {
      const served = await Promise.all([runAsync(['container', 'commit', 'web'], env), runAsync(['container', 'commit', 'web'], env)]);
      for (const r of served) t.is(r.status, 0, r.err);
      t.is(uppers(data).length, 1);
      const both = await Promise.all([runAsync(['container', 'rm', 'web'], env), runAsync(['container', 'rm', 'web'], env)]);
      t.is(both.filter((r) => r.status === 0).length, 1, both.map((r) => r.err).join(''));
      t.regex(both.find((r) => r.status !== 0)?.err ?? '', /container layer "web" not found/);
    } finally {
      await server.stop();
    }
  } finally {
    cleanupDir(dir);
  }
});
