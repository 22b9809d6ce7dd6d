/**
 * An image archive (`docker save` output or an OCI layout tar) read once, in order (#11). Docker 20.10
 * writes manifest.json after the layers, so an entry's role is not known when it streams by; each regular
 * file is therefore told by its first bytes:
 * - a tar or a gzip stream is a layer: it goes straight to `ingest` (src/images/ingest.ts), which hashes
 *   it, unpacks it into a stage of the layer store and keeps its bytes only when they are compressed (for
 *   the blob area). A layer is read once and never written out as a tar;
 * - a pre-POSIX (v7) tar, told by its header's checksum, is a layer too;
 * - anything else (manifest.json, configs, index.json, an empty layer) is spooled to its own file in the
 *   stage, so memory stays bounded whatever the archive holds. Disk is bounded too: such an entry holds at
 *   most MAX_JSON bytes (nothing bigger can be used: a document is read whole, and an empty layer is
 *   1 KiB), all of them together MAX_SPOOLED_BYTES, checked against each entry's header before any of its
 *   bytes are written, so a hostile archive of huge or countless non-layer entries is refused early and
 *   leaves nothing (the caller removes the stage).
 * Paths are checked as entries arrive: an absolute path, `..`, a link leaving the archive or a device is
 * refused, and nothing is extracted under its own name (files are `f<N>` in the stage), so no path in
 * the archive ever reaches the filesystem.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, describeError } from '../errors.js';
import { checksumOk } from '../layers/tar/format.js';
import { decompressed } from '../layers/tar/gzip.js';
import { TarReader } from '../layers/tar/reader.js';
import type { Ingested } from './ingest.js';

/** The most bytes a JSON document of the archive may have (manifests, configs, index). */
export const MAX_JSON = 8 << 20;
/**
 * The most bytes of documents one load reads into memory, all reads together: a document listed many times
 * (an index naming one 8 MiB blob thousands of times) would otherwise be held and hashed once per mention.
 * A `docker save` of hundreds of images reads a few MiB.
 */
export const MAX_DOCUMENT_BYTES = 64 << 20;
/** The most bytes of non-layer entries one archive may spool to disk, all together (see the header). */
export const MAX_SPOOLED_BYTES = 256 << 20;
/** The most entries an archive may hold. */
const MAX_ENTRIES = 1 << 20;

/** A spooled archive. */
export interface Spool {
  /** True if the archive holds `name` (after links). */
  has(name: string): boolean;
  /** The spooled file of `name`, following the archive's own links; NotFound-like InvalidArgument otherwise. */
  file(name: string): string;
  /** The bytes of a small file (at most MAX_JSON). */
  read(name: string): Buffer;
  /** The file's sha256 (`sha256:<hex>`) of its stored bytes, computed once. */
  digest(name: string): Promise<string>;
  /**
   * The layer `name` (after links), read once: what ingest made of it as it streamed by, or, for an entry
   * that did not look like a layer then (an empty layer), ingested now from its spooled file.
   */
  layer(name: string): Promise<Ingested>;
  /** Every layer ingested so far (their stages are the caller's to discard). */
  ingested(): Ingested[];
}

/** Reads a layer's bytes once (src/images/ingest.ts); `keep` is a fresh file for compressed bytes. */
export type IngestFn = (body: AsyncIterable<Buffer>, keep: string, name: string) => Promise<Ingested>;

/** Names that are never layers (documents of the formats): spooled without sniffing. */
const DOCUMENT = /(?:^|\/)(?:manifest\.json|index\.json|repositories|oci-layout|json|VERSION|[^/]*\.json)$/;

/** True if `head` (the first ≤ 512 bytes of an entry) starts a gzip stream or a tar (POSIX, GNU or v7). */
function looksLikeLayer(head: Buffer): boolean {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return true;
  if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') return true;
  return head.length >= 512 && checksumOk(head.subarray(0, 512));
}

/** An archive path, normalized: `./a//b` is `a/b`; absolute paths and `..` are refused. */
function clean(p: string): string {
  if (p.startsWith('/')) throw new InvalidArgumentError(`image archive refused: absolute path ${JSON.stringify(p)}`);
  const parts = p.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw new InvalidArgumentError(`image archive refused: path ${JSON.stringify(p)} leaves the archive`);
  return parts.join('/');
}

