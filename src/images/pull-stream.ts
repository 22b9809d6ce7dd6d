/**
 * The wire form of a pull between the CLI, which fetches (a managed plugin has `network: none`), and the
 * process that owns the store (#11). One request carries the image: a header (the manifest and config
 * exactly as the registry sent them, and the blobs that follow), then the blobs' bytes in frames, several
 * blobs interleaved, as the CLI's parallel downloads deliver them. The receiver unpacks each blob as its
 * frames arrive (src/images/image-ops.ts `pull`), so nothing waits for a whole layer and nothing is
 * buffered whole. Frames:
 *
 *   type:u8 index:u32be length:u32be payload[length]
 *   1 HEADER    index 0, payload: PullHeader as JSON (first, once)
 *   2 DATA      the next bytes of blob `index` (at most MAX_DATA)
 *   3 BLOB_END  blob `index` is complete
 *   4 END       the pull is complete (last): a stream that stops before it was cut short
 *
 * Only plain data crosses: the receiver checks every digest, size and DiffID itself.
 */
import { InvalidArgumentError } from '../errors.js';

/** What a pull is: the image's documents, byte-exact (base64), and the blobs whose bytes follow, by index. */
export interface PullHeader {
  /** The normalized reference the image is stored under. */
  readonly name: string;
  /** The repository it came from (`host/path`), kept with its blobs for a cross-repository mount on push. */
  readonly source: string;
  readonly manifest: string;
  readonly mediaType: string;
  readonly config: string;
  readonly blobs: readonly { readonly digest: string; readonly size: number }[];
}

export const FRAME = { header: 1, data: 2, blobEnd: 3, end: 4 } as const;
/** The most payload bytes in one DATA frame. */
export const MAX_DATA = 1 << 20;
/** The most bytes of a header (two documents of at most 8 MiB each, base64). */
export const MAX_HEADER = 24 << 20;
const PREFIX = 9;

/** One frame's prefix. */
export function framePrefix(type: number, index: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(PREFIX);
  b.writeUInt8(type, 0);
  b.writeUInt32BE(index, 1);
  b.writeUInt32BE(length, 5);
  return b;
}

/** The HEADER frame for `h`. */
export function headerFrame(h: PullHeader): Buffer {
  const json = Buffer.from(JSON.stringify(h));
  return Buffer.concat([framePrefix(FRAME.header, 0, json.length), json]);
}

/** DATA frames for `chunk` of blob `index` (split at MAX_DATA), each one buffer: prefix and payload. */
export function* dataFrames(index: number, chunk: Buffer): Generator<Buffer> {
  for (let off = 0; off < chunk.length; off += MAX_DATA) {
    const part = chunk.subarray(off, Math.min(chunk.length, off + MAX_DATA));
    yield Buffer.concat([framePrefix(FRAME.data, index, part.length), part]);
  }
}

/** A decoded frame: a DATA frame's payload may come in several pieces (each its own Frame). */
export interface Frame {
  readonly type: number;
  readonly index: number;
  readonly payload: Buffer;
}

/**
 * Decodes frames from `input`. DATA payloads are passed on in the pieces they arrive in (no copy into a
 * frame-sized buffer); a HEADER is gathered whole (at most MAX_HEADER). A malformed stream is InvalidArgument:
 * it comes from a client.
 */
export async function* readFrames(input: AsyncIterable<Buffer>): AsyncGenerator<Frame> {
  let buf: Buffer = Buffer.alloc(0);
  /** The frame being read: its type, index and bytes left of its payload. */
  let cur: { type: number; index: number; left: number; parts: Buffer[] } | undefined;
  for await (const raw of input) {
    buf = buf.length === 0 ? raw : Buffer.concat([buf, raw]);
    for (;;) {
      if (cur === undefined) {
        if (buf.length < PREFIX) break;
        const type = buf.readUInt8(0);
        const index = buf.readUInt32BE(1);
        const length = buf.readUInt32BE(5);
        buf = buf.subarray(PREFIX);
        if (type === FRAME.header ? length > MAX_HEADER : type === FRAME.data ? length > MAX_DATA : length !== 0 || type < 1 || type > 4) {
          throw new InvalidArgumentError(`pull stream refused: malformed frame: type ${type} with ${length} bytes`);
        }
        cur = { type, index, left: length, parts: [] };
        if (length === 0) {
          yield { type, index, payload: Buffer.alloc(0) };
          cur = undefined;
          continue;
        }
      }
      if (buf.length === 0) break;
      const n = Math.min(cur.left, buf.length);
      const piece = buf.subarray(0, n);
      buf = buf.subarray(n);
      cur.left -= n;
      if (cur.type === FRAME.data) yield { type: cur.type, index: cur.index, payload: piece };
      else cur.parts.push(piece);
      if (cur.left === 0) {
        if (cur.type !== FRAME.data) yield { type: cur.type, index: cur.index, payload: Buffer.concat(cur.parts) };
        cur = undefined;
      }
    }
  }
  if (cur !== undefined || buf.length > 0) throw new InvalidArgumentError('pull stream refused: it ends inside a frame');
}
