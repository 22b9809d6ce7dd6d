/**
 * A layer's unpack on a worker thread (#11): the gunzip, the DiffID's sha256, the tar reading, every
 * file's creation and metadata, the split file and the early writeback (stage-unpack.ts) run on an unpack
 * worker (unpack-worker.ts), so the store's thread keeps only receiving the bytes, its own bookkeeping
 * (the stage, its lock, the publish) and whatever its caller does with the bytes on the way (a pull's
 * blob digest and kept blob). A pull's main thread was busy unpacking nearly the whole pull; now it is
 * free for other requests.
 *
 * One worker per layer being unpacked, never one for two at once: a worker fed a layer's bytes as they
 * come waits on them, and a pull interleaves its blobs, so a worker shared by two layers would wait on
 * one while the sender waits on the other. Workers are kept for reuse between layers (a spawn took 80-90 ms
 * to come online and 145-170 ms to a first answer on the busy test VM) and end when idle a while.
 *
 * Two ways in, both bounded:
 * - a byte stream (a plain tar, a layer import): its bytes go over in batches of BATCH, copied from the
 *   source's chunks into a buffer whose memory is handed over (no second copy), and at most CREDITS
 *   batches are on their way or queued in the worker: the source is read as fast as the worker unpacks.
 *   Such a job waits for its turn (at most RUNNING run at once) unless told to start `now`: a pull's
 *   plain blobs, whose sender would otherwise wait on it while it waits for a turn their sender's other
 *   jobs hold.
 * - a GrowingFile (a gzip blob a pull or load keeps): the caller writes the blob's file and says how far;
 *   the worker reads the file itself. The writer never waits for the unpack (the disk is the buffer,
 *   bounded by the blob's size), so such a job may wait for its turn: at most RUNNING jobs run at once.
 *
 * Failures: a refused tar comes back with its kind and words (stage-unpack.ts tarRefusal); a failure of
 * the source stops the worker (abort) and is reported, as an unpack on this thread reports it, once the
 * worker has answered; a worker that dies fails its job with an InternalError once its thread has ended.
 * Either way the caller deletes the stage only after the worker has stopped writing into it.
 */
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { InternalError, errorOfCode, isErrorCode } from '../errors.js';
import { tarRefusal, type StagePaths, type StageUnpacked } from './stage-unpack.js';
import type { FromWorker, ToWorker, UnpackJob, UnpackResult, WireError } from './unpack-protocol.js';

/** Bytes per data message. */
const BATCH = 1 << 20;
/** Data messages on their way to a worker or queued in it, per job. */
const CREDITS = 4;
/** How long an idle worker is kept for the next layer. */
const IDLE_MS = 30_000;
/** Idle workers kept at most. */
const MAX_IDLE = 8;

/** A worker of the pool, and the job it runs. */
interface PoolWorker {
  readonly worker: Worker;
  /** Called with each message of the job being run. */
  onMessage: ((m: FromWorker) => void) | undefined;
  /** Called once when the thread has ended (a crash, or the idle end). */
  onExit: ((why: string) => void) | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  /** Why the thread failed ('error' event), reported once it has exited. */
  failure: string | undefined;
}

const idle: PoolWorker[] = [];
let spawned = 0;
let busy = 0;
let nextJob = 1;

/**
 * How many jobs run at once before a job reading a file waits for one to end (jobs fed by messages never
 * wait: see the module comment): one per core. More only time-share the cores, and each cold worker pays
 * its own JIT warm-up.
 */
const RUNNING = Math.max(1, os.availableParallelism());
/** Jobs reading a file, waiting for a running one to end. */
const waiting: (() => void)[] = [];

/**
 * A file being written by this thread (a blob it keeps) that an unpack reads as it grows: the writer says
 * how far it wrote, and when it ended or failed. The worker reads the file itself, so its bytes never
 * pass through this thread again, and the writer never waits for the unpack (the disk is the buffer).
 */
