/**
 * Every volume kind behaves alike through the driver protocol (#10, containerd's SnapshotterSuite): one
 * story per entry of the kinds table, over the real socket, with and without TSVOL_MOUNTS. `CASES` is
 * keyed by the table's kinds, so a new kind does not typecheck here until it has its case.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { KINDS } from '../src/volumes/kinds/index.js';
import type { KindName } from '../src/volumes/kinds/kind.js';
import { requireTools } from './helpers/require.js';
import { CLI, isMounted, tempDir, cleanupDir, requireRoot, startTestServer, type TestServer } from './helpers/server.js';

requireTools('tar', 'mkfs.ext4', 'debugfs', 'dumpe2fs', 'umount');

/** What one kind's story needs: its options (made ready on the server), and what Status shows. */
interface Case {
  readonly status: string;
  /** True when its files sit in volumes/<name> (everything but a host directory). */
  readonly inDataRoot: boolean;
  opts(s: TestServer, host: string): Promise<Record<string, string>>;
}

/** Imports a one-file base layer through the CLI; returns its ID. */
function importLayer(s: TestServer): string {
  const tree = path.join(s.dir, 'image');
  fs.mkdirSync(path.join(tree, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'etc', 'from-layer'), 'layer\n');
  const tar = path.join(s.dir, 'image.tar');
  execFileSync('tar', ['--format=posix', '-cf', tar, '-C', tree, '.']);
  const r = spawnSync(process.execPath, [CLI, 'layer', 'import', tar], { env: { ...process.env, TSVOL_DATA: s.data }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.trim();
}

const CASES: { readonly [K in KindName]: Case } = {
  named: { status: 'named', inDataRoot: true, opts: async () => ({ mode: '0750' }) },
  bind: { status: 'bind', inDataRoot: false, opts: async (_s, host) => ({ type: 'bind', device: host }) },
  sized: { status: 'sized', inDataRoot: true, opts: async () => ({ size: '32m' }) },
  clone: {
    status: 'clone-of',
    inDataRoot: true,
    async opts(s) {
      await s.ok('/VolumeDriver.Create', { Name: 'origin', Opts: {} });
      fs.writeFileSync(path.join(s.data, 'volumes', 'origin', '_data', 'copied'), 'from origin');
      return { from: 'origin' };
    },
  },
  layered: { status: 'layered', inDataRoot: true, opts: async (s) => ({ layer: importLayer(s) }) },
};

test('the kinds table and the cases name the same kinds', (t) => {
  t.deepEqual(Object.keys(KINDS).sort(), Object.keys(CASES).sort());
  for (const [name, kind] of Object.entries(KINDS)) t.is(kind.statusKind, CASES[name as KindName].status, name);
});

/**
 * One server per TSVOL_MOUNTS mode, shared by the kinds' stories (each works on volumes of its own names,
 * and only the bind story uses the host directory): a server start costs about a second of CPU, and ten of
 * them were most of this file's time.
 */
const servers = new Map<boolean, Promise<{ s: TestServer; host: string }>>();
function serverFor(mounts: boolean): Promise<{ s: TestServer; host: string }> {
  let p = servers.get(mounts);
  if (p === undefined) {
    const host = tempDir('tsvol-kind-host-');
    p = startTestServer({ mounts, bindRoots: [host] }).then((s) => ({ s, host }));
    servers.set(mounts, p);
  }
  return p;
}
test.after.always(async () => {
  for (const p of servers.values()) {
    const { s, host } = await p;
    await s.kill();
    cleanupDir(s.dir);
    cleanupDir(host);
  }
});

for (const kind of Object.keys(CASES) as KindName[]) {
  for (const mounts of [true, false]) {
    test(`${kind} (${mounts ? 'TSVOL_MOUNTS' : 'no TSVOL_MOUNTS'}): Create, Get, two Mounts, Unmounts, a second Mount sees the data, Remove`, async (t) => {
      const c = CASES[kind];
      if (!requireRoot(t)) return;
      const { s, host } = await serverFor(mounts);
      const name = `kv-${kind}`;
      await s.ok('/VolumeDriver.Create', { Name: name, Opts: await c.opts(s, host) });
      const st = ((await s.ok('/VolumeDriver.Get', { Name: name })).Volume as { Status: Record<string, unknown> }).Status;
      t.is(st.kind, c.status);
      t.is(st.mounts, 0);

      const mp = (await s.ok('/VolumeDriver.Mount', { Name: name, ID: 'c1' })).Mountpoint as string;
      t.is((await s.ok('/VolumeDriver.Path', { Name: name })).Mountpoint, mp, 'Path answers what Mount did');
      if (mounts) t.is(mp, path.join(s.mounts!, name));
      t.true(fs.statSync(mp).isDirectory());
      fs.writeFileSync(path.join(mp, 'written'), kind);
      if (kind === 'clone') t.is(fs.readFileSync(path.join(mp, 'copied'), 'utf8'), 'from origin');
      if (kind === 'layered') t.is(fs.readFileSync(path.join(mp, 'etc', 'from-layer'), 'utf8'), 'layer\n');
      t.is((await s.ok('/VolumeDriver.Mount', { Name: name, ID: 'c2' })).Mountpoint, mp);
      await s.ok('/VolumeDriver.Unmount', { Name: name, ID: 'c1' });
      t.is(fs.readFileSync(path.join(mp, 'written'), 'utf8'), kind, 'one holder left: still there');
      await s.ok('/VolumeDriver.Unmount', { Name: name, ID: 'c2' });
      if (mounts || kind === 'bind') t.false(isMounted(mp), 'the last Unmount takes the mountpoint mount');
      t.false(isMounted(path.join(s.data, 'volumes', name, '_data')), 'no mount of its own outlives its holders');

      const again = (await s.ok('/VolumeDriver.Mount', { Name: name, ID: 'c3' })).Mountpoint as string;
      t.is(fs.readFileSync(path.join(again, 'written'), 'utf8'), kind, 'what was written survives');
      await s.ok('/VolumeDriver.Unmount', { Name: name, ID: 'c3' });

      await s.ok('/VolumeDriver.Remove', { Name: name });
      t.is((await s.call('/VolumeDriver.Get', { Name: name })).status, 404);
      t.false(fs.existsSync(path.join(s.data, 'volumes', name)), 'the volume directory is gone');
      if (!c.inDataRoot) t.is(fs.readFileSync(path.join(host, 'written'), 'utf8'), kind, 'a host directory is never deleted');
      if (mounts) t.false(fs.existsSync(mp), 'the mountpoint directory goes with the volume');
      const holds = path.join(s.data, 'layers', 'holds');
      if (fs.existsSync(holds)) t.deepEqual(fs.readdirSync(holds).flatMap((d) => fs.readdirSync(path.join(holds, d))), [], 'no layer hold left');
    });
  }
}
