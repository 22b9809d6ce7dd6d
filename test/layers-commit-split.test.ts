/**
 * A commit records its layer's split file straight from the walk of the upper directory (#13), instead of
 * encoding the upper as a tar and parsing that tar back. These tests prove that nothing a user can see
 * changed: on a container whose upper holds hardlinks, xattrs, whiteouts, an opaque directory, devices, a
 * fifo, symlinks, a sparse file, empty files and long and non-ASCII names, the committed layer's DiffID is
 * the sha256 of the tar the tree writer makes of that upper (what the commit hashed before), its export
 * is that very tar byte for byte, and its split file and record are byte-identical to what importing that
 * same tar writes (the tar reader's split: what the commit recorded before). Needs root (overlay mounts):
 * fails under CI=true without it.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { createContainerStore } from '../src/layers/containers.js';
import { packTree } from '../src/layers/tree-archive.js';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { layersLayout } from '../src/store/layout.js';
import { lsetxattr, mknod } from '../src/sys/libc.js';
import { openLayerStore } from './helpers/store.js';
import { cleanupDir, requireRoot, tempDir } from './helpers/server.js';
import { buildRichTree } from './helpers/tree.js';
import { readMeta } from './helpers/meta.js';

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(b);
  return Buffer.concat(parts);
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A base layer: files to delete (whiteouts), a directory to remove and re-make (opaque), one to keep. */
function baseTar(): Buffer {
  const entries: [string, TarHeader['type'], string][] = [
    ['gone', 'file', 'deleted by the container'],
    ['remade/', 'dir', ''],
    ['remade/old-a', 'file', 'a'],
    ['remade/old-b', 'file', 'b'],
    ['kept/', 'dir', ''],
    ['kept/also-gone', 'file', 'x'],
    ['kept/stays', 'file', 'stays'],
  ];
  const parts: Buffer[] = [];
  for (const [p, type, text] of entries) {
    const body = Buffer.from(text);
    parts.push(
      encodeHeader({ path: p, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, size: body.length, mtime: 1_700_000_000, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map() }),
      body,
      Buffer.alloc(padding(body.length)),
    );
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

test('commit: the layer split from the walk has the same DiffID, export, split file and record as the tar it stands for', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-commit-split-');
  try {
    const root = path.join(dir, 'data', 'layers');
    const layers = openLayerStore(root);
    const containers = createContainerStore(root, layers, 'overlay');
    const base = await layers.importLayer(Readable.from([baseTar()]));
    const merged = await containers.create('rich', base.id);
    const m = (rel: string): string => path.join(merged, rel);
    // Everything a container can leave in its upper directory.
    fs.mkdirSync(m('rich'));
    buildRichTree(m('rich')); // hardlinks, user and trusted xattrs, symlinks, a 64 MiB sparse file, a fifo, a char device, setuid, empty file
    fs.rmSync(m('gone')); // a whiteout at the root
    fs.rmSync(m('kept/also-gone')); // a whiteout in a directory that stays
    fs.rmSync(m('remade'), { recursive: true });
    fs.mkdirSync(m('remade')); // opaque
    fs.writeFileSync(m('remade/new'), 'new');
    lsetxattr(m('remade'), 'user.on-opaque', Buffer.from('o'));
    mknod(m('rich/block-dev'), fs.constants.S_IFBLK | 0o600, (7 << 8) | 200);
    const long = `${'deep/'.repeat(25)}name-longer-than-the-ustar-field`;
    fs.mkdirSync(m(path.dirname(long)), { recursive: true });
    fs.writeFileSync(m(long), 'a pax path');
    fs.linkSync(m(long), m('hardlink-to-a-long-path'));
    fs.writeFileSync(m('naïve-ünïcode'), 'pax path, non-ASCII');
    fs.symlinkSync(`${'x'.repeat(150)}/target`, m('long-symlink'));

    // The tar the commit hashes, written by the tree writer from the upper directory before the commit.
    const upper = layersLayout(root).containerDirs('rich').upper;
    const tar = await collect(packTree(upper));
    const names = new Set<string>();
    for (let o = 0; o + 512 <= tar.length; o += 512) names.add(tar.toString('latin1', o, o + 100).replace(/\0.*$/s, ''));
    for (const n of ['.wh.gone', 'kept/.wh.also-gone', 'remade/.wh..wh..opq', 'rich/null-dev', 'rich/fifo', 'rich/dir/link-b']) {
      t.true(names.has(n), `the upper holds ${n}`);
    }

    const layer = await containers.commit('rich');
    t.is(layer.diffId, sha(tar), 'the DiffID is the sha256 of the tree writer\'s tar of the upper');
    t.true((await collect(layers.exportLayer(layer.id))).equals(tar), 'the export is that tar, byte for byte');

    // Importing the very same tar records the split file through the tar reader, as commit did before.
    const other = openLayerStore(path.join(dir, 'other', 'layers'));
    const otherBase = await other.importLayer(Readable.from([baseTar()]));
    const imported = await other.importLayer(Readable.from([tar]), otherBase.id);
    t.deepEqual({ ...layer, createdAt: '' }, { ...imported, createdAt: '' }, 'the same record: ID, DiffID, parent, size, files');
    const hex = layer.diffId.slice(7);
    const split = fs.readFileSync(layersLayout(root).splitFile(hex));
    t.true(split.equals(fs.readFileSync(layersLayout(path.join(dir, 'other', 'layers')).splitFile(hex))), 'the split files are byte-identical');
    // The layer's directory is the upper itself, moved (#13): its directories are in a layer's form, with
    // the owners, modes, xattrs and mtimes importing the same tar gives them (overlay's private xattrs
    // gone, but the opaque marker).
    const ours = layersLayout(root).diffDir(hex);
    const theirs = layersLayout(path.join(dir, 'other', 'layers')).diffDir(hex);
    const dirs = (top: string, rel = ''): string[] =>
      [rel, ...fs.readdirSync(path.join(top, rel), { withFileTypes: true }).filter((e) => e.isDirectory()).flatMap((e) => dirs(top, path.join(rel, e.name)))];
    t.deepEqual(dirs(ours).sort(), dirs(theirs).sort());
    for (const rel of dirs(theirs).filter((r) => r !== '')) {
      // A tar carries whole seconds: the imported mtime is the upper's, floored.
      const { atimeNs: _a, mtimeNs: wantNs, ...want } = readMeta(path.join(theirs, rel));
      const { atimeNs: _b, mtimeNs: gotNs, ...got } = readMeta(path.join(ours, rel));
      t.deepEqual({ ...got, mtime: gotNs / 1_000_000_000n }, { ...want, mtime: wantNs / 1_000_000_000n }, `directory ${rel}`);
    }
    await containers.remove('rich');
  } finally {
    cleanupDir(dir);
  }
});

test('commit: a regular file the container named .wh.* is refused, never written as a body-carrying whiteout', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-commit-split-');
  try {
    const root = path.join(dir, 'data', 'layers');
    const layers = openLayerStore(root);
    const containers = createContainerStore(root, layers, 'overlay');
    const base = await layers.importLayer(Readable.from([baseTar()]));
    const merged = await containers.create('odd', base.id);
    // Not a whiteout in the upper (a regular file with content). Before #13 the split file lost its body;
    // since then it was committed with it, but in a layer tar that name is a whiteout, which would delete
    // /not-a-whiteout wherever the layer is applied: now no layer carries it (tar/writer.ts; every commit
    // path: test/layers-whiteout-names.test.ts).
    fs.writeFileSync(path.join(merged, '.wh.not-a-whiteout'), 'real content!');
    const err = await t.throwsAsync(containers.commit('odd'));
    t.regex(err.message, /^"\/\.wh\.not-a-whiteout" cannot go into a layer/);
    t.deepEqual(layers.list().map((l) => l.id), [base.id]);
    await containers.remove('odd');
  } finally {
    cleanupDir(dir);
  }
});
