/**
 * Layered volumes (`-o layer=`, #6): copy-on-write on a layer chain. The volume starts with the layer's
 * files, writes copy up into the volume's own directory, the layer never changes and cannot be removed
 * while a volume stands on it, and `tsvol volume commit` turns a volume into a layer that seeds more.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { holdersOf, layerHolds } from './helpers/store.js';
import { CLI, cleanupDir, isMounted, startTestServer, withServer, type TestServer } from './helpers/server.js';
import { snapshotTree } from './helpers/tree.js';
import { requireTools } from './helpers/require.js';

requireTools('tar', 'umount', 'mknod');

function cli(s: TestServer, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env = { ...process.env, TSVOL_DATA: s.data, TSVOL_SOCKET: s.socket, ...(s.mounts ? { TSVOL_MOUNTS: s.mounts } : {}) };
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr };
}

/** Imports a base layer with etc/app.conf, bin/tool (0755, uid 7), a symlink and a directory to delete. */
function importBase(s: TestServer): string {
  const tree = path.join(s.dir, 'image');
  fs.mkdirSync(path.join(tree, 'etc'), { recursive: true });
  fs.mkdirSync(path.join(tree, 'bin'));
  fs.mkdirSync(path.join(tree, 'var/cache'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'etc/app.conf'), 'color=blue\n');
  fs.writeFileSync(path.join(tree, 'bin/tool'), '#!/bin/sh\n', { mode: 0o755 });
  fs.chownSync(path.join(tree, 'bin/tool'), 7, 7);
  fs.writeFileSync(path.join(tree, 'var/cache/big'), Buffer.alloc(1 << 20, 1));
  fs.symlinkSync('../etc/app.conf', path.join(tree, 'bin/conf'));
  const tar = path.join(s.dir, 'image.tar');
  execFileSync('tar', ['--format=posix', '-cf', tar, '-C', tree, '.']);
  const r = cli(s, ['layer', 'import', tar]);
  if (r.status !== 0) throw new Error(r.stderr);
  fs.rmSync(tree, { recursive: true });
  return r.stdout;
}

async function status(s: TestServer, name: string): Promise<Record<string, unknown>> {
  return ((await s.ok('/VolumeDriver.Get', { Name: name })).Volume as { Status: Record<string, unknown> }).Status;
}

test('layer=: starts with the image files, writes copy up, the layer stays unchanged and held', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const base = importBase(s);
    t.is(cli(s, ['layer', 'tag', base, 'app:1']).status, 0);
    const before = cli(s, ['layer', 'export', base]).stdout;
    await s.ok('/VolumeDriver.Create', { Name: 'lv', Opts: { layer: 'app:1' } });
    const st = await status(s, 'lv');
    t.is(st.kind, 'layered');
    t.is(st.layer, base, 'the tag is resolved to the layer ID at Create');

    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'lv', ID: 'c1' })).Mountpoint as string;
    t.is(fs.readFileSync(path.join(mp, 'etc/app.conf'), 'utf8'), 'color=blue\n');
    const tool = fs.statSync(path.join(mp, 'bin/tool'));
    t.is(tool.mode & 0o7777, 0o755);
    t.is(tool.uid, 7);
    t.is(fs.readlinkSync(path.join(mp, 'bin/conf')), '../etc/app.conf');
    fs.writeFileSync(path.join(mp, 'etc/app.conf'), 'color=red\n');
    fs.writeFileSync(path.join(mp, 'new.txt'), 'mine');
    fs.rmSync(path.join(mp, 'var/cache'), { recursive: true });

    // Only what was written costs space: the 1 MiB cache file lives in the layer, not in the volume.
    const upper = path.join(s.data, 'volumes', 'lv', 'upper');
    t.is(fs.readFileSync(path.join(upper, 'etc/app.conf'), 'utf8'), 'color=red\n');
    t.false(fs.existsSync(path.join(upper, 'bin/tool')), 'files only read are not copied up');
    // The layer is untouched: it exports to the same bytes.
    t.is(cli(s, ['layer', 'export', base]).stdout, before);

    const rm = cli(s, ['layer', 'rm', base]);
    t.not(rm.status, 0);
    t.regex(rm.stderr, /volume "lv"/, 'the refusal names the volume');

    await s.ok('/VolumeDriver.Unmount', { Name: 'lv', ID: 'c1' });
    t.false(isMounted(path.join(s.data, 'volumes', 'lv', '_data')), 'the overlay goes with the last holder');
    // Usage is measured off the request path: poll until the figure appears.
    let usage: { bytes: number } | undefined;
    for (let i = 0; i < 50 && usage === undefined; i++) {
      usage = (await status(s, 'lv')).usage as { bytes: number } | undefined;
      if (usage === undefined) await new Promise((r) => setTimeout(r, 100));
    }
    t.true(usage !== undefined && usage.bytes < 1 << 20, `usage counts the volume's own writes only (${JSON.stringify(usage)})`);

    // Data survives remounts.
    const again = (await s.ok('/VolumeDriver.Mount', { Name: 'lv', ID: 'c2' })).Mountpoint as string;
    t.is(fs.readFileSync(path.join(again, 'new.txt'), 'utf8'), 'mine');
    t.false(fs.existsSync(path.join(again, 'var/cache')));
    await s.ok('/VolumeDriver.Unmount', { Name: 'lv', ID: 'c2' });

    await s.ok('/VolumeDriver.Remove', { Name: 'lv' });
    const untag = cli(s, ['layer', 'rm', 'app:1']);
    t.is(untag.status, 0, untag.stderr);
    t.is(untag.stdout, `untagged app:1\ndeleted ${base}`, 'with the volume gone, removing its last tag removes the layer');
    t.regex(cli(s, ['layer', 'rm', base]).stderr, /not found/);
  });
});

