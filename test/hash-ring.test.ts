/**
 * The commit's walk hashes its tar on another thread through a ring of 1 MiB slots (src/layers/hash-ring.ts,
 * #13): the DiffID is the sha256 of exactly the tar the tree writer makes, also when the tar is many times
 * the ring (the writer waits for slots and wraps around), and a walk that fails ends both threads with its
 * error instead of leaving the hash thread waiting.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { packTree } from '../src/layers/tree-archive.js';
import { hashTreeInWorker } from '../src/layers/tree-split.js';
import { tempDir } from './helpers/server.js';

test('the ring hash of a tree 4× the ring is the sha256 of the tree writer\'s tar', async (t) => {
  const dir = tempDir('tsvol-hash-ring-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tree = path.join(dir, 'tree');
  fs.mkdirSync(path.join(tree, 'd'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'big'), randomBytes(24 << 20)); // 24 slots' worth in one body
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(tree, 'd', `f${i}`), randomBytes(40_000 + i)); // bodies across slot edges
  const want = createHash('sha256');
  let bytes = 0;
  for await (const b of packTree(tree)) {
    want.update(b);
    bytes += b.length;
  }
  const got = await hashTreeInWorker(tree, path.join(dir, 'split'));
  t.true(bytes > 32 << 20, `a tar of ${bytes} bytes`);
  t.is(got.diffId, `sha256:${want.digest('hex')}`);
  t.deepEqual(got.stats, { size: (24 << 20) + 300 * 40_000 + (299 * 300) / 2, files: 302 }); // big, d/ and its 300 files
});

test('a walk that fails rejects with its error, and the hash thread ends with it', async (t) => {
  const dir = tempDir('tsvol-hash-ring-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'tree'));
  fs.writeFileSync(path.join(dir, 'tree', 'f'), 'x');
  fs.writeFileSync(path.join(dir, 'split'), 'taken'); // the split file must be new: the walk fails at once
  const err = await t.throwsAsync(hashTreeInWorker(path.join(dir, 'tree'), path.join(dir, 'split')));
  t.is((err as NodeJS.ErrnoException).code, 'EEXIST');
  const missing = await t.throwsAsync(hashTreeInWorker(path.join(dir, 'no-such-tree'), path.join(dir, 'split2')));
  t.is((missing as NodeJS.ErrnoException).code, 'ENOENT');
});