/** Reads `input` (a tar, plain or gzip) into `dir`, layers through `ingest`; returns how to find its files. */
export async function spoolArchive(input: AsyncIterable<Buffer>, dir: string, ingest: IngestFn): Promise<Spool> {
  const files = new Map<string, string>();
  const links = new Map<string, string>();
  const layers = new Map<string, Promise<Ingested>>();
  const settled: Ingested[] = [];
  const track = (p: Promise<Ingested>): Promise<Ingested> => p.then((r) => (settled.push(r), r));
  const reader = new TarReader(decompressed(input));
  let n = 0;
  let spooled = 0;
  try {
    for (let e = await reader.next(); e !== undefined; e = await reader.next()) {
      if (++n > MAX_ENTRIES) throw new InvalidArgumentError(`image archive refused: more than ${MAX_ENTRIES} entries`);
      const name = clean(e.header.path);
      if (files.has(name) || links.has(name) || layers.has(name)) throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} appears twice`);
      switch (e.header.type) {
        case 'dir':
          await e.skip();
          break;
        case 'file': {
          const f = path.join(dir, `f${n}`);
          const body = e.body();
          // The first bytes say whether this is a layer: gather up to a header's worth.
          const head: Buffer[] = [];
          let headLen = 0;
          let ended = false;
          if (!DOCUMENT.test(name)) {
            while (headLen < 512) {
              const r = await body.next();
              if (r.done) {
                ended = true;
                break;
              }
              head.push(r.value);
              headLen += r.value.length;
            }
          }
          if (looksLikeLayer(Buffer.concat(head))) {
            async function* whole(): AsyncGenerator<Buffer> {
              yield* head;
              if (!ended) yield* body;
            }
            const result = track(ingest(whole(), f, name));
            layers.set(name, result);
            await result; // one at a time: the outer tar goes on once this layer is read
            break;
          }
          // Not a layer: its size (from its header) is checked before a byte of it is written.
          const size = e.header.size;
          if (size > MAX_JSON) {
            throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is ${size} bytes and not a layer (a gzip or tar stream); at most ${MAX_JSON} are accepted for other entries`);
          }
          spooled += size;
          if (spooled > MAX_SPOOLED_BYTES) {
            throw new InvalidArgumentError(`image archive refused: its entries that are not layers come to more than ${MAX_SPOOLED_BYTES} bytes (at ${JSON.stringify(name)})`);
          }
          const fd = fs.openSync(f, 'wx', 0o600);
          try {
            for (const chunk of head) fs.writeSync(fd, chunk);
            if (!ended) for await (const chunk of body) fs.writeSync(fd, chunk);
          } finally {
            fs.closeSync(fd);
          }
          files.set(name, f);
          break;
        }
        case 'symlink': {
          // Relative to the link's directory, and inside the archive (docker save links a repeated layer).
          const target = e.header.linkname.startsWith('/') ? e.header.linkname : path.posix.join(path.posix.dirname(name), e.header.linkname);
          links.set(name, clean(target));
          await e.skip();
          break;
        }
        case 'hardlink':
          links.set(name, clean(e.header.linkname));
          await e.skip();
          break;
        default:
          throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is a ${e.header.type}; an image archive holds files, directories and links only`);
      }
    }
  } catch (err) {
    await reader.close();
    await Promise.allSettled(settled.map((l) => l.staged?.discard()));
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`image archive refused: ${describeError(err)}`, { cause: err });
  }
  const digests = new Map<string, Promise<string>>();
  let documentBytes = 0;
  /** The archive's own name of `name`, after its links. */
  function target(name: string): string {
    let p = clean(name);
    for (let hops = 0; hops < 16; hops++) {
      if (files.has(p) || layers.has(p)) return p;
      const next = links.get(p);
      if (next === undefined) break;
      p = next;
    }
    throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is missing (or a link to nothing)`);
  }
  function file(name: string): string {
    const t = target(name);
    const f = files.get(t);
    if (f === undefined) throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is a layer, not a document`);
    return f;
  }
  return {
    has(name) {
      try {
        target(name);
        return true;
      } catch {
        // Missing is the answer, not an error.
        return false;
      }
    },
    file,
    read(name) {
      const f = file(name);
      const size = fs.statSync(f).size;
      if (size > MAX_JSON) throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is ${size} bytes; at most ${MAX_JSON} are accepted for metadata`);
      documentBytes += size;
      if (documentBytes > MAX_DOCUMENT_BYTES) {
        throw new InvalidArgumentError(`image archive refused: its documents, as its manifests and indexes list them, come to more than ${MAX_DOCUMENT_BYTES} bytes (at ${JSON.stringify(name)})`);
      }
      return fs.readFileSync(f);
    },
    digest(name) {
      const f = file(name);
      let d = digests.get(f);
      if (d === undefined) {
        d = (async () => {
          const h = createHash('sha256');
          for await (const chunk of fs.createReadStream(f, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
          return `sha256:${h.digest('hex')}`;
        })();
        digests.set(f, d);
      }
      return d;
    },
    layer(name) {
      const t = target(name);
      let l = layers.get(t);
      if (l === undefined) {
        const f = files.get(t)!;
        l = track(ingest(fs.createReadStream(f, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>, `${f}.kept`, t));
        layers.set(t, l);
      }
      return l;
    },
    ingested: () => [...settled],
  };
}
