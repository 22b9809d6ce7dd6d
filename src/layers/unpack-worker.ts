/**
 * Worker-thread entry of the unpack workers (unpack-thread.ts, #11): runs one job at a time, a layer tar
 * fed by the main thread in data messages, unpacked into a stage (stage-unpack.ts) or only hashed, and
 * answers its result or its error. The Beneath walks (sys/beneath.ts) bind libc through koffi in this
 * thread as in any other.
 */
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { TsvolError, describeError, errnoCode } from '../errors.js';
import { hashLayerTar, unpackIntoStage } from './stage-unpack.js';
import { WORKER_CRASH_POINT, type FromWorker, type JobSource, type ToWorker, type UnpackResult, type WireError } from './unpack-protocol.js';

/** Bytes per read of a job's file. */
const FILE_READ = 1 << 20;

const port = parentPort!;
const send = (m: FromWorker): void => port.postMessage(m);

/** The job being run: its id and its input's queue. */
let current: { readonly id: number; readonly input: Inbox } | undefined;

/**
 * A job's bytes as they come: data messages (the main thread sends a few at most ahead: its credits, so no
 * bound here), or reads of the file the main thread writes, up to what it said it wrote.
 */
class Inbox implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private ended = false;
  private aborted = false;
  private wake: (() => void) | undefined;
  private taken = 0;
  /** A job reading a file: its fd, how far it was read, how far it was written. */
  private readonly file: { fd: number; read: number; written: number } | undefined;
  constructor(
    private readonly id: number,
    source: JobSource,
    private readonly crashAt: string | undefined,
  ) {
    if (source.kind === 'file') {
      this.file = { fd: source.fd, read: 0, written: source.written }; // the writer's fd: it closes it
      this.ended = source.ended;
    }
  }

  /** The next bytes of the file, if more were written than read. */
  private fromFile(): Buffer | undefined {
    const f = this.file;
    if (f === undefined || f.read >= f.written) return undefined;
    const buf = Buffer.allocUnsafeSlow(Math.min(FILE_READ, f.written - f.read));
    const n = fs.readSync(f.fd, buf, 0, buf.length, f.read);
    if (n === 0) throw new Error(`the kept blob ${f.read} bytes in ended early`);
    f.read += n;
    return buf.subarray(0, n);
  }

  put(m: ToWorker): void {
    if (m.t === 'data') this.queue.push(Buffer.from(m.buf, 0, m.len));
    else if (m.t === 'grew' && this.file !== undefined) this.file.written = m.written;
    else if (m.t === 'end') this.ended = true;
    else if (m.t === 'abort') this.aborted = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return {
      next: async (): Promise<IteratorResult<Buffer>> => {
        for (;;) {
          if (this.aborted) throw new Error('the layer source failed');
          const value = this.file !== undefined ? this.fromFile() : this.queue.shift();
          if (value !== undefined) {
            // A test's thread crash, mid-unpack: the stage holds part of the layer by now.
            if (this.taken++ === 1 && this.crashAt === WORKER_CRASH_POINT) process.exit(70);
            if (this.file === undefined) send({ t: 'ack', id: this.id });
            return { value, done: false };
          }
          if (this.ended) return { value: undefined, done: true };
          await new Promise<void>((r) => (this.wake = r));
        }
      },
      // The unpack stopped early (a refused tar): it answers at once; what still comes is dropped.
      return: async (): Promise<IteratorResult<Buffer>> => {
        this.queue.length = 0;
        return { value: undefined, done: true };
      },
    };
  }
}

function wireError(err: unknown): WireError {
  return { message: describeError(err), code: errnoCode(err), tsvol: err instanceof TsvolError };
}

async function run(id: number, m: Extract<ToWorker, { t: 'job' }>): Promise<void> {
  let reply: FromWorker;
  try {
    const input = new Inbox(id, m.source, m.crashAt);
    current = { id, input };
    const result: UnpackResult = m.job.kind === 'stage' ? await unpackIntoStage(m.job.paths, input) : await hashLayerTar(input);
    reply = { t: 'done', id, result };
  } catch (err) {
    reply = { t: 'failed', id, error: wireError(err) };
  }
  current = undefined;
  send(reply);
}

port.on('message', (m: ToWorker) => {
  if (m.t === 'job') {
    void run(m.id, m);
    return;
  }
  if (current?.id === m.id) current.input.put(m);
});
