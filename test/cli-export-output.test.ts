/**
 * Where `tsvol layer export`, `volume export` and `image save` write (src/cli/progress.ts writeOut). With
 * `-o FILE` the archive appears under FILE only once it is whole: an export that fails halfway leaves no
 * truncated archive there (an existing FILE keeps its contents) and no temp file beside it. A device given
 * as FILE (/dev/null) is written in place, never replaced. A terminal on standard output is refused, as
 * `docker save` refuses it. The CLI runs on a data root of its own, without a server.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { CLI, cleanupDir, requireRoot, tempDir } from './helpers/server.js';
import { mknod } from '../src/sys/libc.js';
import { simpleTar } from './helpers/tar-block.js';
import { requireTools } from './helpers/require.js';

requireTools('script');

function tsvol(dir: string, args: string[], timeout?: number): { status: number | null; stdout: Buffer; stderr: string } {
  const env = { ...process.env, TSVOL_DATA: path.join(dir, 'data'), TSVOL_SOCKET: path.join(dir, 'p.sock'), TSVOL_MOUNTS: path.join(dir, 'mnt') };
  const r = spawnSync(process.execPath, [CLI, ...args], { env, maxBuffer: 1 << 28, ...(timeout === undefined ? {} : { timeout }) });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** Imports a layer of two 3 MB files a and b; returns its ID and its diff directory. */
function importLayer(dir: string): { id: string; diff: string } {
  const tar = path.join(dir, 'l.tar');
  fs.writeFileSync(
    tar,
    simpleTar([
      { path: 'a', type: 'file', body: crypto.randomBytes(3_000_000) },
      { path: 'b', type: 'file', body: crypto.randomBytes(3_000_000) },
    ]),
  );
  const r = tsvol(dir, ['layer', 'import', tar]);
  if (r.status !== 0) throw new Error(r.stderr);
  const id = r.stdout.toString().trim();
  return { id, diff: path.join(dir, 'data', 'layers', 'diffs', id.slice('sha256:'.length)) };
}

test('-o FILE: a whole archive appears under FILE; an export failing halfway leaves FILE as it was and no temp file', (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-export-out-');
  try {
    const { id, diff } = importLayer(dir);
    const out = path.join(dir, 'out', 'layer.tar');
    fs.mkdirSync(path.dirname(out));
    const ok = tsvol(dir, ['layer', 'export', id, '-o', out]);
    t.is(ok.status, 0, ok.stderr);
    t.deepEqual(fs.readFileSync(out), tsvol(dir, ['layer', 'export', id]).stdout, 'the same bytes as to standard output');
    t.is(`sha256:${crypto.createHash('sha256').update(fs.readFileSync(out)).digest('hex')}`, id, 'byte-exact: its digest is the DiffID');

    // Damage the layer: its second file's body is gone, so the export fails after the first 3 MB.
    fs.writeFileSync(out, 'the archive from yesterday');
    fs.rmSync(path.join(diff, 'b'));
    const bad = tsvol(dir, ['layer', 'export', id, '-o', out]);
    t.not(bad.status, 0);
    t.regex(bad.stderr, /the body of "b" is no longer a file below the layer/);
    t.is(fs.readFileSync(out, 'utf8'), 'the archive from yesterday', 'FILE keeps its contents');
    t.deepEqual(fs.readdirSync(path.dirname(out)), ['layer.tar'], 'no temp file left beside it');

    const fresh = path.join(dir, 'out', 'new.tar');
    t.not(tsvol(dir, ['layer', 'export', id, '-o', fresh]).status, 0);
    t.false(fs.existsSync(fresh), 'no truncated archive under a new name');
    t.deepEqual(fs.readdirSync(path.dirname(out)), ['layer.tar']);
  } finally {
    cleanupDir(dir);
  }
});

test('-o /dev/null writes into the device and leaves it a device; a terminal on standard output is refused', (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-export-out-');
  try {
    const { id } = importLayer(dir);
    const before = fs.statSync('/dev/null');
    const r = tsvol(dir, ['layer', 'export', id, '-o', '/dev/null']);
    t.is(r.status, 0, r.stderr);
    const after = fs.statSync('/dev/null');
    t.true(after.isCharacterDevice(), '/dev/null is still a character device');
    t.is(after.rdev, before.rdev);
    t.is(after.ino, before.ino, 'the same inode: written in place, not renamed over');

    // script(1) gives the CLI a terminal as standard output.
    const env = { ...process.env, TSVOL_DATA: path.join(dir, 'data'), TSVOL_SOCKET: path.join(dir, 'p.sock') };
    const tty = spawnSync('script', ['-qec', `${process.execPath} ${CLI} layer export ${id}; echo "exit=$?"`, '/dev/null'], { env, encoding: 'utf8' });
    t.regex(tty.stdout, /refusing to write an archive to a terminal: give -o FILE or redirect standard output/);
    t.regex(tty.stdout, /exit=1/);
    t.true(tty.stdout.length < 4096, 'no archive bytes reached the terminal');
  } finally {
    cleanupDir(dir);
  }
});

test("-o onto another user's FIFO (planted at the name) is refused before a byte is written; a dangling symlink is replaced, not followed", async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir('tsvol-export-out-');
  try {
    const { id } = importLayer(dir);
    const fifo = path.join(dir, 'planted.tar');
    mknod(fifo, fs.constants.S_IFIFO | 0o600, 0);
    fs.chownSync(fifo, 65534, 65534); // nobody's, as in a world-writable /tmp
    // The planter reads (non-blocking, so the CLI's open for writing does not wait).
    const rfd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      // Killed after 15 s: a CLI that writes into the FIFO blocks once its pipe buffer is full.
      const r = tsvol(dir, ['layer', 'export', id, '-o', fifo], 15_000);
      t.not(r.status, 0);
      t.regex(r.stderr, /refusing to write to ".*planted\.tar": a FIFO owned by uid 65534/);
      const got = Buffer.alloc(1 << 16);
      let n = 0;
      try {
        n = fs.readSync(rfd, got);
      } catch (err) {
        // EAGAIN: nothing was written (the expected case).
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      }
      t.is(n, 0, 'no archive bytes reached the planted FIFO');
    } finally {
      fs.closeSync(rfd);
    }
    // A dangling symlink at the name: the archive is written by rename, replacing the link; nothing is
    // created where it pointed.
    const dangling = path.join(dir, 'dangling.tar');
    fs.symlinkSync(path.join(dir, 'elsewhere.tar'), dangling);
    const d = tsvol(dir, ['layer', 'export', id, '-o', dangling]);
    t.is(d.status, 0, d.stderr);
    t.false(fs.existsSync(path.join(dir, 'elsewhere.tar')));
    t.true(fs.lstatSync(dangling).isFile());
  } finally {
    cleanupDir(dir);
  }
});
