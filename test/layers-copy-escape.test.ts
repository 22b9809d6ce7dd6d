/**
 * The copy layer driver reads a running container's merged tree only through a pinned `Beneath` (#9): a
 * directory the container swaps for a symlink to a host directory while a diff or commit runs is never
 * followed, so nothing from outside the tree reaches a committed layer; symlinks in layers are copied as
 * symlinks, never followed while a chain is materialized.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startSwapper } from './helpers/swapper.js';
import { regularFiles } from './helpers/tree.js';
import { changesAsUpper, copyDiff, materialize } from '../src/layers/copy-driver.js';
import { cleanupDir, requireRoot, tempDir } from './helpers/server.js';
import { ATIME_NS, FILE_XATTRS, DIR_XATTRS, MTIME_NS, hexXattrs, plantMetaCases, readMeta } from './helpers/meta.js';

const SECRET = 'host secret: must never reach a layer';

test('materialize copies a layer symlink to outside as a symlink; a later layer\'s directory of that name replaces it', (t) => {
  if (!requireRoot(t)) return; // layers hold other owners' files
  const base = tempDir('tsvol-copy-escape-');
  t.teardown(() => cleanupDir(base));
  const outside = path.join(base, 'outside');
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'passwd'), SECRET);
  const lower = path.join(base, 'lower');
  const upper = path.join(base, 'upper');
  fs.mkdirSync(lower);
  fs.mkdirSync(path.join(upper, 'etc'), { recursive: true });
  fs.symlinkSync(outside, path.join(lower, 'etc'));
  fs.symlinkSync(outside, path.join(lower, 'link'));
  fs.writeFileSync(path.join(upper, 'etc', 'passwd'), 'layer passwd');
  const merged = path.join(base, 'merged');
  fs.mkdirSync(merged);
  materialize([upper, lower], merged);
  t.is(fs.readFileSync(path.join(outside, 'passwd'), 'utf8'), SECRET, 'outside untouched');
  t.true(fs.lstatSync(path.join(merged, 'etc')).isDirectory());
  t.is(fs.readlinkSync(path.join(merged, 'link')), outside);
  t.deepEqual(regularFiles(merged), new Map([['etc/passwd', 'layer passwd']]));
});

test('a directory of merged swapped for a symlink to outside while diff and commit run never brings outside files into the layer', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(180_000);
  const base = tempDir('tsvol-copy-escape-');
  t.teardown(() => cleanupDir(base));
  const outside = path.join(base, 'outside');
  fs.mkdirSync(outside);
  const lower = path.join(base, 'lower');
  fs.mkdirSync(path.join(lower, 'd'), { recursive: true });
  for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(lower, 'd', `f${i}`), 'lower');
  const merged = path.join(base, 'merged');
  fs.mkdirSync(merged);
  materialize([lower], merged);
  // The container adds files in d; outside holds files of the same names, with the secret.
  for (let i = 0; i < 200; i++) {
    fs.writeFileSync(path.join(merged, 'd', `n${i}`), 'added');
    fs.writeFileSync(path.join(outside, `n${i}`), SECRET);
    fs.writeFileSync(path.join(outside, `f${i}`), SECRET);
  }
  fs.symlinkSync(outside, path.join(merged, 'evil'));
  const hidden = path.join(merged, 'hidden');
  startSwapper(t, path.join(merged, 'd'), path.join(merged, 'evil'), hidden);
  let committed = 0;
  for (let i = 0; i < 15; i++) {
    for (const change of copyDiff([lower], merged)) t.false(/^\/(d|hidden|evil)\/[nf]\d+$/.test(change.path) && change.kind === 'C', `diff ${i}: ${change.path} compared with outside`);
    const upper = path.join(base, `upper${i}`);
    fs.mkdirSync(upper);
    try {
      changesAsUpper([lower], merged, upper);
      committed++;
    } catch (err) {
      // A commit that meets the swap mid-way may fail (the kernel refuses the symlink, or readlink finds the
      // symlink it saw replaced by a directory: EINVAL); it never copies.
      t.regex(String(err), /ELOOP|ENOENT|ENOTDIR|EINVAL|deleted while the commit ran/);
    }
    for (const [rel, content] of regularFiles(upper)) t.not(content, SECRET, `commit ${i}: ${rel} holds outside content`);
    fs.rmSync(upper, { recursive: true });
  }
  t.log(`${committed} of 15 commits completed under the race`);
  const after = regularFiles(outside);
  t.is(after.size, 400, 'nothing written into outside');
  for (const [rel, content] of after) t.is(content, SECRET, `outside/${rel} untouched`);
});

test('the copy driver carries owners, set-id modes, file xattrs and nanosecond times; overlay\'s own xattrs never (#10)', (t) => {
  if (!requireRoot(t)) return; // other owners, security.capability, trusted.* xattrs
  const base = tempDir('tsvol-copy-meta-');
  t.teardown(() => cleanupDir(base));
  const [layer, lower, merged, upper] = ['layer', 'lower', 'merged', 'upper'].map((d) => path.join(base, d)) as [string, string, string, string];
  for (const d of [layer, lower, merged, upper]) fs.mkdirSync(d);
  plantMetaCases(layer);
  // XATTRS.fileOnly: user.* and security.capability travel; trusted.overlay.* are layer form, not file data.
  const fileXattrs = hexXattrs(FILE_XATTRS, ['user.k', 'security.capability']);
  const dirXattrs = hexXattrs(DIR_XATTRS, ['user.d']);

  materialize([layer], merged);
  t.deepEqual(readMeta(path.join(merged, 'f')), { uid: 1000, gid: 1001, mode: '104755', xattrs: fileXattrs, atimeNs: ATIME_NS, mtimeNs: MTIME_NS }, 'materialize: file');
  t.deepEqual(readMeta(path.join(merged, 'd')), { uid: 42, gid: 43, mode: '42750', xattrs: dirXattrs, atimeNs: ATIME_NS, mtimeNs: MTIME_NS }, 'materialize: directory');
  t.like(readMeta(path.join(merged, 'l')), { uid: 7, gid: 8, xattrs: {}, atimeNs: ATIME_NS, mtimeNs: MTIME_NS }, 'materialize: symlink');

  // Commit form: merged against an empty chain, every entry added to the upper.
  changesAsUpper([lower], merged, upper);
  t.deepEqual(readMeta(path.join(upper, 'f')), { uid: 1000, gid: 1001, mode: '104755', xattrs: fileXattrs, atimeNs: ATIME_NS, mtimeNs: MTIME_NS }, 'commit: file');
  // A directory's atime moves when the diff reads it (relatime): its mtime is what the layer keeps.
  t.like(readMeta(path.join(upper, 'd')), { uid: 42, gid: 43, mode: '42750', xattrs: dirXattrs, mtimeNs: MTIME_NS }, 'commit: directory');
  t.like(readMeta(path.join(upper, 'l')), { uid: 7, gid: 8, xattrs: {}, mtimeNs: MTIME_NS }, 'commit: symlink');
});
