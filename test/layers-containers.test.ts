/**
 * Container layers on real overlayfs mounts, driven through the `tsvol container` CLI: copy-up leaves the
 * lower layers intact, diff reads like `docker diff`, commit round-trips deletions, opaque directories,
 * renames, ownership and permissions, and chains of 128 and 500 layers mount with the top layer winning.
 * (Cases from containerd's snapshotter suite.) Needs root: fails under CI=true without it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { openLayerStore } from './helpers/store.js';
import { createLayerStore } from '../src/layers/layer-store.js';
import { createLayout } from '../src/store/layout.js';
import { openMetaStore } from '../src/store/open.js';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { replaySplit } from '../src/layers/unpack.js';
import { CLI, cleanupDir, requireRoot, tempDir } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('tar', 'sleep');

interface Tsvol {
  (args: string[], input?: Buffer): string;
  fails(args: string[]): string;
  data: string;
}

function world(driver: string, data = path.join(tempDir('tsvol-ctr-'), 'data')): Tsvol {
  const run = (args: string[], input?: Buffer): { status: number | null; out: string; err: string } => {
    const env = { ...process.env, TSVOL_DATA: data, TSVOL_LAYER_DRIVER: driver };
    const r = spawnSync(process.execPath, [CLI, ...args], { env, input, maxBuffer: 1 << 26 });
    return { status: r.status, out: r.stdout.toString().trim(), err: r.stderr.toString() };
  };
  const fn = ((args: string[], input?: Buffer) => {
    const r = run(args, input);
    if (r.status !== 0) throw new Error(`tsvol ${args.join(' ')}: ${r.err}`);
    return r.out;
  }) as Tsvol;
  fn.fails = (args) => {
    const r = run(args);
    if (r.status === 0) throw new Error(`tsvol ${args.join(' ')} succeeded`);
    return r.err;
  };
  fn.data = data;
  return fn;
}

type Spec = [string, string | { dir: true; mode?: number } | { symlink: string }, Partial<TarHeader>?];

/** A layer tar from a list of entries. */
function layerTar(entries: Spec[]): Buffer {
  const parts: Buffer[] = [];
  for (const [p, what, extra] of entries) {
    const body = typeof what === 'string' ? Buffer.from(what) : Buffer.alloc(0);
    const type: TarHeader['type'] = typeof what === 'string' ? 'file' : 'dir' in what ? 'dir' : 'symlink';
    const mode = typeof what === 'object' && 'dir' in what ? (what.mode ?? 0o755) : 0o644;
    const linkname = typeof what === 'object' && 'symlink' in what ? what.symlink : '';
    parts.push(
      encodeHeader({ path: p, type, mode, uid: 0, gid: 0, size: body.length, mtime: 1_700_000_000, linkname, uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map(), ...extra }),
      body,
      Buffer.alloc(padding(body.length)),
    );
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** Imports a chain in-process (setup only: hundreds of CLI start-ups would dominate the suite). */
async function importChain(tsvol: Tsvol, layers: Spec[][]): Promise<string> {
  const store = openLayerStore(path.join(tsvol.data, 'layers'));
  let parent: string | undefined;
  for (const l of layers) parent = (await store.importLayer(Readable.from([layerTar(l)]), parent)).id;
  return parent!;
}

/**
 * One chain of 500 layers (each: `which` overwritten, and a file of its own), imported once per file for
 * the deep-chain tests, which share it read-only; `ids[i]` is the top of the first i+1 layers. 500 is the
 * kernel's * limit on lower layers. 128 layers' diff paths already make a lowerdir option far longer than the page
 * mount(2) takes, so both depths go through overlay's short links (overlay.ts).
 */
let deep: Promise<{ data: string; ids: string[] }> | undefined;
function deepChain(): Promise<{ data: string; ids: string[] }> {
  deep ??= (async () => {
    const data = path.join(tempDir('tsvol-ctr-deep-'), 'data');
    const store = openLayerStore(path.join(data, 'layers'));
    const ids: string[] = [];
    for (let i = 0; i < 500; i++) {
      ids.push((await store.importLayer(Readable.from([layerTar([['which', `layer ${i}\n`], [`only-${i}`, `${i}`]])]), ids[i - 1])).id);
    }
    return { data, ids };
  })();
  return deep;
}
test.after.always(async () => {
  if (deep !== undefined) cleanupDir(path.dirname((await deep).data));
});

/**
 * Checks that every layer of `data` not in `verified` exports to the bytes of its DiffID (a visible layer
 * is whole), and adds it to `verified`. Read in-process, as `tsvol layer export` reads it (replaySplit of
 * the split file), on a store opened for the check and closed after it: a CLI start-up per layer per round
 * was most of the crash tests' time. A layer never changes once visible, so each is read once per set.
 */
async function checkExports(t: { is(a: unknown, b: unknown, m?: string): void }, data: string, verified = new Set<string>()): Promise<void> {
  const { store } = openMetaStore(createLayout(data));
  try {
    const layers = createLayerStore(path.join(data, 'layers'), store);
    for (const l of layers.list()) {
      if (verified.has(l.id)) continue;
      const hash = createHash('sha256');
      for await (const b of layers.exportLayer(l.id)) hash.update(b);
      t.is(`sha256:${hash.digest('hex')}`, l.diffId, 'a visible layer is whole');
      verified.add(l.id);
    }
  } finally {
    await store.close();
  }
}

async function withWorld(t: { log: (m: string) => void; title: string }, fn: (tsvol: Tsvol) => Promise<void>): Promise<void> {
  if (!requireRoot(t)) return;
  const tsvol = world(t.title.startsWith('[copy]') ? 'copy' : 'overlay');
  try {
    await fn(tsvol);
  } finally {
    cleanupDir(path.dirname(tsvol.data));
  }
}

for (const driver of ['overlay', 'copy'] as const) {
  test(`[${driver}] writing a lower file copies it up; the lower layer never changes; rm discards the changes`, async (t) => {
    await withWorld(t, async (tsvol) => {
      const base = await importChain(tsvol, [[['etc/', { dir: true }], ['etc/motd', 'welcome\n']]]);
      const merged = tsvol(['container', 'create', 'web', '--from', base]);
      fs.appendFileSync(path.join(merged, 'etc', 'motd'), 'edited\n');
      t.is(fs.readFileSync(path.join(merged, 'etc', 'motd'), 'utf8'), 'welcome\nedited\n');
      const lower = path.join(tsvol.data, 'layers', 'diffs', base.slice(7), 'etc', 'motd');
      t.is(fs.readFileSync(lower, 'utf8'), 'welcome\n');
      t.is(tsvol(['container', 'diff', 'web']), 'C /etc\nC /etc/motd');
      tsvol(['container', 'rm', 'web']);
      const again = tsvol(['container', 'create', 'web2', '--from', base]);
      t.is(fs.readFileSync(path.join(again, 'etc', 'motd'), 'utf8'), 'welcome\n');
      tsvol(['container', 'rm', 'web2']);
    });
  });

  test(`[${driver}] commit round-trips additions, deletions, a directory removed and re-made (opaque), and renames`, async (t) => {
    await withWorld(t, async (tsvol) => {
      const base = await importChain(tsvol, [
        [
          ['app/', { dir: true }],
          ['app/keep', 'keep\n'],
          ['app/old-name', 'moved\n'],
          ['app/delete-me', 'bye\n'],
          ['cache/', { dir: true }],
          ['cache/a', '1'],
          ['cache/b', '2'],
        ],
      ]);
      const m = tsvol(['container', 'create', 'c', '--from', base]);
      fs.rmSync(path.join(m, 'app', 'delete-me'));
      fs.renameSync(path.join(m, 'app', 'old-name'), path.join(m, 'app', 'new-name'));
      fs.rmSync(path.join(m, 'cache'), { recursive: true });
      fs.mkdirSync(path.join(m, 'cache'));
      fs.writeFileSync(path.join(m, 'cache', 'fresh'), 'new');
      fs.writeFileSync(path.join(m, 'added'), 'added');
      const diff = tsvol(['container', 'diff', 'c']).split('\n');
      t.true(diff.includes('D /app/delete-me'));
      t.true(diff.includes('D /app/old-name'));
      t.true(diff.includes('A /app/new-name'));
      t.true(diff.includes('A /added'));
      const committed = tsvol(['container', 'commit', 'c']);
      tsvol(['container', 'rm', 'c']);
      const m2 = tsvol(['container', 'create', 'check', '--from', committed]);
      t.deepEqual(fs.readdirSync(path.join(m2, 'app')).sort(), ['keep', 'new-name']);
      t.is(fs.readFileSync(path.join(m2, 'app', 'new-name'), 'utf8'), 'moved\n');
      t.deepEqual(fs.readdirSync(path.join(m2, 'cache')), ['fresh'], 'the opaque directory hides the lower entries');
      t.is(fs.readFileSync(path.join(m2, 'added'), 'utf8'), 'added');
      // The committed layer is a real OCI diff: it carries OCI whiteouts, not overlay devices.
      const tar = spawnSync(process.execPath, [CLI, 'layer', 'export', committed], { env: { ...process.env, TSVOL_DATA: tsvol.data }, maxBuffer: 1 << 24 }).stdout;
      const names = spawnSync('tar', ['-t'], { input: tar }).stdout.toString().split('\n');
      t.true(names.includes('app/.wh.delete-me'));
      // overlay records the re-made directory as opaque; the copy driver whiteouts each old entry.
      if (driver === 'overlay') t.true(names.includes('cache/.wh..wh..opq'));
      else t.true(names.includes('cache/.wh.a') && names.includes('cache/.wh.b'));
      tsvol(['container', 'rm', 'check']);
    });
  });

  test(`[${driver}] chown and directory permissions survive commit`, async (t) => {
    await withWorld(t, async (tsvol) => {
      const base = await importChain(tsvol, [[['srv/', { dir: true }], ['srv/data', 'x']]]);
      const m = tsvol(['container', 'create', 'perm', '--from', base]);
      fs.chownSync(path.join(m, 'srv', 'data'), 1000, 1000);
      fs.mkdirSync(path.join(m, 'private'));
      fs.chmodSync(path.join(m, 'private'), 0o700);
      fs.chmodSync(path.join(m, 'srv'), 0o1777);
      const committed = tsvol(['container', 'commit', 'perm']);
      tsvol(['container', 'rm', 'perm']);
      const m2 = tsvol(['container', 'create', 'perm2', '--from', committed]);
      const st = fs.statSync(path.join(m2, 'srv', 'data'));
      t.deepEqual([st.uid, st.gid], [1000, 1000]);
      t.is(fs.statSync(path.join(m2, 'private')).mode & 0o7777, 0o700);
      t.is(fs.statSync(path.join(m2, 'srv')).mode & 0o7777, 0o1777);
      tsvol(['container', 'rm', 'perm2']);
    });
  });

  test(`[${driver}] a file deleted in a child layer and a directory removed in a lower layer stay gone`, async (t) => {
    await withWorld(t, async (tsvol) => {
      const top = await importChain(tsvol, [
        [['a/', { dir: true }], ['a/f', 'f'], ['b/', { dir: true }], ['b/g', 'g']],
        [['a/.wh.f', '']],
        [['.wh.b', '']],
        [['c', 'c']],
      ]);
      const m = tsvol(['container', 'create', 'gone', '--from', top]);
      t.deepEqual(fs.readdirSync(m).sort(), ['a', 'c']);
      t.deepEqual(fs.readdirSync(path.join(m, 'a')), []);
      tsvol(['container', 'rm', 'gone']);
    });
  });

  test(`[${driver}] a chain holding the same diff twice (identical layers) mounts`, async (t) => {
    await withWorld(t, async (tsvol) => {
      const top = await importChain(tsvol, [[['a', '1']], [['b', '2'], ['a', 'shadowed']], [['a', '1']]]);
      const m = tsvol(['container', 'create', 'twice', '--from', top]);
      t.is(fs.readFileSync(path.join(m, 'a'), 'utf8'), '1');
      t.is(fs.readFileSync(path.join(m, 'b'), 'utf8'), '2');
      tsvol(['container', 'rm', 'twice']);
    });
  });

  // The 128-layer chain is the first 128 layers of the 500-layer one: imported once for all four tests
  // (deepChain above), each container made from its own depth with its own driver.
  for (const depth of [128, 500]) {
    test(`[${driver}] a chain of ${depth} layers mounts and the top layer wins`, async (t) => {
      if (!requireRoot(t)) return;
      const chain = await deepChain();
      const tsvol = world(driver, chain.data);
      const name = `deep-${driver}-${depth}`;
      const m = tsvol(['container', 'create', name, '--from', chain.ids[depth - 1]!]);
      t.is(fs.readFileSync(path.join(m, 'which'), 'utf8'), `layer ${depth - 1}\n`);
      t.is(fs.readFileSync(path.join(m, 'only-0'), 'utf8'), '0');
      t.is(fs.readdirSync(m).length, depth + 1);
      tsvol(['container', 'rm', name]);
    });
  }
}

// Not per driver: what holds a layer is the container's record, the same whichever driver made its files.
test('a layer under a container or a child cannot be removed; the error names the holder', async (t) => {
  await withWorld(t, async (tsvol) => {
    const base = await importChain(tsvol, [[['x', 'x']]]);
    tsvol(['container', 'create', 'holder', '--from', base]);
    t.regex(tsvol.fails(['layer', 'rm', base]), /held by container layer "holder"/);
    tsvol(['container', 'rm', 'holder']);
    tsvol(['layer', 'rm', base]);
    t.is(tsvol(['layer', 'ls', '--json']), '[]');
  });
});

test('commit of an idle overlay container moves its files into the layer (no copy) and rebases the container', async (t) => {
  if (!requireRoot(t)) return;
  const tsvol = world('overlay');
  try {
    const base = await importChain(tsvol, [[['etc/', { dir: true }], ['etc/conf', 'v1'], ['old', 'old']]]);
    const merged = tsvol(['container', 'create', 'app', '--from', base]);
    fs.writeFileSync(path.join(merged, 'etc', 'conf'), 'v2');
    fs.writeFileSync(path.join(merged, 'big'), Buffer.alloc(1 << 20, 3));
    fs.rmSync(path.join(merged, 'old'));
    const before = fs.statSync(path.join(merged, 'big')).ino;
    const id = tsvol(['container', 'commit', 'app']);
    const layer = (JSON.parse(tsvol(['layer', 'ls', '--json'])) as { id: string; diffId: string; parent: string }[]).find((l) => l.id === id)!;
    t.is(layer.parent, base);
    const diffDir = path.join(tsvol.data, 'layers', 'diffs', layer.diffId.slice(7));
    t.is(fs.statSync(path.join(diffDir, 'big')).ino, before, 'the layer holds the very file the container wrote');
    t.is(tsvol(['container', 'diff', 'app']), '', 'the container now sits on the new layer');
    t.is(fs.readFileSync(path.join(merged, 'etc', 'conf'), 'utf8'), 'v2', 'and still shows the same files');
    t.false(fs.existsSync(path.join(merged, 'old')));
    fs.writeFileSync(path.join(merged, 'etc', 'conf'), 'v3');
    t.is(tsvol(['container', 'diff', 'app']), 'C /etc\nC /etc/conf');
    t.is(fs.readFileSync(path.join(diffDir, 'etc', 'conf'), 'utf8'), 'v2', 'writes after the commit never reach the layer');
    // The layer is a real, verifiable OCI diff.
    const tar = spawnSync(process.execPath, [CLI, 'layer', 'export', id], { env: { ...process.env, TSVOL_DATA: tsvol.data }, maxBuffer: 1 << 26 }).stdout;
    t.is(`sha256:${createHash('sha256').update(tar).digest('hex')}`, layer.diffId);
    t.true(spawnSync('tar', ['-t'], { input: tar }).stdout.toString().split('\n').includes('.wh.old'));
    t.regex(tsvol.fails(['layer', 'rm', id]), /held by container layer "app"/);
    tsvol(['container', 'rm', 'app']);
  } finally {
    cleanupDir(path.dirname(tsvol.data));
  }
});

test('commit of an overlay container in use copies its changes and leaves it running where it is', async (t) => {
  if (!requireRoot(t)) return;
  const tsvol = world('overlay');
  try {
    const base = await importChain(tsvol, [[['seed', 'seed']]]);
    const merged = tsvol(['container', 'create', 'live', '--from', base]);
    fs.writeFileSync(path.join(merged, 'state'), 'running');
    // A process working inside the container keeps its mount busy.
    const inside = spawn('sleep', ['30'], { cwd: merged, stdio: 'ignore' });
    try {
      const id = tsvol(['container', 'commit', 'live']);
      t.regex(id, /^sha256:/);
      t.is(tsvol(['container', 'diff', 'live']), 'A /state', 'not rebased: its changes are still its own');
      fs.writeFileSync(path.join(merged, 'state'), 'still running');
      const check = tsvol(['container', 'create', 'check', '--from', id]);
      t.is(fs.readFileSync(path.join(check, 'state'), 'utf8'), 'running', 'the layer is an independent copy');
      tsvol(['container', 'rm', 'check']);
    } finally {
      inside.kill('SIGKILL');
      await new Promise((r) => inside.once('exit', r));
    }
    tsvol(['container', 'rm', 'live']);
  } finally {
    cleanupDir(path.dirname(tsvol.data));
  }
});

test('kill -9 during a commit leaves no half-made layer; the container and a later commit are fine', async (t) => {
  if (!requireRoot(t)) return;
  const tsvol = world('overlay');
  try {
    const base = await importChain(tsvol, [[['seed', 'seed']]]);
    const merged = tsvol(['container', 'create', 'busy', '--from', base]);
    for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(merged, `f${i}`), Buffer.alloc(64 * 1024, i));
    const env = { ...process.env, TSVOL_DATA: tsvol.data, TSVOL_LAYER_DRIVER: 'overlay' };
    const verified = new Set<string>(); // layers seen whole after an earlier kill (immutable since)
    for (const [k, delay] of [100, 200, 260, 300, 340, 380, 420, 480, 560].entries()) {
      // New changes each round, so that every commit has real work to be killed in.
      for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(merged, `f${i}`), Buffer.alloc(64 * 1024, k + i));
      const child = spawn(process.execPath, [CLI, 'container', 'commit', 'busy'], { env, stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      await exited;
      await checkExports(t, tsvol.data, verified);
      // Wherever the kill landed, the container's next use shows every file, mounted again if need be.
      t.is(tsvol(['container', 'mount', 'busy']), merged);
      t.is(fs.readdirSync(merged).length, 301, `after a kill at ${delay} ms`);
      t.deepEqual(fs.readFileSync(path.join(merged, 'f7')), Buffer.alloc(64 * 1024, k + 7), 'the latest writes are all there');
      const rebased = tsvol(['container', 'diff', 'busy']) === '';
      t.log(`killed after ${delay} ms: ${rebased ? 'committed and rebased' : 'not committed'}`);
    }
    await checkExports(t, tsvol.data); // all of them again, once: no later kill harmed an earlier layer
    const id = tsvol(['container', 'commit', 'busy']);
    t.deepEqual(fs.readdirSync(path.join(tsvol.data, 'layers', 'containers', 'busy')).filter((f) => f.startsWith('upper')).length, 1, 'one upper directory left');
    tsvol(['container', 'rm', 'busy']);
    const check = tsvol(['container', 'create', 'check', '--from', id]);
    t.is(fs.readdirSync(check).length, 301);
    tsvol(['container', 'rm', 'check']);
    tsvol(['layer', 'gc']);
    t.deepEqual(fs.readdirSync(path.join(tsvol.data, 'layers', 'tmp')), []);
  } finally {
    cleanupDir(path.dirname(tsvol.data));
  }
});

// A commit of an idle container moves its upper directory whole into the layer store (#13). Each named
// crash point is a window of that move: after the journal (nothing moved), after the move (the upper is
// diffs/<hex>, no record), after the publish's renames (the same, in layer form), after the record and the
// switch were committed together. Whatever the window, gc run first must not take the container's files
// for debris, and the container's next use shows every file.
for (const point of ['container-commit:after-journal', 'adopt:after-move', 'layer-publish:after-rename', 'container-commit:after-switch'] as const) {
  test(`kill -9 at ${point} in a commit that moves the upper into the store: gc keeps it, the next use settles the commit`, async (t) => {
    if (!requireRoot(t)) return;
    const tsvol = world('overlay');
    try {
      const base = await importChain(tsvol, [[['seed', 'seed']]]);
      const merged = tsvol(['container', 'create', 'busy', '--from', base]);
      for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(merged, `f${i}`), `file ${i}`);
      fs.mkdirSync(path.join(merged, 'dir'));
      fs.writeFileSync(path.join(merged, 'dir', 'inner'), 'inner');
      const env = { ...process.env, TSVOL_DATA: tsvol.data, TSVOL_LAYER_DRIVER: 'overlay' };
      const r = spawnSync(process.execPath, [CLI, 'container', 'commit', 'busy'], { env: { ...env, TSVOL_CRASH_AT: point } });
      t.is(r.signal, 'SIGKILL', `the commit reached ${point}: ${r.stderr.toString()}`);
      const diffs = path.join(tsvol.data, 'layers', 'diffs');
      const moved = fs.readdirSync(diffs).filter((e) => /^[0-9a-f]{64}$/.test(e) && fs.existsSync(path.join(diffs, e, 'dir', 'inner')));
      if (point === 'adopt:after-move') {
        // The very tar the commit was making (same DiffID), imported meanwhile: refused, the upper untouched.
        t.is(moved.length, 1, 'the upper is in diffs/');
        const parts: Buffer[] = [];
        for await (const b of replaySplit(path.join(diffs, `${moved[0]}.split`), path.join(diffs, moved[0]!))) parts.push(Buffer.from(b));
        const tar = Buffer.concat(parts);
        const err = spawnSync(process.execPath, [CLI, 'layer', 'import', '-'], { env, input: tar }).stderr.toString();
        t.regex(err, /container layer "busy"'s upper, moved there by a commit that stopped midway/);
      }
      tsvol(['layer', 'gc']);
      t.is(tsvol(['container', 'mount', 'busy']), merged);
      t.deepEqual(fs.readdirSync(merged).sort(), ['dir', ...Array.from({ length: 50 }, (_, i) => `f${i}`), 'seed'].sort());
      t.is(fs.readFileSync(path.join(merged, 'f7'), 'utf8'), 'file 7');
      t.is(fs.readFileSync(path.join(merged, 'dir', 'inner'), 'utf8'), 'inner');
      const committed = tsvol(['container', 'diff', 'busy']) === '';
      t.is(committed, point === 'container-commit:after-switch', 'committed only once its record and switch were');
      await checkExports(t, tsvol.data);
      t.regex(tsvol(['container', 'commit', 'busy']), /^sha256:/, 'and it commits again');
      t.is(fs.readdirSync(path.join(tsvol.data, 'layers', 'containers', 'busy')).filter((f) => f.startsWith('upper')).length, 1, 'one upper directory left');
      tsvol(['layer', 'gc']);
      t.deepEqual(fs.readdirSync(path.join(tsvol.data, 'layers', 'tmp')), []);
    } finally {
      cleanupDir(path.dirname(tsvol.data));
    }
  });
}
