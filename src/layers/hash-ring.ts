/**
 * A sha256 on a thread of its own, fed through a ring of buffers in shared memory (#13): the tree walk
 * that writes a layer's tar (tree-split.ts) fills one slot while the hash thread hashes the ones before,
 * so reading the files and hashing their bytes run on two cores instead of one after the other. No byte
 * is copied on the way: the tar writer writes straight into the slot it was given (Coalescer's `provide`).
 *
 * Layout of the SharedArrayBuffer: a control block of Int32s (HEAD: slots filled so far, TAIL: slots
 * hashed so far, then each slot's length), then SLOTS slots of SLOT bytes. The writer waits (Atomics.wait
 * on TAIL) only when all slots are full; the hash thread waits on HEAD when all are hashed. A length of -1
 * ends the stream. Both counters only grow; a slot is `count % SLOTS`.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** Slot size: the tar writer's buffer size for a hash (a full slot is handed over as it fills). */
export const SLOT = 1 << 20;
/** Slots in the ring: enough that a slow moment on either side does not stall the other. */
const SLOTS = 8;
const HEAD = 0;
const TAIL = 1;
const LEN = 2;
const CONTROL = (LEN + SLOTS) * 4;
/** The stream's end, as a slot length. */
const END = -1;

/** A ring's shared memory (createRing): handed to both threads. */
export type Ring = SharedArrayBuffer;

/** A new ring. */
export function createRing(): Ring {
  return new SharedArrayBuffer(CONTROL + SLOTS * SLOT);
}

/**
 * The writing side of a ring, on the walking thread: `acquire()` gives the next free slot (waiting while
 * every slot is still being hashed), `publish(n)` hands its first n bytes to the hash thread, `end()` ends
 * the stream (call it whatever happens: the hash thread runs until it sees the end).
 */
export class RingWriter {
  private readonly ctl: Int32Array;
  private head = 0;

  constructor(private readonly ring: Ring) {
    this.ctl = new Int32Array(ring, 0, LEN + SLOTS);
  }

  /** The slot to fill next, once the hash thread is done with it. */
  acquire(): Buffer {
    for (;;) {
      const tail = Atomics.load(this.ctl, TAIL);
      if (this.head - tail < SLOTS) break;
      Atomics.wait(this.ctl, TAIL, tail);
    }
    return Buffer.from(this.ring, CONTROL + (this.head % SLOTS) * SLOT, SLOT);
  }

  /** Hands the slot from acquire() over with its first `n` bytes. */
  publish(n: number): void {
    this.hand(n);
  }

  /** Ends the stream (no slot needed). */
  end(): void {
    this.acquire(); // the end marker takes a slot's length entry: wait for one to be free
    this.hand(END);
  }

  private hand(n: number): void {
    Atomics.store(this.ctl, LEN + (this.head % SLOTS), n);
    this.head++;
    Atomics.store(this.ctl, HEAD, this.head);
    Atomics.notify(this.ctl, HEAD);
  }
}

/**
 * The hash thread's loop: hashes every slot in order until the end marker; returns the hex digest. Runs
 * on a worker (it blocks in Atomics.wait between slots).
 */
export function drainRing(ring: Ring): string {
  const ctl = new Int32Array(ring, 0, LEN + SLOTS);
  const hash = createHash('sha256');
  for (let tail = 0; ; ) {
    const head = Atomics.load(ctl, HEAD);
    if (head === tail) {
      Atomics.wait(ctl, HEAD, head);
      continue;
    }
    const slot = tail % SLOTS;
    const n = Atomics.load(ctl, LEN + slot);
    if (n === END) return hash.digest('hex');
    hash.update(new Uint8Array(ring, CONTROL + slot * SLOT, n));
    tail++;
    Atomics.store(ctl, TAIL, tail);
    Atomics.notify(ctl, TAIL);
  }
}

/** A hash thread at work (hashRingInWorker). */
export interface RingHasher {
  /** The hex digest, once the stream has ended. */
  readonly digest: Promise<string>;
  /** Stops the thread (a writer that failed before it could end the stream). */
  stop(): void;
}

/**
 * drainRing on a worker thread of its own (the built .js, or under tsx, in tests importing src/, a
 * bootstrap that registers tsx in the worker first, as the other workers do).
 */
export function hashRingInWorker(ring: Ring): RingHasher {
  const worker = import.meta.url.endsWith('.ts')
    ? new Worker(
        `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./hash-ring-worker.ts', import.meta.url).href)}); })`,
        { eval: true, workerData: ring },
      )
    : new Worker(new URL('./hash-ring-worker.js', import.meta.url), { workerData: ring });
  const digest = new Promise<string>((resolve, reject) => {
    let settled = false;
    worker.once('message', (hex: string) => {
      settled = true;
      resolve(hex);
    });
    worker.once('error', (err) => {
      settled = true;
      reject(err);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`hash worker exited with code ${code} before answering`));
    });
  });
  return { digest, stop: () => void worker.terminate() };
}
