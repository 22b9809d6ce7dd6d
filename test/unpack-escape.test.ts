/**
 * Tar extraction stays below its root (#9 §2), for both unpackers: `tsvol layer import` (overlay whiteouts)
 * and `tsvol volume import` (plain names). The known exploits of the old "directories I made" cache are
 * concrete cases through the CLI; a fast-check property then throws archives built from colliding names,
 * symlinks into a sentinel tree, climbing and absolute links, hardlinks, whiteouts, opaque markers,
 * set-id files, xattrs, fifos and devices at the unpacker itself, and asserts that nothing outside the
 * staging root changes: accepted or refused, never escaped.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import fc from 'fast-check';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { TarReader } from '../src/layers/tar/reader.js';
import { toLayerForm, unpackLayer, type WhiteoutMode } from '../src/layers/unpack.js';
import { DIR_XATTRS, FILE_XATTRS, MTIME_NS, hexXattrs, plantMetaCases, readMeta } from './helpers/meta.js';
import { lgetxattr, llistxattr, lsetxattr, lutimesNs } from '../src/sys/libc.js';
import { CLI, requireRoot, tempDir } from './helpers/server.js';

/** One tar entry (header, body, padding). */
function entry(h: Partial<TarHeader> & { path: string }, body = Buffer.alloc(0)): Buffer {
  const header: TarHeader = {
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 1_700_000_000, linkname: '', uname: '', gname: '',
    devmajor: 0, devminor: 0, xattrs: new Map(), ...h,
  };
  return Buffer.concat([encodeHeader(header), body, Buffer.alloc(padding(body.length))]);
}
const tarOf = (...entries: Buffer[]): Buffer => Buffer.concat([...entries, Buffer.alloc(1024)]);

/**
 * Everything about the tree at `dir` (skipping `skip`) that an escape could change: names, types, modes,
 * owners, sizes, content, xattrs (trusted.* too), link counts, inode numbers, mtimes and ctimes (a ctime
 * moves on any chown, chmod, xattr, utimes or link, even one that sets the same value again).
 */
function fingerprint(dir: string, skip?: string): string {
  const lines: string[] = [];
  function visit(abs: string, rel: string): void {
    if (abs === skip) return;
    const st = fs.lstatSync(abs, { bigint: true });
    const xattrs = llistxattr(abs)
      .sort()
      .map((n) => `${n}=${lgetxattr(abs, n)?.toString('hex') ?? ''}`);
    let extra = '';
    if (st.isFile()) extra = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    else if (st.isSymbolicLink()) extra = fs.readlinkSync(abs);
    else if (st.isCharacterDevice() || st.isBlockDevice()) extra = String(st.rdev);
    lines.push([rel, st.mode.toString(8), st.uid, st.gid, st.size, st.nlink, st.ino, st.mtimeNs, st.ctimeNs, xattrs.join(','), extra].join(' '));
    if (st.isDirectory()) for (const name of fs.readdirSync(abs).sort()) visit(path.join(abs, name), `${rel}/${name}`);
  }
  visit(dir, '.');
  return lines.join('\n');
}

/** A sentinel tree outside every staging root: what an escape would hit. */
function buildSentinel(dir: string): void {
  fs.mkdirSync(path.join(dir, 'd', 'e'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'victim'), 'host data\n');
  fs.chmodSync(path.join(dir, 'victim'), 0o640);
  fs.writeFileSync(path.join(dir, 'secret'), 'host secret\n');
  fs.writeFileSync(path.join(dir, 'd', 'f'), 'deeper\n');
  lsetxattr(path.join(dir, 'd'), 'user.sentinel', Buffer.from('s'));
  fs.symlinkSync('victim', path.join(dir, 'lnk'));
  fs.utimesSync(path.join(dir, 'd'), 1_000_000_000, 1_000_000_000);
}

function tsvol(data: string, args: string[], input?: Buffer): { code: number | null; out: string; err: string } {
  const env = { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: path.join(data, '..', 'no-server.sock') };
  const r = spawnSync(process.execPath, [CLI, ...args], { env, input, maxBuffer: 1 << 26 });
  return { code: r.status, out: r.stdout.toString().trim(), err: r.stderr.toString() };
}

/** Entries under `dir` (none if it does not exist). */
const listing = (dir: string): string[] => (fs.existsSync(dir) ? fs.readdirSync(dir) : []);

