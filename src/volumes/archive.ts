/**
 * Volume export and import as tar streams (`tsvol volume export/import`, #6), with the layer manager's
 * exact tar writer and its hardened unpacker: owners, modes, binary xattrs, hardlinks, symlinks, devices
 * and fifos round-trip; absolute paths, `..`, entries through symlinks and hardlinks to outside targets
 * are refused as for layer imports.
 *
 * The archive opens with a `./` entry carrying the volume root's own owner, mode and xattrs. A volume is a
 * plain file tree, not an overlay layer (#9): export and import both run in 'plain' whiteout mode, so a
 * regular file named `.wh.x` travels and comes back as that regular file, and a 0/0 character device as a
 * character device; nothing is read as an OCI whiteout or opaque marker. Every entry, and the root's own
 * metadata, is applied through a `Beneath` pinned on the staging `_data` (src/sys/beneath.ts): the kernel
 * resolves each path below it, so no entry can reach outside.
 *
 * Import is crash-safe: the tree is unpacked in a stage tmp/new-*, flushed (syncfs), renamed to
 * volumes/<name> (the rename fails if the name is taken meanwhile), and only then is the record committed.
 * A kill -9 at any instant leaves the whole volume or debris that server start-up deletes. The stage is
 * locked from its mkdir until the record is committed, across the rename (sys/staging.ts), so a server
 * starting meanwhile leaves it alone (#9 §7).
 */
import fs from 'node:fs';
import { nanoid } from 'nanoid';
import { ConflictError, InvalidArgumentError, describeError } from '../errors.js';
import { packTree, unpackTree } from '../layers/tree-archive.js';
import { volumeFiles, type Layout } from '../store/layout.js';
import type { VolumeRecord, VolumeStore } from '../store/volume-store.js';
import type { Beneath } from '../sys/beneath.js';
import { stageThenPublish } from '../sys/staging.js';
import { validateName } from './names.js';

/** Streams the tree at `dir` as a tar: a `./` entry for the root, then every entry, sorted. */
export async function* exportTree(dir: string | Beneath): AsyncGenerator<Buffer> {
  yield* packTree(dir, { whiteouts: 'plain', rootEntry: true });
}

/** What an import made. */
export interface ImportResult {
  readonly record: VolumeRecord;
  readonly files: number;
  readonly bytes: number;
}

/**
 * Makes a new named volume `name` from a tar stream (plain or gzip). Refuses a name that exists, and any
 * archive the layer unpacker refuses; on any failure nothing is left behind but tmp/ debris.
 */
export async function importVolume(layout: Layout, store: VolumeStore, name: string, input: AsyncIterable<Buffer>): Promise<ImportResult> {
  validateName(name);
  if (store.get(name) !== undefined) throw new ConflictError(`volume "${name}" already exists; import into a new name or remove it first`);
  fs.mkdirSync(layout.tmpDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(layout.volumesDir, { recursive: true, mode: 0o701 });
  let stats = { files: 0, size: 0 };
  const record: VolumeRecord = {
    name,
    createdAt: new Date().toISOString(),
    spec: { kind: 'named' },
    options: {},
    holds: new Map(),
    // Cluster mode (#14): its incarnation, and the record staged with the tree (below).
    ...(store.scope === 'global' ? { incarnation: nanoid(16) } : {}),
  };
  const publish = {
    tmpDir: layout.tmpDir,
    kind: 'new',
    mode: 0o701,
    dest: layout.volumeDir(name),
    taken: () => new ConflictError(`volume "${name}" was created meanwhile; import into a new name`),
  };
  return stageThenPublish(
    publish,
    async (dir) => {
      const data = volumeFiles(dir).data;
      fs.mkdirSync(data, { mode: 0o755 });
      try {
        // A `./` entry first carries the volume root's own owner, mode and xattrs (exportTree writes one).
        stats = await unpackTree(input, data, { whiteouts: 'plain', rootEntry: true });
      } catch (err) {
        throw new InvalidArgumentError(`import of volume "${name}" refused: ${describeError(err)}`, { cause: err });
      }
      store.stageRecord?.(record, dir);
    },
    async () => {
      // The rename is durable already (stageThenPublish fsyncs volumes/): the record is the last step.
      await store.put(record);
      return { record, files: stats.files, bytes: stats.size };
    },
  );
}
