/**
 * The layer store through the `tsvol layer` CLI, on real tars made in the test with GNU tar and with our
 * own encoder (for hostile ones): exact round trips, whiteouts, binary xattrs, hardlinks, sharing,
 * refusals that leave nothing behind, holds and gc, and kill -9 during an import.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { openLayerStore } from './helpers/store.js';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { lgetxattr, lsetxattr } from '../src/sys/libc.js';
import { dirFlags, FS_TOPDIR_FL } from '../src/sys/dir-placement.js';
import { fsTypeOf } from '../src/sys/fs-type.js';
import { CLI, tempDir } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('tar', 'gzip');

function tsvol(data: string, args: string[], input?: Buffer): { code: number | null; out: string; err: string; raw: Buffer } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, TSVOL_DATA: data }, input, maxBuffer: 1 << 28 });
  return { code: r.status, out: r.stdout.toString().trim(), err: r.stderr.toString(), raw: r.stdout };
}

function gnuTar(dir: string): Buffer {
  const r = spawnSync('tar', ['--xattrs', '--xattrs-include=*', '--format=posix', '--numeric-owner', '-C', dir, '-c', '.'], { maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(r.stderr.toString());
  return r.stdout;
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A tree with what layers carry: binary xattrs, a hardlink, a symlink, a long name, owners, whiteouts. */
function richTree(dir: string): void {
  fs.mkdirSync(path.join(dir, 'etc', 'app'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'var', 'cache'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'etc', 'app', 'conf'), 'key=value\n');
  lsetxattr(path.join(dir, 'etc', 'app', 'conf'), 'user.blob', Buffer.from([0, 0xff, 0x80, 0xfe, 0x0a]));
  fs.linkSync(path.join(dir, 'etc', 'app', 'conf'), path.join(dir, 'etc', 'app', 'conf.hard'));
  fs.symlinkSync('../etc/app/conf', path.join(dir, 'var', 'link'));
  fs.writeFileSync(path.join(dir, 'var', 'cache', 'x'.repeat(180)), Buffer.alloc(70_000, 7));
  fs.chownSync(path.join(dir, 'var', 'cache'), 1234, 5678);
  fs.writeFileSync(path.join(dir, 'etc', '.wh.removed'), '');
  fs.writeFileSync(path.join(dir, 'var', '.wh..wh..opq'), '');
}

