/** Plain or gzip tar input, told apart by the first bytes (layer imports, volume imports). */
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';

/** Peeks at the first bytes: gzip (1f 8b) is decompressed, anything else is read as a plain tar. */
export async function* decompressed(input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const it = input[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) return;
  const rest: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: () => ({
      next: () => it.next(),
    }),
  };
  async function* all(): AsyncGenerator<Buffer> {
    yield Buffer.from(first.value as Buffer);
    yield* rest;
  }
  const head = first.value as Buffer;
  if (head[0] === 0x1f && head[1] === 0x8b) {
    yield* Readable.from(all()).pipe(createGunzip()) as AsyncIterable<Buffer>;
  } else {
    yield* all();
  }
}