test('volume commit: a layered volume becomes a layer on its own; it seeds a new volume with the committed state', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const base = importBase(s);
    await s.ok('/VolumeDriver.Create', { Name: 'work', Opts: { layer: base } });
    // Held by nothing but the volume (no tag, no child), the layer survives gc.
    t.notRegex(cli(s, ['layer', 'gc']).stdout, new RegExp(base.slice(7)));
    t.regex(cli(s, ['layer', 'ls']).stdout, new RegExp(base.slice(7, 19)));
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'work', ID: 'c1' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'etc/app.conf'), 'color=green\n');
    fs.rmSync(path.join(mp, 'var/cache'), { recursive: true });
    fs.mkdirSync(path.join(mp, 'data'), { mode: 0o750 });
    fs.writeFileSync(path.join(mp, 'data/db'), 'rows');
    await s.ok('/VolumeDriver.Unmount', { Name: 'work', ID: 'c1' });

    const c = cli(s, ['volume', 'commit', 'work', '--tag', 'snap']);
    t.is(c.status, 0, c.stderr);
    t.regex(c.stdout, /^sha256:[0-9a-f]{64}$/);
    const history = cli(s, ['layer', 'history', 'snap', '--json']);
    t.true(history.stdout.includes(base), 'the snapshot sits on the volume\'s layer');

    await s.ok('/VolumeDriver.Create', { Name: 'seeded', Opts: { layer: 'snap' } });
    const a = (await s.ok('/VolumeDriver.Mount', { Name: 'work', ID: 'x' })).Mountpoint as string;
    const b = (await s.ok('/VolumeDriver.Mount', { Name: 'seeded', ID: 'x' })).Mountpoint as string;
    // Owners, modes, contents, links, deletions; times to the second, as Docker's layer tars keep them.
    t.deepEqual(snapshotTree(b, { times: false }), snapshotTree(a, { times: false }), 'the new volume shows exactly the committed state');
    t.is(Math.floor(fs.statSync(path.join(b, 'data/db')).mtimeMs / 1000), Math.floor(fs.statSync(path.join(a, 'data/db')).mtimeMs / 1000));
    t.false(fs.existsSync(path.join(b, 'var/cache')));
    await s.ok('/VolumeDriver.Unmount', { Name: 'work', ID: 'x' });
    await s.ok('/VolumeDriver.Unmount', { Name: 'seeded', ID: 'x' });

    // Any volume commits to a base layer.
    await s.ok('/VolumeDriver.Create', { Name: 'plain' });
    fs.writeFileSync(path.join(s.data, 'volumes', 'plain', '_data', 'hello'), 'world');
    const p = cli(s, ['volume', 'commit', 'plain']);
    t.is(p.status, 0, p.stderr);
    await s.ok('/VolumeDriver.Create', { Name: 'from-plain', Opts: { layer: p.stdout } });
    const fp = (await s.ok('/VolumeDriver.Mount', { Name: 'from-plain', ID: 'y' })).Mountpoint as string;
    t.is(fs.readFileSync(path.join(fp, 'hello'), 'utf8'), 'world');
    await s.ok('/VolumeDriver.Unmount', { Name: 'from-plain', ID: 'y' });

    // A layered volume clones and exports like any other, mounted just for the read.
    await s.ok('/VolumeDriver.Create', { Name: 'copy', Opts: { from: 'work' } });
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'copy', '_data', 'data/db'), 'utf8'), 'rows');
    t.false(isMounted(path.join(s.data, 'volumes', 'work', '_data')));
  });
});