test('an imported layer exports to the identical bytes, so its DiffID verifies', (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    richTree(path.join(dir, 'src'));
    const tar = gnuTar(path.join(dir, 'src'));
    const data = path.join(dir, 'data');
    const imp = tsvol(data, ['layer', 'import', '-'], tar);
    t.is(imp.code, 0, imp.err);
    t.is(imp.out, sha(tar), 'a base layer: ChainID = DiffID = sha256 of the tar');
    const exp = tsvol(data, ['layer', 'export', imp.out]);
    t.is(exp.code, 0, exp.err);
    t.true(exp.raw.equals(tar), 'byte-identical re-export');
    t.is(sha(exp.raw), imp.out);
    // gzip of the same tar is the same layer
    const gz = spawnSync('gzip', ['-c'], { input: tar }).stdout;
    t.is(tsvol(data, ['layer', 'import', '-'], gz).out, imp.out);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('whiteouts become overlayfs whiteouts; xattrs, hardlinks, owners and long names survive', (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    richTree(path.join(dir, 'src'));
    const data = path.join(dir, 'data');
    const id = tsvol(data, ['layer', 'import', '-'], gnuTar(path.join(dir, 'src'))).out;
    const layer = path.join(data, 'layers', 'diffs', id.slice(7));
    const wh = fs.lstatSync(path.join(layer, 'etc', 'removed'));
    t.true(wh.isCharacterDevice());
    t.is(wh.rdev, 0);
    t.false(fs.existsSync(path.join(layer, 'etc', '.wh.removed')));
    t.deepEqual(lgetxattr(path.join(layer, 'var'), 'trusted.overlay.opaque'), Buffer.from('y'));
    t.false(fs.existsSync(path.join(layer, 'var', '.wh..wh..opq')));
    t.deepEqual(lgetxattr(path.join(layer, 'etc', 'app', 'conf'), 'user.blob'), Buffer.from([0, 0xff, 0x80, 0xfe, 0x0a]));
    const a = fs.statSync(path.join(layer, 'etc', 'app', 'conf'));
    t.is(a.ino, fs.statSync(path.join(layer, 'etc', 'app', 'conf.hard')).ino, 'hardlink kept');
    t.is(fs.readlinkSync(path.join(layer, 'var', 'link')), '../etc/app/conf');
    const cache = fs.statSync(path.join(layer, 'var', 'cache'));
    t.deepEqual([cache.uid, cache.gid], [1234, 5678]);
    t.is(fs.statSync(path.join(layer, 'var', 'cache', 'x'.repeat(180))).size, 70_000);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function entry(h: Partial<TarHeader> & { path: string }, body = Buffer.alloc(0)): Buffer {
  const header: TarHeader = {
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 1_700_000_000, linkname: '', uname: '', gname: '',
    devmajor: 0, devminor: 0, xattrs: new Map(), ...h,
  };
  return Buffer.concat([encodeHeader(header), body, Buffer.alloc(padding(body.length))]);
}
const end = Buffer.alloc(1024);

const hostile: [string, Buffer, RegExp][] = [
  ['parent traversal', Buffer.concat([entry({ path: '../escaped' }, Buffer.from('x')), end]), /climbs out with ".."/],
  ['absolute path', Buffer.concat([entry({ path: '/etc/evil' }, Buffer.from('x')), end]), /absolute path/],
  [
    'write through a symlinked parent',
    Buffer.concat([entry({ path: 'link', type: 'symlink', linkname: '/tmp' }), entry({ path: 'link/evil' }, Buffer.from('x')), end]),
    /goes through "link", which is not a directory/,
  ],
  ['hardlink to outside', Buffer.concat([entry({ path: 'h', type: 'hardlink', linkname: '../../etc/passwd' }), end]), /climbs out/],
  ['hardlink to a directory', Buffer.concat([entry({ path: 'd', type: 'dir', mode: 0o755 }), entry({ path: 'h', type: 'hardlink', linkname: 'd' }), end]), /not a file in this layer/],
  ['truncated archive', entry({ path: 'big' }, Buffer.alloc(4096, 1)).subarray(0, 1500), /ends inside the body of "big"/],
  ['not a tar', Buffer.from('this is not a tar archive at all'.repeat(40)), /checksum mismatch/],
];

for (const [label, tar, err] of hostile) {
  test(`a hostile tar is refused (${label}) and nothing is left behind`, (t) => {
    const dir = tempDir('tsvol-layer-');
    try {
      const data = path.join(dir, 'data');
      const r = tsvol(data, ['layer', 'import', '-'], tar);
      t.is(r.code, 1);
      t.regex(r.err, /tsvol: layer tar refused: /);
      t.regex(r.err, err);
      const layers = path.join(data, 'layers');
      t.deepEqual(JSON.parse(tsvol(data, ['layer', 'ls', '--json']).out), [], 'no layer record');
      t.deepEqual(fs.readdirSync(path.join(layers, 'diffs')), []);
      t.deepEqual(fs.readdirSync(path.join(layers, 'tmp')), []);
      t.false(fs.existsSync(path.join(dir, 'escaped')));
      t.false(fs.existsSync('/tmp/evil'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('two five-layer images sharing their first three layers store seven layers, not ten', (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    const data = path.join(dir, 'data');
    const layerTar = (name: string): Buffer => Buffer.concat([entry({ path: `${name}.txt` }, Buffer.from(`content of ${name}\n`)), end]);
    const build = (names: string[]): string[] => {
      const ids: string[] = [];
      for (const n of names) {
        const args = ['layer', 'import', '-', ...(ids.length ? ['--parent', ids.at(-1)!] : [])];
        const r = tsvol(data, args, layerTar(n));
        t.is(r.code, 0, r.err);
        ids.push(r.out);
      }
      return ids;
    };
    const a = build(['base', 'runtime', 'deps', 'app-a', 'config-a']);
    const b = build(['base', 'runtime', 'deps', 'app-b', 'config-b']);
    t.deepEqual(a.slice(0, 3), b.slice(0, 3));
    t.notDeepEqual(a[3], b[3]);
    const ls = JSON.parse(tsvol(data, ['layer', 'ls', '--json']).out) as unknown[];
    t.is(ls.length, 7);
    t.is(fs.readdirSync(path.join(data, 'layers', 'diffs')).filter((f) => !f.endsWith('.split')).length, 7);
    const history = JSON.parse(tsvol(data, ['layer', 'history', a[4]!, '--json']).out) as { id: string }[];
    t.deepEqual(history.map((h) => h.id), [...a].reverse());
    // The same diff on another parent is stored once.
    const other = tsvol(data, ['layer', 'import', '-', '--parent', b[4]!], layerTar('app-a'));
    t.not(other.out, a[3]);
    t.is(fs.readdirSync(path.join(data, 'layers', 'diffs')).filter((f) => !f.endsWith('.split')).length, 7);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a held layer cannot be removed, and the error says what holds it; rm of a tag untags; gc removes what nothing holds', (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    const data = path.join(dir, 'data');
    const base = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'a' }, Buffer.from('a')), end])).out;
    const child = tsvol(data, ['layer', 'import', '-', '--parent', base], Buffer.concat([entry({ path: 'b' }, Buffer.from('b')), end])).out;
    const rm = tsvol(data, ['layer', 'rm', base]);
    t.is(rm.code, 1);
    t.regex(rm.err, new RegExp(`is held by child layer ${child.slice(7, 19)}`));
    t.is(tsvol(data, ['layer', 'tag', child, 'keep']).code, 0);
    t.is(tsvol(data, ['layer', 'tag', child, 'also']).code, 0);
    const rmTagged = tsvol(data, ['layer', 'rm', child]);
    t.regex(rmTagged.err, /held by tag "also", tag "keep"|held by tag "keep", tag "also"/);
    // rm of a tag untags, like docker rmi; the layer stays while another tag holds it.
    const untag = tsvol(data, ['layer', 'rm', 'also']);
    t.is(untag.out, 'untagged also');
    t.is(tsvol(data, ['layer', 'history', 'keep', '--json']).code, 0, 'a name works wherever an ID does');
    const lone = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'lone' }, Buffer.from('z')), end])).out;
    fs.mkdirSync(path.join(data, 'layers', 'tmp', 'import-crashed', 'diff'), { recursive: true });
    const gc = tsvol(data, ['layer', 'gc', '--json']);
    t.deepEqual(JSON.parse(gc.out), [lone, 'tmp/import-crashed']);
    t.deepEqual((JSON.parse(tsvol(data, ['layer', 'ls', '--json']).out) as { id: string }[]).map((l) => l.id).sort(), [base, child].sort());
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('kill -9 during an import leaves no half-made layer; gc sweeps the staging debris', async (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    for (let i = 0; i < 400; i++) fs.writeFileSync(path.join(src, `f${i}`), Buffer.alloc(64 * 1024, i));
    const tarFile = path.join(dir, 'big.tar');
    fs.writeFileSync(tarFile, gnuTar(src));
    const data = path.join(dir, 'data');
    for (const delay of [30, 120, 250]) {
      const child = spawn(process.execPath, [CLI, 'layer', 'import', tarFile], { env: { ...process.env, TSVOL_DATA: data }, stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const ls = tsvol(data, ['layer', 'ls', '--json']);
      const layers = ls.code === 0 ? (JSON.parse(ls.out) as { id: string; diffId: string }[]) : [];
      for (const l of layers) {
        // A layer that is visible is whole: it exports to its DiffID.
        t.is(sha(tsvol(data, ['layer', 'export', l.id]).raw), l.diffId);
        tsvol(data, ['layer', 'rm', l.id]);
      }
    }
    // The killed imports left their locks; they go stale in seconds, then gc sweeps the staging debris.
    const gc = tsvol(data, ['layer', 'gc', '--json']);
    t.is(gc.code, 0, gc.err);
    t.deepEqual(fs.readdirSync(path.join(data, 'layers', 'tmp')), []);
    t.deepEqual(fs.readdirSync(path.join(data, 'layers', 'diffs')), []);
    const ok = tsvol(data, ['layer', 'import', tarFile]);
    t.is(ok.code, 0, ok.err);
    t.is(sha(tsvol(data, ['layer', 'export', ok.out]).raw), ok.out);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a volume holding a layer keeps it from rm and gc, and releasing it frees the layer', async (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    const data = path.join(dir, 'data');
    const id = tsvol(data, ['layer', 'import', '-'], Buffer.concat([entry({ path: 'seed' }, Buffer.from('s')), end])).out;
    const store = openLayerStore(path.join(data, 'layers'));
    await store.holdLayer(id, 'volume "db"');
    await store.holdLayer(id, 'volume "db"'); // idempotent
    t.regex(tsvol(data, ['layer', 'rm', id]).err, /is held by volume "db"; remove those first/);
    t.deepEqual(JSON.parse(tsvol(data, ['layer', 'gc', '--json']).out), []);
    await store.releaseLayer(id, 'volume "db"');
    await store.releaseLayer(id, 'volume "db"'); // releasing twice changes nothing
    t.is(tsvol(data, ['layer', 'rm', id]).code, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('each stage is an unrelated tree to ext4: layers/tmp carries the top-directory hint, which its stages do not inherit', async (t) => {
  const dir = tempDir('tsvol-layer-');
  try {
    if (fsTypeOf(dir).name !== 'ext2/3/4') {
      // The hint exists on ext2/3/4 only; elsewhere the store goes on without it (spreadSubdirs: false).
      if (process.env.CI === 'true') throw new Error(`needs the test directory on ext4, not ${fsTypeOf(dir).name}`);
      t.log(`SKIPPED LOUDLY: ${dir} is on ${fsTypeOf(dir).name}, not ext4`);
      t.pass();
      return;
    }
    const data = path.join(dir, 'data');
    const tmp = path.join(data, 'layers', 'tmp');
    const store = openLayerStore(path.join(data, 'layers'));
    t.is((dirFlags(tmp)! & FS_TOPDIR_FL) !== 0, true, 'layers/tmp is a top directory');
    const staged = await store.stageLayer((async function* () {
      yield Buffer.concat([entry({ path: 'a/b' }, Buffer.from('x')), end]);
    })());
    try {
      const stages = fs.readdirSync(tmp);
      t.is(stages.length, 1);
      t.is((dirFlags(path.join(tmp, stages[0]!))! & FS_TOPDIR_FL) !== 0, false, 'a stage is no top directory itself');
      t.is((dirFlags(path.join(tmp, stages[0]!, 'diff', 'a'))! & FS_TOPDIR_FL) !== 0, false);
    } finally {
      await staged.discard();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