export class GrowingFile {
  written = 0;
  ended = false;
  failure: { readonly err: unknown } | undefined;
  private listener: (() => void) | undefined;
  /**
   * `fd`: the file opened for reading by its writer (O_NOFOLLOW, right after creating it exclusively). The
   * worker reads through that fd (threads share the process's fds), so the file is never opened again by
   * its path; the writer closes it once the job is over.
   */
  constructor(readonly fd: number) {}
  /** `bytes` more were written (and are readable). */
  grew(bytes: number): void {
    this.written += bytes;
    this.listener?.();
  }
  /** Nothing more will be written. */
  end(): void {
    this.ended = true;
    this.listener?.();
  }
  /** The writing failed: the unpack stops with `err` (as a failed source). */
  fail(err: unknown): void {
    this.failure ??= { err };
    this.listener?.();
  }
  /** @internal the job reading it */
  listen(fn: (() => void) | undefined): void {
    this.listener = fn;
  }
}

/** Counts for tests: workers started so far, those running a job now, idle ones, jobs waiting for a turn. */
export function unpackThreads(): { readonly spawned: number; readonly busy: number; readonly idle: number; readonly waiting: number } {
  return { spawned, busy, idle: idle.length, waiting: waiting.length };
}

/**
 * A new worker: the built .js, or, when running from source under tsx (tests importing src/), a bootstrap
 * that registers tsx in the worker first, as the other workers do. trackUnmanagedFds off: the unpack opens
 * its fds through FFI (sys/beneath.ts) and closes them with fs.closeSync.
 */
function spawnWorker(): PoolWorker {
  const worker = import.meta.url.endsWith('.ts')
    ? new Worker(`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./unpack-worker.ts', import.meta.url).href)}); })`, {
        eval: true,
        trackUnmanagedFds: false,
      })
    : new Worker(new URL('./unpack-worker.js', import.meta.url), { trackUnmanagedFds: false });
  spawned++;
  const pw: PoolWorker = { worker, onMessage: undefined, onExit: undefined, idleTimer: undefined, failure: undefined };
  worker.on('message', (m: FromWorker) => pw.onMessage?.(m));
  worker.on('error', (err) => {
    pw.failure ??= err.message;
  });
  worker.once('exit', (code) => {
    const at = idle.indexOf(pw);
    if (at >= 0) idle.splice(at, 1);
    if (pw.idleTimer !== undefined) clearTimeout(pw.idleTimer);
    pw.onExit?.(pw.failure ?? `its thread exited with code ${code}`);
  });
  return pw;
}

function take(): PoolWorker {
  const pw = idle.pop() ?? spawnWorker();
  if (pw.idleTimer !== undefined) clearTimeout(pw.idleTimer);
  pw.idleTimer = undefined;
  pw.worker.ref(); // the process stays alive while a job runs
  busy++;
  return pw;
}

/** Resolves once fewer than RUNNING jobs run (at once if they do). */
async function turn(): Promise<void> {
  if (busy >= RUNNING) await new Promise<void>((resolve) => waiting.push(resolve));
}

/** A job ended: its worker is free, and a job waiting for a turn may start. */
function jobEnded(): void {
  busy--;
  waiting.shift()?.();
}

function giveBack(pw: PoolWorker): void {
  jobEnded();
  pw.onMessage = undefined;
  pw.onExit = undefined;
  pw.worker.unref();
  if (idle.length >= MAX_IDLE) {
    void pw.worker.terminate();
    return;
  }
  pw.idleTimer = setTimeout(() => {
    // Out of the pool before it ends: a job taking it between terminate() and its exit would die with it.
    const at = idle.indexOf(pw);
    if (at >= 0) idle.splice(at, 1);
    void pw.worker.terminate();
  }, IDLE_MS);
  pw.idleTimer.unref();
  idle.push(pw);
}

/** An error from a worker, as the kind it was thrown as. */
function fromWire(e: WireError): Error {
  if (e.tsvol && isErrorCode(e.code)) return errorOfCode(e.code, e.message);
  return Object.assign(new Error(e.message), e.code === undefined ? {} : { code: e.code });
}

/** How a job ended, as the worker told it (or its thread's end). */
type Outcome = { readonly ok: true; readonly result: UnpackResult } | { readonly ok: false; readonly error: Error };

