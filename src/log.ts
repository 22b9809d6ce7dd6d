/**
 * The pino root logger. JSON lines on stdout: dockerd copies a managed plugin's stdout into its own log
 * with `plugin=<id>`. Modules take child loggers with fields, never interpolated messages.
 */
import fs from 'node:fs';
import { pino, type Logger } from 'pino';
import { errnoCode } from './errors.js';

export type { Logger };

/** How long a full pipe is waited for before the buffered lines are tried again. */
const RETRY_MS = 20;
/** How long the exit flush keeps trying a full pipe (dockerd reads it; a stuck reader must not hang exit). */
const EXIT_FLUSH_MS = 2000;

/** A pino destination: `write` takes one serialized line. */
export interface LineDestination {
  write(line: string): void;
  /** Writes what is buffered now, waiting (up to EXIT_FLUSH_MS) for a full pipe: at exit. */
  flushSync(): void;
}

/**
 * Writes each line to `fd` at once, with one write(2) on the calling thread, and buffers only when the pipe
 * is full. pino's default destination writes every line from the thread pool instead: under the Docker
 * benchmark that trip cost the event loop ~160 µs per line (waking a pool thread preempts it on a loaded
 * 2-core machine), more than the write itself (#13). stdout is non-blocking (Node sets O_NONBLOCK on a
 * pipe), so a write never blocks: a pipe dockerd has not drained yet answers EAGAIN, and the lines then
 * wait, in order, in memory and are retried every RETRY_MS off the event loop, as pino's default would
 * buffer them. A reader that went away (EPIPE) ends the output; any other failure drops the line and
 * says so once on stderr.
 * Not pino.destination({ sync: true }) (sonic-boom): it writes on the calling thread too, but on EAGAIN it
 * sleeps that thread (Atomics.wait) until the pipe drains, so a slow reader in dockerd would stall every
 * request.
 */
export function createLineDestination(fd: number): LineDestination {
  let pending: Buffer[] = [];
  let retry: NodeJS.Timeout | undefined;
  let closed = false;
  let warned = false;

  /** Writes as much of `buf` as the pipe takes now; returns what is left, or undefined on a dead reader. */
  const writeSome = (buf: Buffer): Buffer | undefined => {
    let off = 0;
    while (off < buf.length) {
      let n: number;
      try {
        n = fs.writeSync(fd, buf, off);
      } catch (err) {
        const code = errnoCode(err);
        if (code === 'EAGAIN') return buf.subarray(off);
        if (code === 'EPIPE') {
          closed = true; // nobody reads our stdout any more (pino's default stops too)
          return undefined;
        }
        if (!warned) {
          warned = true;
          process.stderr.write(`tsvol: writing the log failed, lines dropped: ${String(err)}\n`);
        }
        return Buffer.alloc(0);
      }
      off += n;
    }
    return Buffer.alloc(0);
  };

  const drain = (): void => {
    retry = undefined;
    const left = writeSome(pending.length === 1 ? pending[0]! : Buffer.concat(pending));
    pending = left === undefined || left.length === 0 ? [] : [left];
    if (pending.length > 0) retry = setTimeout(drain, RETRY_MS).unref();
  };

  return {
    write(line) {
      if (closed) return;
      if (pending.length > 0) {
        pending.push(Buffer.from(line)); // behind lines still waiting: order is kept
        return;
      }
      // The common case: the whole line in one write, no copy into a Buffer first.
      try {
        const n = fs.writeSync(fd, line);
        if (n === Buffer.byteLength(line)) return;
        pending = [Buffer.from(line).subarray(n)];
      } catch (err) {
        if (errnoCode(err) !== 'EAGAIN') {
          writeSome(Buffer.from(line)); // EPIPE ends the output; anything else is reported once
          return;
        }
        pending = [Buffer.from(line)];
      }
      retry ??= setTimeout(drain, RETRY_MS).unref();
    },
    flushSync() {
      if (retry !== undefined) clearTimeout(retry);
      retry = undefined;
      const deadline = Date.now() + EXIT_FLUSH_MS;
      while (pending.length > 0 && !closed) {
        const left = writeSome(Buffer.concat(pending));
        pending = left === undefined || left.length === 0 ? [] : [left];
        if (pending.length > 0) {
          if (Date.now() > deadline) return; // a reader that never drains: give up rather than hang exit
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5); // a short sleep, then try again
        }
      }
    },
  };
}

/** Creates the root logger at `level` writing JSON lines to stdout. */
export function createLogger(level: string): Logger {
  // Node makes a stdout pipe non-blocking when process.stdout is first used (as pino's default destination
  // does): done here, so that a write to a pipe dockerd has not drained answers EAGAIN instead of blocking.
  const fd = process.stdout.fd;
  const dest = createLineDestination(fd);
  process.once('exit', () => dest.flushSync());
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}