/** The old cache's exploits: a directory, then a symlink to the outside replacing it, then entries below it. */
function exploits(outside: string): [string, Buffer][] {
  const dir = (p: string): Buffer => entry({ path: `${p}/`, type: 'dir', mode: 0o755 });
  const out = (p: string): Buffer => entry({ path: p, type: 'symlink', linkname: outside });
  return [
    ['setuid file outside', tarOf(dir('a'), out('a'), entry({ path: 'a/pwned', mode: 0o4755 }, Buffer.from('#!/bin/sh\nid\n')))],
    [
      'setuid file outside, after a file in the directory it replaced',
      tarOf(dir('a'), entry({ path: 'a/x' }, Buffer.from('x')), out('a'), entry({ path: 'a/pwned', mode: 0o4755 }, Buffer.from('#!/bin/sh\nid\n'))),
    ],
    ['whiteout deletes outside', tarOf(dir('b'), out('b'), entry({ path: 'b/.wh.victim' }))],
    ['opaque marker outside', tarOf(dir('o'), out('o'), entry({ path: 'o/.wh..wh..opq' }))],
    [
      'owner, mode, xattrs and times of an outside directory',
      tarOf(dir('c'), out('c'), entry({ path: 'c/d/', type: 'dir', mode: 0o777, uid: 4242, mtime: 5, xattrs: new Map([['user.pwned', Buffer.from('1')]]) })),
    ],
    ['device node outside', tarOf(dir('e'), out('e'), entry({ path: 'e/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3 }))],
    ['replace a host file', tarOf(dir('g'), out('g'), entry({ path: 'g/secret', mode: 0o644 }, Buffer.from('overwritten\n')))],
    ['hardlink to a host file', tarOf(dir('f'), out('f'), entry({ path: 'h', type: 'hardlink', linkname: 'f/secret' }))],
    ['hardlink into a symlinked parent', tarOf(entry({ path: 'x' }, Buffer.from('x')), dir('f'), out('f'), entry({ path: 'f/x', type: 'hardlink', linkname: 'x' }))],
  ];
}

for (const kind of ['layer', 'volume'] as const) {
  test(`${kind} import: the old cache's exploits are refused, nothing outside changes, nothing is created`, (t) => {
    if (!requireRoot(t)) return;
    const dir = tempDir('tsvol-escape-');
    try {
      const outside = path.join(dir, 'outside');
      fs.mkdirSync(outside);
      buildSentinel(outside);
      const data = path.join(dir, 'data');
      fs.mkdirSync(data, { mode: 0o700 }); // made now, so that the fingerprint of its parent covers the rest
      for (const [what, tar] of exploits(outside)) {
        const file = path.join(dir, 'evil.tar');
        fs.writeFileSync(file, tar);
        const before = fingerprint(dir, data);
        const r = kind === 'layer' ? tsvol(data, ['layer', 'import', file]) : tsvol(data, ['volume', 'import', 'evil', file]);
        const after = fingerprint(dir, data);
        fs.rmSync(file);
        t.is(r.code, 1, `${what}: ${r.err}`);
        t.regex(r.err, kind === 'layer' ? /^tsvol: layer tar refused: / : /^tsvol: import of volume "evil" refused: /, what);
        // A layer refuses the replacement itself when the directory held a body (its export needs it, #11).
        const why = kind === 'layer' && what.includes('after a file') ? /entry "a" replaces directory "a", which holds files/ : /goes through "[a-z]", which is not a directory \(a symlink\?\)/;
        t.regex(r.err, why, what);
        t.is(after, before, `${what}: nothing outside the data root changed`);
        if (kind === 'layer') {
          for (const sub of ['chains', 'diffs', 'tmp']) t.deepEqual(listing(path.join(data, 'layers', sub)), [], `${what}: layers/${sub}`);
        } else {
          t.deepEqual(listing(path.join(data, 'volumes')), [], `${what}: no volume`);
          t.deepEqual(listing(path.join(data, 'tmp')), [], `${what}: no staging debris`);
          t.deepEqual(JSON.parse(tsvol(data, ['volume', 'ls', '--json']).out), [], what);
        }
      }
      t.false(fs.existsSync(path.join(outside, 'pwned')));
      t.is(fs.readFileSync(path.join(outside, 'victim'), 'utf8'), 'host data\n');
      t.is(fs.statSync(path.join(outside, 'secret')).nlink, 1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('layer export reads bodies beneath the layer: a parent later replaced by a symlink leaks no host file', (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-escape-');
  try {
    const outside = path.join(dir, 'outside');
    fs.mkdirSync(outside);
    buildSentinel(outside); // outside/secret: "host secret\n", 12 bytes
    const data = path.join(dir, 'data');
    // The body of a/secret is recorded for byte-exact export. A tar that then makes `a` a symlink to the
    // host is refused at import (#11: its export could not give the body back)...
    const body = [entry({ path: 'a/', type: 'dir', mode: 0o755 }), entry({ path: 'a/secret' }, Buffer.from('layer bytes\n'))];
    const evil = tsvol(data, ['layer', 'import', '-'], tarOf(...body, entry({ path: 'a', type: 'symlink', linkname: outside })));
    t.is(evil.code, 1);
    t.regex(evil.err, /entry "a" replaces directory "a", which holds files whose bytes an earlier entry of this tar wrote/);
    // ...so the symlink is planted in the stored diff instead: export still reads beneath the layer.
    const imp = tsvol(data, ['layer', 'import', '-'], tarOf(...body));
    t.is(imp.code, 0, imp.err);
    const diff = path.join(data, 'layers', 'diffs', imp.out.slice('sha256:'.length));
    fs.rmSync(path.join(diff, 'a'), { recursive: true });
    fs.symlinkSync(outside, path.join(diff, 'a'));
    const env = { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: path.join(dir, 'no-server.sock') };
    const exp = spawnSync(process.execPath, [CLI, 'layer', 'export', imp.out], { env, maxBuffer: 1 << 26 });
    t.false(exp.stdout.includes(Buffer.from('host secret')), 'the host file is not in the export');
    t.is(exp.status, 1);
    t.regex(exp.stderr.toString(), /the body of "a\/secret" is no longer a file below the layer/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- The property: random archives from colliding names never reach outside the staging root. ----

/** Names that collide with each other on purpose (a directory, then a symlink or file of the same name). */
const NAMES = ['a', 'a/b', 'a/b/c', 'b', 'b/a', 'c', 'a/victim', 'b/victim', 'c/d', 'c/d/f', 'lnk', 'lnk/x'];
/** Names the overlay unpacker reads as whiteouts and opaque markers (plain names for volumes). */
const WHITEOUTS = ['.wh.a', '.wh.b', 'a/.wh.b', 'a/.wh.victim', 'b/.wh.victim', 'c/.wh.d', '.wh..wh..opq', 'a/.wh..wh..opq', 'c/d/.wh..wh..opq', '.wh.'];

type Spec =
  | { kind: 'dir'; name: string; mode: number; xattr: boolean }
  | { kind: 'file'; name: string; mode: number; xattr: boolean; uid: number }
  | { kind: 'symlink'; name: string; target: string }
  | { kind: 'hardlink'; name: string; target: string }
  | { kind: 'fifo' | 'char'; name: string; dev: [number, number]; xattr: boolean }
  | { kind: 'whiteout'; name: string };

/** The staging root sits four levels below the base, so no climbing link of the alphabet gets above it. */
const STAGE_DEPTH = ['w', 'x', 'y'];

function specArb(sentinel: string): fc.Arbitrary<Spec> {
  const name = fc.constantFrom(...NAMES);
  const mode = fc.constantFrom(0o755, 0o644, 0o4755, 0o2755, 0o6777, 0o1777, 0o000);
  // Symlink targets: relative inside, climbing (at most to the base), relative and absolute into the sentinel.
  const target = fc.constantFrom(
    'a', 'b/a', '.', '..', '../..', '../../..', '../../../..',
    '../../../../sentinel', '../../../../../sentinel', '../../../../../../sentinel/d',
    sentinel, `${sentinel}/d`, `${sentinel}/d/e`, `${sentinel}/victim`,
  );
  // Hardlink targets: names inside (maybe through a symlink into the sentinel), climbing, absolute.
  const linkTarget = fc.constantFrom(...NAMES, 'a/secret', 'lnk/secret', '../../../../sentinel/secret', `${sentinel}/secret`, 'a/../../secret');
  // Weighted so that about half the archives are accepted: hardlinks and xattrs on devices (user.* is
  // refused there) end most archives early.
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('dir' as const), name, mode, xattr: fc.boolean() }) },
    {
      weight: 4,
      arbitrary: fc.record({ kind: fc.constant('file' as const), name: fc.oneof(name, fc.constantFrom('a/pwned', 'lnk/pwned', 'a/b/pwned')), mode, xattr: fc.boolean(), uid: fc.constantFrom(0, 1000) }),
    },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('symlink' as const), name, target }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('hardlink' as const), name, target: linkTarget }) },
    {
      weight: 2,
      arbitrary: fc.record({ kind: fc.constantFrom('fifo' as const, 'char' as const), name, dev: fc.constantFrom<[number, number]>([0, 0], [1, 3]), xattr: fc.constantFrom(false, false, false, true) }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('whiteout' as const), name: fc.constantFrom(...WHITEOUTS) }) },
  );
}

function tarOfSpecs(specs: Spec[]): Buffer {
  const xattrs = (on: boolean): Map<string, Buffer> => (on ? new Map([['user.k', Buffer.from('v')], ['trusted.overlay.opaque', Buffer.from('y')]]) : new Map());
  const parts = [entry({ path: './', type: 'dir', mode: 0o755 })];
  for (const s of specs) {
    switch (s.kind) {
      case 'dir':
        parts.push(entry({ path: `${s.name}/`, type: 'dir', mode: s.mode, xattrs: xattrs(s.xattr), mtime: 1_000_000_001.5 }));
        break;
      case 'file':
        parts.push(entry({ path: s.name, mode: s.mode, uid: s.uid, gid: s.uid, xattrs: xattrs(s.xattr), mtime: 1_234_567_890.25 }, Buffer.from(`escaped ${s.name}\n`)));
        break;
      case 'symlink':
        parts.push(entry({ path: s.name, type: 'symlink', linkname: s.target }));
        break;
      case 'hardlink':
        parts.push(entry({ path: s.name, type: 'hardlink', linkname: s.target }));
        break;
      case 'fifo':
      case 'char':
        parts.push(entry({ path: s.name, type: s.kind, mode: 0o666, devmajor: s.dev[0], devminor: s.dev[1], xattrs: xattrs(s.xattr) }));
        break;
      case 'whiteout':
        parts.push(entry({ path: s.name }));
        break;
    }
  }
  return tarOf(...parts);
}

test('property: no archive of colliding names, links, whiteouts and devices changes anything outside the staging root', async (t) => {
  if (!requireRoot(t)) return;
  const base = tempDir('tsvol-escape-prop-');
  try {
    const sentinel = path.join(base, 'sentinel');
    fs.mkdirSync(sentinel);
    buildSentinel(sentinel);
    const parent = path.join(base, ...STAGE_DEPTH);
    fs.mkdirSync(parent, { recursive: true });
    const devNull = fs.openSync('/dev/null', 'w');
    let run = 0;
    const outcomes = { accepted: 0, refused: 0 };
    try {
      for (const mode of ['overlay', 'plain'] as WhiteoutMode[]) {
        await fc.assert(
          fc.asyncProperty(fc.array(specArb(sentinel), { minLength: 1, maxLength: 12 }), async (specs) => {
            const stage = path.join(parent, `stage-${run++}`);
            fs.mkdirSync(stage, { mode: 0o755 });
            const before = fingerprint(base, stage);
            const tar = tarOfSpecs(specs);
            try {
              await unpackLayer(new TarReader((async function* () { yield tar; })()), stage, devNull, { whiteouts: mode });
              outcomes.accepted++;
            } catch (err) {
              // Refusing is a fine outcome; only a programming error is not.
              if (err instanceof TypeError || err instanceof RangeError) throw err;
              outcomes.refused++;
            }
            const after = fingerprint(base, stage);
            fs.rmSync(stage, { recursive: true, force: true });
            if (after !== before) {
              throw new Error(`${mode} unpack changed something outside its root:\n${diffLines(before, after)}\narchive: ${JSON.stringify(specs)}`);
            }
            // Nothing new beside the staging root either (the fingerprint also covers this).
            if (fs.readdirSync(parent).length !== 0) throw new Error(`debris beside the staging root: ${fs.readdirSync(parent).join(', ')}`);
          }),
          { numRuns: 150 },
        );
      }
    } finally {
      fs.closeSync(devNull);
    }
    t.log(`${run} archives: ${outcomes.accepted} accepted, ${outcomes.refused} refused`);
    t.true(outcomes.accepted > 0 && outcomes.refused > 0, 'both outcomes were exercised');
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
});

/** The lines of `a` and `b` that differ, for a readable failure. */
function diffLines(a: string, b: string): string {
  const x = new Set(a.split('\n'));
  const y = new Set(b.split('\n'));
  return [...[...x].filter((l) => !y.has(l)).map((l) => `- ${l}`), ...[...y].filter((l) => !x.has(l)).map((l) => `+ ${l}`)].join('\n');
}

test('unpacked entries get owners, set-id modes, file xattrs and the pax mtime to the nanosecond; never overlay xattrs (#10)', async (t) => {
  if (!requireRoot(t)) return; // other owners, security.capability
  const base = tempDir('tsvol-unpack-meta-');
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const mtime = Number(MTIME_NS) / 1e9;
  const tar = tarOf(
    entry({ path: 'd/', type: 'dir', mode: 0o2750, uid: 42, gid: 43, mtime, mtimeNs: MTIME_NS, xattrs: new Map(DIR_XATTRS) }),
    entry({ path: 'd/inner', mtime, mtimeNs: MTIME_NS }, Buffer.from('inner\n')),
    entry({ path: 'f', mode: 0o4755, uid: 1000, gid: 1001, mtime, mtimeNs: MTIME_NS, xattrs: new Map(FILE_XATTRS) }, Buffer.from('file body\n')),
    entry({ path: 'l', type: 'symlink', linkname: 'f', uid: 7, gid: 8, mtime, mtimeNs: MTIME_NS }),
  );
  // XATTRS.fileOnly: an archive never sets trusted.overlay.* (#9); tar has no atime, so atime = mtime.
  const fileXattrs = hexXattrs(FILE_XATTRS, ['user.k', 'security.capability']);
  for (const mode of ['overlay', 'plain'] as WhiteoutMode[]) {
    const root = path.join(base, mode);
    fs.mkdirSync(root);
    const devNull = fs.openSync('/dev/null', 'w');
    try {
      await unpackLayer(new TarReader((async function* () { yield tar; })()), root, devNull, { whiteouts: mode });
    } finally {
      fs.closeSync(devNull);
    }
    t.deepEqual(readMeta(path.join(root, 'f')), { uid: 1000, gid: 1001, mode: '104755', xattrs: fileXattrs, atimeNs: MTIME_NS, mtimeNs: MTIME_NS }, mode);
    t.deepEqual(readMeta(path.join(root, 'd')), { uid: 42, gid: 43, mode: '42750', xattrs: hexXattrs(DIR_XATTRS, ['user.d']), atimeNs: MTIME_NS, mtimeNs: MTIME_NS }, mode);
    t.like(readMeta(path.join(root, 'l')), { uid: 7, gid: 8, xattrs: {}, mtimeNs: MTIME_NS }, mode);
  }
});

test('toLayerForm keeps a moved upper\'s directories\' owners, modes, xattrs and ns times, dropping overlay\'s own but the opaque marker (#10, #13)', (t) => {
  if (!requireRoot(t)) return; // other owners, trusted.* xattrs
  const base = tempDir('tsvol-layerform-meta-');
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const tree = path.join(base, 'tree');
  fs.mkdirSync(tree);
  plantMetaCases(tree);
  // What overlayfs leaves on an upper's directories: a redirect, an origin, the impure marker.
  for (const [k, v] of [['trusted.overlay.redirect', '/x'], ['trusted.overlay.impure', 'y'], ['trusted.overlay.origin', 'fh']] as const) lsetxattr(path.join(tree, 'd'), k, Buffer.from(v));
  lsetxattr(tree, 'trusted.overlay.impure', Buffer.from('y'));
  lutimesNs(path.join(tree, 'd'), MTIME_NS, MTIME_NS);
  const file = readMeta(path.join(tree, 'f'));
  toLayerForm(tree);
  // XATTRS.layerForm: the opaque marker is part of a layer's form; the others are not. The mtime unchanged
  // (the walk's own reads may touch atime, as linkTree's did).
  const { atimeNs: _atime, ...d } = readMeta(path.join(tree, 'd'));
  t.deepEqual(d, { uid: 42, gid: 43, mode: '42750', xattrs: hexXattrs(DIR_XATTRS, [...DIR_XATTRS.keys()]), mtimeNs: MTIME_NS });
  t.deepEqual(readMeta(tree).xattrs, {});
  t.deepEqual(readMeta(path.join(tree, 'f')), file, 'files are left as they are');
});