/**
 * Runs `job` on an unpack worker with the bytes of `input` (see the module comment); resolves to its
 * result once the worker has answered. The input is read until the job ends; if the job ends first (a
 * refused tar), the input is closed (`return()`), as a tar reader closes what it stops reading.
 */
async function runJob(input: AsyncIterable<Buffer>, job: UnpackJob, now: boolean): Promise<UnpackResult> {
  // Waiting holds the source back (it is not read meanwhile): fine unless its sender also feeds a job
  // that holds a turn (a pull's interleaved blobs), which then says `now`.
  if (!now) await turn();
  const pw = take();
  const id = nextJob++;
  let outcome: Outcome | undefined;
  let settle!: () => void;
  const ended = new Promise<void>((r) => (settle = r));
  let credits = CREDITS;
  let wakeFeeder: (() => void) | undefined;
  const wake = (): void => {
    const w = wakeFeeder;
    wakeFeeder = undefined;
    w?.();
  };
  let alive = true;
  pw.onMessage = (m) => {
    if (m.id !== id) return;
    if (m.t === 'ack') credits++;
    else if (outcome === undefined) outcome = m.t === 'done' ? { ok: true, result: m.result } : { ok: false, error: fromWire(m.error) };
    if (m.t !== 'ack') settle();
    wake();
  };
  pw.onExit = (why) => {
    alive = false;
    outcome ??= { ok: false, error: new InternalError(`the layer's unpack worker died (${why}); the layer was not stored: try again`) };
    settle();
    wake();
  };
  const post = (m: ToWorker, transfer?: ArrayBuffer[]): void => {
    if (alive) pw.worker.postMessage(m, transfer);
  };
  post({ t: 'job', id, job, source: { kind: 'messages' }, crashAt: process.env.TSVOL_CRASH_AT });

  const it = input[Symbol.asyncIterator]();
  let sourceFailure: { err: unknown } | undefined;
  let batch = Buffer.allocUnsafeSlow(BATCH);
  let fill = 0;
  /** Sends the batch once a credit is free; false if the job ended meanwhile. */
  const flush = async (): Promise<boolean> => {
    while (credits === 0 && outcome === undefined) await new Promise<void>((r) => (wakeFeeder = r));
    if (outcome !== undefined) return false;
    credits--;
    const buf = batch.buffer as ArrayBuffer;
    post({ t: 'data', id, buf, len: fill }, [buf]);
    batch = Buffer.allocUnsafeSlow(BATCH);
    fill = 0;
    return true;
  };
  let reading = true;
  let abandoned = false;
  try {
    feed: while (outcome === undefined) {
      const next = it.next();
      // The job may end while the source is quiet (a tar refused from bytes sent before): stop waiting.
      const r = await Promise.race([next, ended.then(() => undefined)]);
      if (r === undefined) {
        next.catch(() => undefined); // settles later; the input is closed below
        abandoned = true;
        break;
      }
      if (r.done === true) {
        reading = false;
        if (fill > 0 && !(await flush())) break;
        post({ t: 'end', id });
        break;
      }
      const chunk = r.value;
      for (let off = 0; off < chunk.length; ) {
        const n = chunk.copy(batch, fill, off);
        fill += n;
        off += n;
        if (fill === BATCH && !(await flush())) break feed;
      }
    }
  } catch (err) {
    // The source failed: the worker stops, and its answer is awaited before the caller cleans up.
    reading = false;
    sourceFailure = { err };
    post({ t: 'abort', id });
  }
  await ended;
  if (alive) giveBack(pw);
  else jobEnded();
  if (reading) {
    // Closed as a tar reader closes what it stops reading. A next() still pending (a quiet source) would
    // hold a generator's return() until it settles: then the close goes on without being waited for.
    const closing = it.return?.();
    if (abandoned) closing?.catch(() => undefined);
    else await closing;
  }
  if (sourceFailure !== undefined) throw tarRefusal(sourceFailure.err);
  if (!outcome!.ok) throw outcome!.error;
  return outcome!.result;
}

