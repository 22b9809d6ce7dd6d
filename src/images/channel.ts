/**
 * A bounded queue between producers and one consumer, as an async iterable (#11): a pull's demultiplexer
 * hands each layer's bytes to that layer's unpacker through one, so several layers stream at once while
 * memory stays bounded (the producer waits while `capacity` chunks are queued). A consumer that stops
 * early (return(), as a refused tar does) never blocks the producer again: what it pushes later is
 * dropped, so the producer can still drain and hash its source.
 */

/** A bounded queue: any number of producers, one consumer. */
export class Channel<T> implements AsyncIterable<T> {
  private readonly queue: T[] = [];
  private ended = false;
  private failure: { err: unknown } | undefined;
  private stopped = false;
  private wakeConsumer: (() => void) | undefined;
  /** Producers waiting for room (a pull's downloads share one channel). */
  private producers: (() => void)[] = [];

  constructor(private readonly capacity = 8) {}

  /** True once the consumer has stopped (what is pushed from now on is dropped). */
  get closed(): boolean {
    return this.stopped;
  }

  /** Queues `value`; resolves once there is room again (at once when the consumer has stopped). */
  async push(value: T): Promise<void> {
    if (this.stopped) return;
    if (this.ended) throw new Error('push after end');
    this.queue.push(value);
    this.wake('consumer');
    while (this.queue.length > this.capacity && !this.stopped) await new Promise<void>((r) => this.producers.push(r));
  }

  /** No more values: the consumer ends once it has taken the queued ones. */
  end(): void {
    this.ended = true;
    this.wake('consumer');
  }

  /** The consumer's next read throws `err` (after the values queued before). */
  fail(err: unknown): void {
    this.failure ??= { err };
    this.ended = true;
    this.wake('consumer');
  }

  private wake(who: 'consumer' | 'producers'): void {
    if (who === 'consumer') {
      const w = this.wakeConsumer;
      this.wakeConsumer = undefined;
      w?.();
      return;
    }
    const waiting = this.producers;
    this.producers = [];
    for (const w of waiting) w();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: async (): Promise<IteratorResult<T>> => {
        for (;;) {
          if (this.queue.length > 0) {
            const value = this.queue.shift()!;
            this.wake('producers');
            return { value, done: false };
          }
          if (this.failure !== undefined) throw this.failure.err;
          if (this.ended || this.stopped) return { value: undefined, done: true };
          await new Promise<void>((r) => (this.wakeConsumer = r));
        }
      },
      return: async (): Promise<IteratorResult<T>> => {
        this.stopped = true;
        this.queue.length = 0;
        this.wake('producers');
        return { value: undefined, done: true };
      },
    };
  }
}

/** How long a consumer of readAhead runs before the event loop gets a turn to read more (ms; #11). */
const YIELD_MS = 2;

/**
 * `input`, read ahead of its consumer into a queue of up to `chunks` chunks (a request body's are at most
 * 64 KiB: 16 MiB by default). An upload from the CLI then keeps flowing while the store unpacks what came
 * before, instead of the two processes waking each other every socket buffer (~200 KiB); on a busy
 * two-core machine each such hand-off waits for a core. The consumer gives the event loop a turn every
 * YIELD_MS, so the reading goes on while it works (a load: the store's idle time fell from about a
 * quarter to a few percent). A consumer that stops early stops the reading.
 */
export async function* readAhead(input: AsyncIterable<Buffer>, chunks = 256): AsyncGenerator<Buffer> {
  const chan = new Channel<Buffer>(chunks);
  const pump = (async () => {
    try {
      for await (const c of input) {
        await chan.push(c);
        if (chan.closed) break;
      }
      chan.end();
    } catch (err) {
      chan.fail(err);
    }
  })();
  let turn = performance.now();
  try {
    for await (const c of chan) {
      // The consumer (an unpack) runs on promises that are settled already, so the event loop's poll phase,
      // where the pump reads the socket, would not come round until the queue is empty: the sender would
      // stall on a full socket buffer meanwhile, and the two would take turns instead of running at once.
      if (performance.now() - turn > YIELD_MS) {
        await new Promise<void>((r) => setImmediate(r));
        turn = performance.now();
      }
      yield c;
    }
  } finally {
    await chan[Symbol.asyncIterator]().return?.();
    await pump;
  }
}
