/**
 * A layer tar's bytes (plain or gzip) into a layer stage, in one pass (#11): decompressed, hashed for the
 * DiffID, read entry by entry and unpacked into the stage's diff/ (unpack.ts: every path resolved beneath
 * it by the kernel, the BodyLedger's byte-exact rule), the split file written beside it, and the files'
 * data sent towards the disk early (durable.ts startWriteback). The same code runs on the thread of the
 * caller or on an unpack worker (unpack-thread.ts); it only works inside the stage it is given, which its
 * caller made and locked (the store's bookkeeping stays with the store).
 */
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import { InvalidArgumentError, TsvolError, describeError } from '../errors.js';
import { startWriteback } from '../sys/durable.js';
import { decompressed } from './tar/gzip.js';
import { TarReader } from './tar/reader.js';
import { unpackLayer } from './unpack.js';

/** Where a stage's parts are (store/layout.ts layerStageFiles), made by the caller: `diff` exists and is empty. */
export interface StagePaths {
  /** The stage directory (its filesystem is the one the early writeback flushes). */
  readonly dir: string;
  readonly diff: string;
  /** The split file, created here (it must not exist). */
  readonly split: string;
}

/** What a layer tar unpacked to. */
export interface StageUnpacked {
  readonly diffId: string;
  /** Bytes of regular-file content. */
  readonly size: number;
  readonly files: number;
  /** Bytes of the uncompressed tar. */
  readonly tarSize: number;
}

async function* hashed(input: AsyncIterable<Buffer>, hash: Hash, count: { bytes: number }, onBytes: (n: number) => void): AsyncGenerator<Buffer> {
  for await (const chunk of input) {
    hash.update(chunk);
    count.bytes += chunk.length;
    onBytes(chunk.length);
    yield chunk;
  }
}

/**
 * The error a stage's unpack reports for `err`: a refusal of the tar's source keeps its own words and
 * kind (a TsvolError: a commit's tree walk refusing a name no layer can carry, tar/writer.ts); anything
 * else (what unpack, the tar reader or gunzip refused, or the input's own failure) is the tar's.
 */
export function tarRefusal(err: unknown): Error {
  if (err instanceof TsvolError) return err;
  return new InvalidArgumentError(`layer tar refused: ${describeError(err)}`, { cause: err });
}

/**
 * Unpacks the layer tar `input` into the stage `paths` (see the module comment); returns its DiffID and
 * counts. Throws tarRefusal's errors, or an early writeback's failure (durable.ts). The input is read to
 * its end, or closed (`return()`) when the tar is refused. The stage is left as it is either way: its
 * owner deletes it.
 */
export async function unpackIntoStage(paths: StagePaths, input: AsyncIterable<Buffer>): Promise<StageUnpacked> {
  // The files' data starts going to disk while the rest unpacks (a tar's bytes are about its files'), so
  // that publish's syncfs, which makes them durable, has little left to write.
  const writeback = startWriteback(paths.dir);
  let d: StageUnpacked;
  try {
    const hash = createHash('sha256');
    const count = { bytes: 0 };
    const splitFd = fs.openSync(paths.split, 'wx', 0o600);
    const reader = new TarReader(hashed(decompressed(input), hash, count, (n) => writeback.wrote(n)));
    try {
      const stats = await unpackLayer(reader, paths.diff, splitFd).catch((err: unknown) => {
        throw tarRefusal(err);
      });
      d = { diffId: `sha256:${hash.digest('hex')}`, size: stats.size, files: stats.files, tarSize: count.bytes };
    } finally {
      fs.closeSync(splitFd);
      await reader.close(); // a refused entry leaves the input half read: close it (a no-op at the end)
    }
  } catch (err) {
    await writeback.settle(); // the unpack's own error is the one to report
    throw err;
  }
  const failed = await writeback.settle();
  if (failed !== undefined) throw failed;
  return d;
}

/** The DiffID and size of a layer tar (plain or gzip) that is only hashed, not unpacked (its diff is stored). */
export async function hashLayerTar(input: AsyncIterable<Buffer>): Promise<{ diffId: string; tarSize: number }> {
  const h = createHash('sha256');
  let tarSize = 0;
  for await (const c of decompressed(input)) {
    h.update(c);
    tarSize += c.length;
  }
  return { diffId: `sha256:${h.digest('hex')}`, tarSize };
}
