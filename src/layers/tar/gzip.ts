/** Plain or gzip tar input, told apart by the first bytes (layer imports, volume imports). */
import { Readable, pipeline, type TransformOptions } from 'node:stream';
import { createGunzip, type ZlibOptions } from 'node:zlib';

/** gunzip's output chunk size (decompressed). */
const GUNZIP_CHUNK = 1 << 20;
/** gunzip's output chunks made ahead of the consumer. */
const GUNZIP_AHEAD = 4;

/**
 * Peeks at the first two bytes: gzip (1f 8b) is decompressed, anything else is read as a plain tar.
 *
 * Streaming, never buffering (#9): gunzip output is pulled chunk by chunk as the consumer asks, with
 * stream back-pressure in between. A consumer that stops early (`return()`, as the tar reader does when it
 * refuses an archive) destroys the gunzip stream, the pipeline then destroys the source side, and the
 * input iterator is returned (a file stream closes its fd). An error on either side ends the iteration
 * with that error, never with a hang.
 */
export async function* decompressed(input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const it = input[Symbol.asyncIterator]();
  let finished = false;
  try {
    // Enough chunks to see two bytes (a source may hand them out one at a time).
    const head: Buffer[] = [];
    let headLen = 0;
    while (headLen < 2) {
      const r = await it.next();
      if (r.done) {
        finished = true;
        break;
      }
      const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
      if (chunk.length === 0) continue;
      head.push(chunk);
      headLen += chunk.length;
    }
    async function* source(): AsyncGenerator<Buffer> {
      yield* head;
      while (!finished) {
        const r = await it.next();
        if (r.done) finished = true;
        else yield r.value;
      }
    }
    const b0 = head[0]?.[0];
    const b1 = head[0]?.length === 1 ? head[1]?.[0] : head[0]?.[1];
    if (b0 !== 0x1f || b1 !== 0x8b) {
      yield* source();
      return;
    }
    // 1 MiB output chunks, not zlib's 16 KiB: each chunk costs the main thread a hand-off to the pool and
    // back (it was about a fifth of a pull's main thread at 16 KiB, #11; at 256 KiB still three times what
    // it is at 1 MiB on a busy two-core machine).
    // Inflating up to GUNZIP_AHEAD chunks ahead on the thread pool while the consumer works on the one before
    // (an unpack on a worker of its own has nothing else to do meanwhile: it waited 0.1-0.25 s per layer).
    // (zlib passes stream options on to its Transform; its own type leaves them out.)
    const opts: ZlibOptions & TransformOptions = { chunkSize: GUNZIP_CHUNK, readableHighWaterMark: GUNZIP_AHEAD * GUNZIP_CHUNK };
    const gunzip = createGunzip(opts);
    // pipeline (not pipe): an error or early destroy on either side destroys both. Errors reach the
    // consumer through gunzip, which pipeline destroys with them, so the callback has nothing left to do.
    pipeline(Readable.from(source(), { objectMode: false }), gunzip, () => undefined);
    yield* gunzip as AsyncIterable<Buffer>;
  } finally {
    // The consumer stopped early or something failed: close the input (a no-op once it is done).
    if (!finished) {
      finished = true;
      await it.return?.();
    }
  }
}
