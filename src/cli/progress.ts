/**
 * A progress bar on stderr for long imports and exports, drawn only when stderr is a terminal (never
 * into a pipe or a log). With a known total it shows a bar and a percentage; otherwise bytes so far.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, errnoCode } from '../errors.js';

function mb(n: number): string {
  return `${(n / 1e6).toFixed(1)} MB`;
}

/** Passes `input` through, counting bytes and redrawing a one-line bar at most 5 times a second. */
export async function* withProgress(label: string, input: AsyncIterable<Buffer>, total?: number): AsyncGenerator<Buffer> {
  const tty = process.stderr.isTTY === true;
  let done = 0;
  let last = 0;
  const draw = (): void => {
    if (total !== undefined && total > 0) {
      const frac = Math.min(1, done / total);
      const width = 30;
      const filled = Math.round(frac * width);
      process.stderr.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${Math.round(frac * 100)}% ${mb(done)}/${mb(total)}`);
    } else {
      process.stderr.write(`\r${label} ${mb(done)}`);
    }
  };
  for await (const chunk of input) {
    done += chunk.length;
    if (tty && Date.now() - last > 200) {
      last = Date.now();
      draw();
    }
    yield chunk;
  }
  if (tty) {
    draw();
    process.stderr.write('\n');
  }
}

/** Writes all of `chunk` to `fd` (a write may take less than it is given). */
function writeAll(fd: number, chunk: Buffer): void {
  for (let off = 0; off < chunk.length; ) off += fs.writeSync(fd, chunk, off);
}

/**
 * Opens a FIFO or device `output` for writing in place: never created (no O_CREAT: a dangling symlink
 * makes nothing) nor truncated, and judged by what was opened (fstat of the fd, not the earlier stat).
 * One owned by another user than this process's (or root) is refused: an archive of people's data is not
 * handed to a FIFO or device someone else put under the name (a `/tmp/out.tar` planted before a root
 * export). Returns undefined for a regular file (the caller writes it by rename).
 */
function openInPlace(output: string): number | undefined {
  const fd = fs.openSync(output, fs.constants.O_WRONLY | fs.constants.O_NOCTTY);
  const st = fs.fstatSync(fd);
  const me = process.geteuid?.() ?? 0;
  if (st.isFile() || (st.uid !== me && st.uid !== 0)) {
    fs.closeSync(fd);
    if (st.isFile()) return undefined;
    throw new InvalidArgumentError(`refusing to write to "${output}": a ${st.isFIFO() ? 'FIFO' : st.isSocket() ? 'socket' : 'device'} owned by uid ${st.uid}, not by this user (uid ${me}) or root; give a path of your own`);
  }
  return fd;
}

/**
 * Writes a stream to `output` (chunks straight to the fd, with a progress bar on a terminal: a write
 * stream's async hops cost ~30% here) or to standard output (a pipe or a file: back-pressure respected, no
 * progress bar mixed into the data; a terminal is refused, as `docker save` refuses it).
 *
 * A regular file (or a name not there yet) is written as a temp file beside it, fsynced and renamed over
 * the name only once the stream has ended well, then the directory is fsynced: an export that fails
 * halfway (a server gone, a layer file damaged, Ctrl-C) never leaves a truncated archive under the name
 * asked for, and an existing file keeps its contents; once the command has succeeded the archive survives
 * power loss. Anything else (a FIFO, a device such as /dev/null, /dev/stdout) is written in place, since a
 * rename would replace it, if this user or root owns it (openInPlace).
 */
export async function writeOut(chunks: AsyncIterable<Buffer>, output: string | undefined, label = 'exporting'): Promise<void> {
  if (output === undefined) {
    if (process.stdout.isTTY === true) throw new InvalidArgumentError('refusing to write an archive to a terminal: give -o FILE or redirect standard output');
    for await (const chunk of chunks) {
      if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once('drain', r));
    }
    return;
  }
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(output);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  if (st !== undefined && !st.isFile()) {
    const fd = openInPlace(output);
    if (fd !== undefined) {
      try {
        for await (const chunk of withProgress(label, chunks)) writeAll(fd, chunk);
      } finally {
        fs.closeSync(fd);
      }
      return;
    }
    // A regular file now (swapped in since the stat): written beside it and renamed, as below.
  }
  const dir = path.dirname(path.resolve(output));
  // A user's file, not state: the CLI's own temp name and directory fsync (src/cli/ stays off sys/).
  const tmp = path.join(dir, `.${path.basename(output)}.tsvol-${randomBytes(6).toString('hex')}`);
  const fd = fs.openSync(tmp, 'wx', 0o644);
  // Interrupted (Ctrl-C, kill): the temp file goes, then the signal does what it would have done.
  const onSignal = (sig: NodeJS.Signals): void => {
    fs.rmSync(tmp, { force: true });
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal).once('SIGHUP', onSignal);
  let done = false;
  try {
    for await (const chunk of withProgress(label, chunks)) writeAll(fd, chunk);
    fs.fsyncSync(fd);
    done = true;
  } finally {
    fs.closeSync(fd);
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal).off('SIGHUP', onSignal);
    if (!done) fs.rmSync(tmp, { force: true });
  }
  fs.renameSync(tmp, output);
  const dirFd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}
