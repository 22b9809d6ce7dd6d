/**
 * One pass over an image layer's bytes (#11): whatever their source (an archive entry being read, a blob
 * streaming from a registry), they are hashed as they arrive (the blob digest), kept in a file when they
 * are compressed (the blob area keeps a pull's gzip layers byte-exact), decompressed, hashed again (the
 * DiffID) and unpacked into a stage of the layer store, all at once. Nothing is buffered whole and
 * nothing is read twice. The blob digest and the kept file are this thread's; the gunzip, the DiffID and
 * the unpack run on an unpack worker, one per layer (src/layers/unpack-thread.ts), so a pull's layers
 * unpack on the other core while this thread receives. Nothing is published here either: the caller checks the digests against the
 * manifest and the config, and only then publishes (LayerStore.publishLayer) or discards.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { InvalidArgumentError, describeError } from '../errors.js';
import type { LayerStore, StagedLayer } from '../layers/layer-store.js';
import { GrowingFile, hashLayerTarOffThread, type UnpackInput } from '../layers/unpack-thread.js';
import { Channel } from './channel.js';

/** What ingestLayer does with the bytes besides hashing them. */
export interface IngestOptions {
  /** Unpack into a stage of the layer store; otherwise the DiffID is only hashed (the diff is stored). */
  readonly unpack: boolean;
  /** Keep the bytes in this new file when they are gzip (for the blob area); plain tars are not kept. */
  readonly keep?: string;
  /**
   * A plain tar's unpack starts at once, even past the unpacks running (a pull: its sender feeds other
   * layers too; unpack-thread.ts UnpackStart). A kept blob's never needs to.
   */
  readonly now?: boolean;
}

/** One layer's bytes, read once. */
export interface Ingested {
  /** sha256 of the bytes as they came (the blob digest; the DiffID for a plain tar). */
  readonly digest: string;
  readonly size: number;
  readonly compressed: boolean;
  /** sha256 of the uncompressed tar; undefined if the tar was refused. */
  readonly diffId: string | undefined;
  /** Bytes of the uncompressed tar (as `size` for a plain one). */
  readonly tarSize: number;
  /** The unpacked diff, when `unpack` was asked and the tar was accepted. */
  readonly staged: StagedLayer | undefined;
  /** The file holding the bytes (`keep`), when they are compressed. */
  readonly kept: string | undefined;
  /** Why the tar was refused (a hostile entry, not a tar, a broken gzip stream). */
  readonly error: Error | undefined;
}

const GZIP = [0x1f, 0x8b] as const;

/**
 * Reads `raw` to its end once. The source is always drained, even when the tar is refused early (an
 * archive's next entry comes after it; the digest still names what was sent).
 */
export async function ingestLayer(raw: AsyncIterable<Buffer>, store: LayerStore, opts: IngestOptions): Promise<Ingested> {
  const chan = new Channel<Buffer>(8);
  const hash = createHash('sha256');
  let size = 0;
  let compressed: boolean | undefined;
  let keepFd: number | undefined;
  /** A kept blob: the unpack reads it from its file as it is written (no queue: the disk is the buffer). */
  let kept: GrowingFile | undefined;
  let decide!: (input: UnpackInput) => void;
  const input = new Promise<UnpackInput>((resolve) => (decide = resolve));
  const head: Buffer[] = [];
  let headLen = 0;
  /** Decides gzip or not once two bytes are in; until then holds them back. */
  const forward = async (chunk: Buffer): Promise<void> => {
    if (compressed === undefined) {
      head.push(chunk);
      headLen += chunk.length;
      if (headLen < 2) return;
      const h = Buffer.concat(head);
      compressed = h[0] === GZIP[0] && h[1] === GZIP[1];
      if (compressed && opts.keep !== undefined) {
        keepFd = fs.openSync(opts.keep, 'wx', 0o600);
        kept = new GrowingFile(fs.openSync(opts.keep, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW));
      }
      decide(kept ?? chan);
      head.length = 0;
      chunk = h;
    }
    // A plain tar's digest is its DiffID, which the unpacker hashes: one sha256 pass, not two.
    if (compressed) hash.update(chunk);
    if (keepFd !== undefined) {
      for (let off = 0; off < chunk.length; ) off += fs.writeSync(keepFd, chunk, off);
      kept!.grew(chunk.length);
    } else await chan.push(chunk);
  };
  const pump = (async () => {
    try {
      for await (const chunk of raw) {
        size += chunk.length;
        if (chunk.length > 0) await forward(chunk);
      }
      if (compressed === undefined) {
        // Fewer than two bytes in all: no gzip stream, and not a tar either (the unpacker says so).
        compressed = false;
        decide(chan);
        for (const h of head) await chan.push(h);
      }
      chan.end();
      kept?.end();
    } catch (err) {
      decide(chan); // failed before its first two bytes: the unpack reads the failure from the queue
      chan.fail(err);
      kept?.fail(err);
      throw err;
    } finally {
      if (keepFd !== undefined) fs.closeSync(keepFd);
    }
  })();
  // Awaited below, once the consumer is done; until then its failure must not count as unhandled.
  pump.catch(() => undefined);
  let staged: StagedLayer | undefined;
  let diffId: string | undefined;
  let error: Error | undefined;
  let plainDigest: string | undefined;
  let tarSize = 0;
  try {
    const from = await input;
    if (opts.unpack) {
      staged = await store.stageLayer(from, { now: opts.now === true });
      diffId = staged.diffId;
      tarSize = staged.tarSize ?? 0;
    } else {
      ({ diffId, tarSize } = await hashLayerTarOffThread(from, { now: opts.now === true }));
    }
    if (!compressed) plainDigest = diffId;
  } catch (err) {
    // The consumer stopped (iterator returned): the pump drops the rest, hashing it, and ends.
    error = err instanceof InvalidArgumentError ? err : new InvalidArgumentError(`layer refused: ${describeError(err)}`, { cause: err });
  } finally {
    // The unpack has answered (stageLayer and the hash return only once their worker has stopped).
    if (kept !== undefined) fs.closeSync(kept.fd);
  }
  try {
    await pump;
  } catch (err) {
    // The source failed: that is the caller's error (a cut-short archive or download), not the layer's.
    await staged?.discard();
    if (keepFd !== undefined && opts.keep !== undefined) fs.rmSync(opts.keep, { force: true });
    throw err;
  }
  // A refused plain tar was not hashed whole; its digest is not needed (it cannot be used).
  const digest = compressed ? `sha256:${hash.digest('hex')}` : (plainDigest ?? 'sha256:refused');
  return { digest, size, compressed: compressed === true, diffId: error ? undefined : diffId, tarSize, staged, kept: compressed && opts.keep !== undefined ? opts.keep : undefined, error };
}
