/**
 * The image blob area (#11): blobs kept byte-exact, so that a push sends what was pulled. A pull's gzip
 * layers are unpacked into the layer store, and their compressed bytes are kept here too, as containerd
 * keeps its content store beside its snapshots: re-compressing would not give the same bytes, hence not
 * the same manifest digest.
 *
 *   TSVOL_DATA/blobs/sha256/<hex>    one file per blob, named by its digest, never changed
 *
 * The metadata store owns them (src/store/schema.ts `blobs`, `manifest_blobs`): a blob is kept while a
 * manifest that some image names holds it. The order is containerd's content commit: the bytes are
 * written in a stage in TSVOL_DATA/tmp/ that a live process owns (a flock, src/sys/staging.ts), fsynced,
 * linked under their digest only if no file is there (an existing blob is the same bytes), the directory
 * fsynced, and only then are the rows committed (the image load's one commit). A kill -9 before the rows
 * leaves a file no row names, and gc deletes it; after them, the blob is whole and held.
 */
import fs from 'node:fs';
import { InUseError, NotFoundError, errnoCode } from '../errors.js';
import type { Layout } from '../store/layout.js';
import type { Change, MetaStore } from '../store/meta-store.js';
import { fsyncDir } from '../sys/durable.js';
import { removePathSync } from '../sys/remove.js';

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** The blob area of one data root. */
export interface BlobStore {
  /** True if the blob has a row and a file (a push can send it). */
  has(digest: string): boolean;
  /** The blob's bytes, streamed from its file; NotFound if it is not kept. */
  read(digest: string): AsyncIterable<Buffer>;
  /**
   * Publishes finished blob files (each checked against its digest by the caller): fsync each, link it
   * under its digest unless one is there, then fsync the directory once. The caller commits the rows next.
   */
  publish(files: readonly { file: string; digest: string }[]): void;
  /**
   * Deletes what nothing holds: holds of manifests no image names, blobs no manifest holds (rows first,
   * in one commit), then files without a row (a load killed before its commit). Returns the digests whose
   * files were deleted. The caller keeps loads out meanwhile (the gc barrier).
   */
  gc(): Promise<string[]>;
}

/** The blob area of `layout` over `meta`. */
export function createBlobStore(layout: Layout, meta: MetaStore): BlobStore {
  const dir = layout.blobsDir;
  const file = (digest: string): string => {
    if (!DIGEST.test(digest)) throw new NotFoundError(`blob ${JSON.stringify(digest)} is no sha256 digest`);
    return layout.blobFile(digest);
  };
  return {
    has(digest) {
      return DIGEST.test(digest) && meta.getBlob(digest) !== undefined && fs.existsSync(file(digest));
    },
    read(digest) {
      if (!this.has(digest)) throw new NotFoundError(`blob ${digest} is not kept in ${dir}`);
      return fs.createReadStream(file(digest), { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>;
    },
    publish(files) {
      if (files.length === 0) return;
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      for (const f of files) {
        const fd = fs.openSync(f.file, 'r');
        try {
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
        try {
          fs.linkSync(f.file, file(f.digest));
        } catch (err) {
          // EEXIST: the blob is there (content-addressed, written and synced the same way): done.
          if (errnoCode(err) !== 'EEXIST') throw err;
        }
      }
      fsyncDir(dir);
    },
    async gc() {
      const named = new Set(meta.images().map((i) => i.digest));
      const changes: Change[] = [];
      const held = new Set<string>();
      for (const h of meta.manifestBlobs()) {
        if (named.has(h.manifest)) held.add(h.blob);
        else changes.push({ op: 'manifestBlob.delete', manifest: h.manifest, blob: h.blob });
      }
      const rows = meta.blobs();
      for (const b of rows) if (!held.has(b.digest)) changes.push({ op: 'blob.delete', digest: b.digest });
      await meta.commit(changes);
      const kept = new Set(rows.filter((b) => held.has(b.digest)).map((b) => b.digest.slice(7)));
      const removed: string[] = [];
      let entries: string[];
      try {
        entries = fs.readdirSync(dir);
      } catch (err) {
        // ENOENT: no blob was ever kept.
        if (errnoCode(err) === 'ENOENT') return removed;
        throw err;
      }
      // Blobs are files; anything else here (a directory someone made) is deleted by the deleter's walk,
      // never across a mount found inside it (src/sys/remove.ts): that is left, and gc says so.
      const left: string[] = [];
      for (const e of entries) {
        if (kept.has(e)) continue;
        const mounts = removePathSync(`${dir}/${e}`);
        if (mounts.length > 0) left.push(...mounts);
        else removed.push(`sha256:${e}`);
      }
      if (removed.length > 0 || left.length > 0) fsyncDir(dir);
      if (left.length > 0) throw new InUseError(`image gc: mounts inside ${dir} were left in place: ${left.join(', ')}; unmount them and run gc again`);
      return removed;
    },
  };
}