/**
 * Runs `job` on an unpack worker reading `file` as it grows, once fewer than RUNNING jobs run; resolves to
 * its result once the worker has answered. A failure of the file's writer stops the worker (abort) and is
 * reported as a failed source.
 */
async function runFileJob(file: GrowingFile, job: UnpackJob): Promise<UnpackResult> {
  if (busy >= RUNNING) {
    // Waits without holding anything up: the file's writer goes on (it never waits for this job). A
    // failure of the writer meanwhile ends the wait.
    await new Promise<void>((resolve) => {
      waiting.push(resolve);
      file.listen(() => {
        if (file.failure === undefined) return;
        waiting.splice(waiting.indexOf(resolve), 1);
        resolve();
      });
    });
    file.listen(undefined);
    if (file.failure !== undefined) throw tarRefusal(file.failure.err);
  }
  const pw = take();
  const id = nextJob++;
  let outcome: Outcome | undefined;
  let alive = true;
  const ended = new Promise<void>((settle) => {
    pw.onMessage = (m) => {
      if (m.id !== id || m.t === 'ack') return;
      outcome ??= m.t === 'done' ? { ok: true, result: m.result } : { ok: false, error: fromWire(m.error) };
      settle();
    };
    pw.onExit = (why) => {
      alive = false;
      outcome ??= { ok: false, error: new InternalError(`the layer's unpack worker died (${why}); the layer was not stored: try again`) };
      settle();
    };
  });
  const post = (m: ToWorker): void => {
    if (alive && outcome === undefined) pw.worker.postMessage(m);
  };
  post({ t: 'job', id, job, source: { kind: 'file', fd: file.fd, written: file.written, ended: file.ended }, crashAt: process.env.TSVOL_CRASH_AT });
  let told = file.written;
  let stopped = file.ended;
  const update = (): void => {
    if (stopped) return;
    if (file.failure !== undefined) {
      stopped = true;
      post({ t: 'abort', id });
      return;
    }
    // Told in steps of a batch, not per chunk written: the worker reads what it was told of.
    if (file.written - told >= BATCH || file.ended) {
      told = file.written;
      post({ t: 'grew', id, written: told });
    }
    if (file.ended) {
      stopped = true;
      post({ t: 'end', id });
    }
  };
  file.listen(update);
  update();
  try {
    await ended;
  } finally {
    file.listen(undefined);
  }
  if (alive) giveBack(pw);
  else jobEnded();
  if (file.failure !== undefined && stopped && !file.ended) throw tarRefusal(file.failure.err);
  if (!outcome!.ok) throw outcome!.error;
  return outcome!.result;
}

/** An unpack's input: a byte stream, or a file being written (GrowingFile). */
export type UnpackInput = AsyncIterable<Buffer> | GrowingFile;

/** How an unpack starts: `now` (a byte stream only) skips the wait for a turn. */
export interface UnpackStart {
  /**
   * Start at once, even past RUNNING jobs: for a byte stream whose sender feeds other jobs too (a pull's
   * interleaved blobs), which would wait on this one while it waits for them.
   */
  readonly now?: boolean;
}

const run = (input: UnpackInput, job: UnpackJob, start: UnpackStart): Promise<UnpackResult> =>
  input instanceof GrowingFile ? runFileJob(input, job) : runJob(input, job, start.now === true);

/**
 * Unpacks the layer tar `input` (plain or gzip) into the stage `paths` on an unpack worker: what
 * stage-unpack.ts unpackIntoStage does, with the same results and errors, off this thread.
 */
export async function unpackIntoStageOffThread(paths: StagePaths, input: UnpackInput, start: UnpackStart = {}): Promise<StageUnpacked> {
  return (await run(input, { kind: 'stage', paths }, start)) as StageUnpacked;
}

/** stage-unpack.ts hashLayerTar on an unpack worker. */
export async function hashLayerTarOffThread(input: UnpackInput, start: UnpackStart = {}): Promise<{ diffId: string; tarSize: number }> {
  return run(input, { kind: 'hash' }, start);
}
