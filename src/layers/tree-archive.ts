/**
 * Directory trees as tar streams: the one public face of layers/tar/ and the unpacker for code outside
 * layers/ (#10). Volume archives (volumes/archive.ts) and layered volumes pack and unpack trees through
 * here and never import the tar reader, writer, gzip or unpack internals, so the tar format's rules —
 * strict parsing, bounded memory, paths resolved beneath the root by the kernel (#9), one xattr policy
 * (sys/file-meta.ts) — have one entrance.
 */
import { Beneath } from '../sys/beneath.js';
import type { TarHeader } from './tar/format.js';
import { decompressed } from './tar/gzip.js';
import { TarReader, type EntrySource, type TarEntry } from './tar/reader.js';
import { writeTree, type WriteTreeOptions } from './tar/writer.js';
import { entryMeta, unpackLayer, type UnpackStats, type WhiteoutMode } from './unpack.js';

export type { UnpackStats, WhiteoutMode, WriteTreeOptions as PackOptions };

/**
 * Streams the tree at `root` (a path, or a tree the caller pinned and closes) as a tar: sorted,
 * deterministic, read only beneath the pinned root. `whiteouts: 'plain'` for plain trees (volumes),
 * `rootEntry` for a leading `./` entry with the root's own owner, mode, xattrs and mtime.
 */
export function packTree(root: string | Beneath, opts: WriteTreeOptions = {}): AsyncGenerator<Buffer> {
  return writeTree(root, opts);
}

/** Options of unpackTree. */
export interface UnpackTreeOptions {
  /** How `.wh.` names are read: 'plain' for volumes (names are names), 'overlay' for layers. Default 'overlay'. */
  readonly whiteouts?: WhiteoutMode;
  /**
   * Give `root` the metadata of a leading `./` directory entry (the archive's own root, as packTree's
   * `rootEntry` writes it), after everything below it is made. Without it, such an entry is skipped.
   */
  readonly rootEntry?: boolean;
}

/** True for a header that names the archive's root directory (`./`, `.`, `/`, `././`). */
function isRootEntry(h: TarHeader): boolean {
  return h.type === 'dir' && h.path.replace(/^(\.\/?)+/, '').replace(/\/+$/, '') === '';
}

/**
 * Unpacks a tar stream (plain or gzip) into `root`, an empty directory, with the layer unpacker's checks:
 * absolute paths, `..`, entries through symlinks and hardlinks to outside targets are refused, and the
 * first violation throws (the caller deletes the half-made tree). The input is closed whatever happens.
 */
export async function unpackTree(input: AsyncIterable<Buffer>, root: string, opts: UnpackTreeOptions = {}): Promise<UnpackStats> {
  const reader = new TarReader(decompressed(input));
  try {
    const first = await reader.next();
    if (first === undefined) return { files: 0, size: 0 };
    const rootHeader = opts.rootEntry === true && isRootEntry(first.header) ? first.header : undefined;
    // The first entry, peeked at, is handed back to the unpacker unless it was the root's.
    let pending: TarEntry | undefined = rootHeader === undefined ? first : undefined;
    const source: EntrySource = {
      next: async () => {
        const e = pending;
        pending = undefined;
        return e ?? reader.next();
      },
      get trailer() {
        return reader.trailer;
      },
    };
    // No split file: a tree unpacked here is not re-exported byte for byte (that is a layer's job).
    const stats = await unpackLayer(source, root, undefined, { whiteouts: opts.whiteouts ?? 'overlay' });
    if (rootHeader !== undefined) {
      // Last, through the pinned root (its fd), with the same checks and xattr policy as every entry.
      Beneath.with(root, (tree) => tree.applyMeta('', entryMeta(rootHeader, 'the root entry "./"')));
    }
    return stats;
  } finally {
    await reader.close(); // a refused entry leaves the input half read: close it (a no-op at the end)
  }
}
