/**
 * A container file named like a whiteout (`/etc/.wh.passwd`, `/.wh..wh..opq`) cannot go into a layer: in
 * the layer tar format that name IS a whiteout, so the layer would delete `/etc/passwd` (or hide a whole
 * directory) wherever it is applied, by Docker as by tsvol's own import; the format has no escape. A commit
 * of such a container is refused with InvalidArgument naming the path, stores nothing, and leaves the
 * container as it was (mounted, same files, same diff); a genuine deletion (an overlay whiteout device)
 * still commits as an OCI whiteout once the name is gone. For each way a commit is made: an idle overlay
 * container (its upper moved into the store), one in use (its changes copied), the copy driver.
 * Needs root (mounts): fails under CI=true without it.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import test from 'ava';
import { createContainerStore } from '../src/layers/containers.js';
import { layersLayout } from '../src/store/layout.js';
import { isMountRoot } from '../src/sys/libc.js';
import { openLayerStore } from './helpers/store.js';
import { simpleTar } from './helpers/tar-block.js';
import { cleanupDir, requireRoot, tempDir } from './helpers/server.js';
import { requireTools } from './helpers/require.js';

requireTools('tar', 'sleep', 'mknod');

/** A layer tar of etc/ with passwd and group. */
function baseTar(): Buffer {
  return simpleTar([
    { path: 'etc/', type: 'dir' },
    { path: 'etc/group', type: 'file', body: Buffer.from('root:x:0:\n') },
    { path: 'etc/passwd', type: 'file', body: Buffer.from('root:x:0:0::/root:/bin/sh\n') },
  ]);
}

/** The entry names of a layer's exported tar, as tar(1) lists them. */
async function tarNames(tar: AsyncIterable<Buffer>): Promise<string[]> {
  const parts: Buffer[] = [];
  for await (const b of tar) parts.push(Buffer.from(b));
  return spawnSync('tar', ['-t'], { input: Buffer.concat(parts) }).stdout.toString().split('\n');
}

const cases = [
  { title: 'an idle overlay container (commit moves its upper)', driver: 'overlay', busy: false },
  { title: 'an overlay container in use (commit copies its changes)', driver: 'overlay', busy: true },
  { title: 'a copy-driver container', driver: 'copy', busy: false },
] as const;

for (const c of cases) {
  test(`commit of ${c.title} holding a file named .wh.*: refused by path, nothing stored, the container intact; a real deletion still commits as a whiteout`, async (t) => {
    if (!requireRoot(t)) return;
    const dir = tempDir('tsvol-whname-');
    try {
      const root = path.join(dir, 'data', 'layers');
      const layers = openLayerStore(root);
      const containers = createContainerStore(root, layers, c.driver);
      const base = await layers.importLayer(Readable.from([baseTar()]));
      const merged = await containers.create('web', base.id);
      fs.rmSync(path.join(merged, 'etc', 'group')); // a genuine deletion: an overlay whiteout device
      fs.writeFileSync(path.join(merged, 'etc', '.wh.passwd'), 'a file the container wrote');
      const diffBefore = await containers.diff('web');
      const stored = (): string[] => fs.readdirSync(layersLayout(root).diffsDir).sort();
      const storedBefore = stored();
      const inside = c.busy ? spawn('sleep', ['30'], { cwd: merged, stdio: 'ignore' }) : undefined;
      try {
        const err = await t.throwsAsync(containers.commit('web'));
        t.is((err as { code?: string }).code, 'TSVOL_INVALID_ARGUMENT');
        t.is(
          err.message,
          '"/etc/.wh.passwd" cannot go into a layer: a name starting with .wh. is a whiteout in the layer tar format, which would delete /etc/passwd wherever the layer is applied; rename or delete it, then commit again',
        );
        t.deepEqual(layers.list().map((l) => l.id), [base.id], 'no layer');
        t.deepEqual(stored(), storedBefore, 'no diff stored');
        t.deepEqual(await containers.diff('web'), diffBefore, 'the container keeps its changes');
        t.is(fs.readFileSync(path.join(merged, 'etc', '.wh.passwd'), 'utf8'), 'a file the container wrote');
        t.false(fs.existsSync(path.join(merged, 'etc', 'group')));
        t.is(fs.readFileSync(path.join(merged, 'etc', 'passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
        if (c.driver === 'overlay') t.true(isMountRoot(merged), 'still mounted');

        // An opaque marker's name at the top: refused the same way, saying what it would do.
        fs.writeFileSync(path.join(merged, '.wh..wh..opq'), '');
        const opq = await t.throwsAsync(containers.commit('web'));
        t.regex(opq.message, /^"\/\.wh\.\.wh\.\.opq" cannot go into a layer: .* which would make \/ opaque \(hide everything below it\) wherever/);
        fs.rmSync(path.join(merged, '.wh..wh..opq'));

        // A 0/0 character device, overlayfs's mark of a deletion: overlayfs refuses to make one; in the
        // copy driver's plain merged tree it is made, and its commit refuses it rather than delete the file.
        const dev0 = spawnSync('mknod', [path.join(merged, 'etc', 'dev0'), 'c', '0', '0']);
        if (c.driver === 'overlay') t.not(dev0.status, 0, 'overlayfs refuses to make a whiteout device');
        else {
          t.is(dev0.status, 0, String(dev0.stderr));
          const d = await t.throwsAsync(containers.commit('web'));
          t.is((d as { code?: string }).code, 'TSVOL_INVALID_ARGUMENT');
          t.regex(d.message, /^"\/etc\/dev0" cannot go into a layer: it is a character device 0\/0/);
          t.deepEqual(layers.list().map((l) => l.id), [base.id], 'no layer');
          t.true(fs.lstatSync(path.join(merged, 'etc', 'dev0')).isCharacterDevice(), 'the container keeps it');
          fs.rmSync(path.join(merged, 'etc', 'dev0'));
        }

        fs.renameSync(path.join(merged, 'etc', '.wh.passwd'), path.join(merged, 'etc', 'passwd.new'));
        const layer = await containers.commit('web');
        const names = await tarNames(layers.exportLayer(layer.id));
        t.true(names.includes('etc/.wh.group'), 'the deletion is a whiteout');
        t.true(names.includes('etc/passwd.new'));
        t.false(names.some((n) => n.includes('.wh.passwd')));
      } finally {
        inside?.kill('SIGKILL');
        if (inside !== undefined) await new Promise((r) => inside.once('exit', r));
      }
    } finally {
      cleanupDir(dir);
    }
  });
}