test('volume commit of a plain volume: what a layer would read as a whiteout (a 0/0 device, a .wh. name) is refused by path and stores nothing; other devices commit as they are', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'plain' });
    const data = path.join(s.data, 'volumes', 'plain', '_data');
    fs.mkdirSync(path.join(data, 'dev'));
    fs.writeFileSync(path.join(data, 'keep'), 'kept');
    execFileSync('mknod', [path.join(data, 'dev', 'null'), 'c', '1', '3']);
    execFileSync('mknod', [path.join(data, 'dev', 'zero0'), 'c', '0', '0']);
    const layersBefore = cli(s, ['layer', 'ls', '--json']).stdout;

    const refused = cli(s, ['volume', 'commit', 'plain']);
    t.not(refused.status, 0);
    t.regex(refused.stderr, /"\/dev\/zero0" cannot go into a layer: it is a character device 0\/0/);
    t.is(cli(s, ['layer', 'ls', '--json']).stdout, layersBefore, 'no layer was stored');
    t.true(fs.lstatSync(path.join(data, 'dev', 'zero0')).isCharacterDevice(), 'the volume is as it was');

    fs.rmSync(path.join(data, 'dev', 'zero0'));
    fs.writeFileSync(path.join(data, '.wh.keep'), 'a file named like a whiteout');
    const named = cli(s, ['volume', 'commit', 'plain']);
    t.not(named.status, 0);
    t.regex(named.stderr, /"\/\.wh\.keep" cannot go into a layer/);
    t.is(cli(s, ['layer', 'ls', '--json']).stdout, layersBefore, 'no layer was stored');

    fs.rmSync(path.join(data, '.wh.keep'));
    const ok = cli(s, ['volume', 'commit', 'plain']);
    t.is(ok.status, 0, ok.stderr);
    await s.ok('/VolumeDriver.Create', { Name: 'seeded', Opts: { layer: ok.stdout } });
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'seeded', ID: 'x' })).Mountpoint as string;
    const dev = fs.lstatSync(path.join(mp, 'dev', 'null'));
    t.true(dev.isCharacterDevice(), 'a real device commits as the device it is');
    t.is(dev.rdev, fs.lstatSync(path.join(data, 'dev', 'null')).rdev);
    t.is(fs.readFileSync(path.join(mp, 'keep'), 'utf8'), 'kept');
    await s.ok('/VolumeDriver.Unmount', { Name: 'seeded', ID: 'x' });
  });
});

test('bad layer= options are refused by name and leave no volume and no hold', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const base = importBase(s);
    const cases: [Record<string, string>, RegExp][] = [
      [{ layer: 'nope' }, /layer.*nope|nope.*not found/i],
      [{ layer: '../../etc' }, /invalid option layer=/],
      [{ layer: base, size: '64m' }, /invalid option size: a layered volume/],
      [{ layer: base, from: 'x' }, /invalid option from: a layered volume/],
    ];
    for (const [opts, err] of cases) {
      const r = await s.call('/VolumeDriver.Create', { Name: 'bad', Opts: opts });
      t.regex(String(r.json.Err), err, JSON.stringify(opts));
      t.is((await s.call('/VolumeDriver.Get', { Name: 'bad' })).status, 404);
    }
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes')), []);
    t.deepEqual(layerHolds(s.data), [], 'a refused Create leaves no layer hold');
  });
});

test('restarts: a held layered volume is mounted again after kill -9; its layer hold lives exactly as long as its record', async (t) => {
  await withServer(t, { root: true }, async (first) => {
    const base = importBase(first);
    await first.ok('/VolumeDriver.Create', { Name: 'lv', Opts: { layer: base } });
    const mp = (await first.ok('/VolumeDriver.Mount', { Name: 'lv', ID: 'c1' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'kept'), 'yes');
    await first.kill();
    // The crash also took the mounts (a plugin restarted in a fresh mount namespace).
    spawnSync('umount', [mp]);
    spawnSync('umount', [path.join(first.data, 'volumes', 'lv', '_data')]);
    // The hold and the record are one transaction (#10): a crash cannot leave one without the other.
    t.deepEqual(holdersOf(first.data, base), ['volume "lv"']);

    const s = await startTestServer({ dir: first.dir });
    try {
      t.true(isMounted(mp), 'the held volume is mounted again');
      t.is(fs.readFileSync(path.join(mp, 'kept'), 'utf8'), 'yes');
      t.is(fs.readFileSync(path.join(mp, 'etc/app.conf'), 'utf8'), 'color=blue\n');
      t.deepEqual(holdersOf(s.data, base), ['volume "lv"'], 'the hold survives the restart');
      await s.ok('/VolumeDriver.Unmount', { Name: 'lv', ID: 'c1' });
      await s.ok('/VolumeDriver.Remove', { Name: 'lv' });
      t.deepEqual(holdersOf(s.data, base), [], 'Remove dropped the hold with the record');
    } finally {
      await s.kill();
      cleanupDir(first.dir);
    }
  });
});
