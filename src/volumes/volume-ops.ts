/**
 * What `tsvol volume …` and `tsvol df` do, one implementation each. Two callers, never at once on one data
 * root: the running server, for the CLI's requests on its control socket (src/http/control.ts), and the CLI
 * itself, only while it holds the server lock so that no server runs (src/cli/client.ts, src/state.ts).
 * Either way one process owns the state: its per-volume locks, its holds and its mounts (#9 §6).
 *
 * Reading a volume whose files are only visible through its own mount (a loop-backed sized volume's ext4
 * image, a layered volume's overlay) takes a hold with a Mount ID of its own for the duration of the read,
 * so the mount is up, is the owner's only mount of that image, and stays up until the read ends however it
 * ends (a client that disconnects mid-stream included). A hold ID starts with CLI_HOLD_PREFIX: no such
 * hold can outlive the process that took it, so server start-up drops any it finds (a crash mid-export).
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { createGzip } from 'node:zlib';
import { nanoid } from 'nanoid';
import type { Config } from '../config.js';
import { InvalidArgumentError, NotFoundError, UnavailableError, wrapError } from '../errors.js';
import type { Layout } from '../store/layout.js';
import type { VolumeRecord, VolumeStore } from '../store/volume-store.js';
import type { Beneath } from '../sys/beneath.js';
import { isMountRoot } from '../sys/libc.js';
import { exportTree, importVolume } from './archive.js';
import { CLI_HOLD_PREFIX, holdCount } from './holds.js';
import { kindOf } from './kinds/index.js';
import type { GrowRange } from './kinds/kind.js';
import { validateName } from './names.js';
import type { VolumeInfo, VolumeMechanics, VolumeService } from './volume-service.js';

export { CLI_HOLD_PREFIX };

/** A volume's export: `gzip` compresses the tar. */
export interface ExportOptions {
  readonly gzip?: boolean;
}

/**
 * Receives an export: the tar (or gzip) stream, and a notice for the user when the volume is in use. The
 * volume's hold lasts until the promise settles.
 */
export type ExportSink = (archive: AsyncIterable<Buffer>, notice: string | undefined) => Promise<void>;

/** What an import made. */
export interface ImportSummary {
  readonly name: string;
  readonly files: number;
  readonly bytes: number;
}

/** One layer in `tsvol df`: its own diff's size, and how many layers are built directly on it. */
export interface LayerUsage {
  readonly id: string;
  readonly size: number;
  readonly files: number;
  readonly children: number;
}

/** One volume in `tsvol df`, measured now (a bind-style volume's host directory is not ours to walk: 0). */
export interface VolumeUsage {
  readonly name: string;
  readonly kind: unknown;
  readonly limit: unknown;
  readonly bytes: number;
  readonly files: number;
  readonly mounts: unknown;
}

/** `tsvol df`. */
export interface DiskUsage {
  readonly layers: LayerUsage[];
  readonly volumes: VolumeUsage[];
}

/** The CLI's volume operations; the control client (src/http/control-client.ts) offers the same ones. */
export interface VolumeOps {
  /** Every volume with its Status. */
  ls(): Promise<VolumeInfo[]>;
  /** A volume with its usage measured now. */
  inspect(name: string): Promise<VolumeInfo>;
  /** Streams the volume's contents to `sink` as a tar. */
  export(name: string, opts: ExportOptions, sink: ExportSink): Promise<void>;
  /** A new volume `name` from a tar stream (plain or gzip). */
  import(name: string, input: AsyncIterable<Buffer>): Promise<ImportSummary>;
  /** A new layer from the volume's state; returns its ID. */
  commit(name: string, opts: { readonly tag?: string }): Promise<string>;
  /**
   * Grows sized volume `name` to `range` (#12: at least `required` bytes, at most `limit` when above 0),
   * online when it is in use; returns its limit now. A volume already large enough is left as it is (a
   * repeated request succeeds); one above `limit` is refused (OutOfRangeError: volumes never shrink).
   */
  resize(name: string, range: GrowRange): Promise<number>;
  /** A new volume `name`, a full copy of `from` (a Create with from=). */
  clone(from: string, name: string): Promise<void>;
  df(): Promise<DiskUsage>;
}

/** What the operations work on: the one process's store and service. */
export interface VolumeOpsContext {
  readonly config: Config;
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly service: VolumeService & VolumeMechanics;
}

/** Gzips `input` as a stream; an error on either side ends the output with that error. */
function gzipped(input: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  const gz = createGzip();
  // Errors reach the reader: pipeline destroys `gz` with them, which rejects its iterator.
  pipeline(Readable.from(input), gz, () => undefined);
  return gz;
}

/** The operations over `ctx`. */
export function volumeOps(ctx: VolumeOpsContext): VolumeOps {
  const { layout, store, service } = ctx;
  const kinds = service.kinds;

  /** The record of `name`, or an error naming the fix. */
  function mustGet(name: string): VolumeRecord {
    const rec = store.get(name);
    if (rec === undefined) throw new NotFoundError(`volume "${name}" not found; \`tsvol volume ls\` lists volumes`);
    return rec;
  }

  /**
   * Runs `fn` on a volume's files (VolumeKind.contents: a bind-style volume's below its device pinned by
   * an O_PATH fd and re-checked against TSVOL_BIND_ROOTS, as Mount binds it, #9 §3, §10a). A volume with
   * its own mount is held for the duration (see the header). A volume in use is read as it is now, and
   * `fn` gets a notice saying so.
   */
  async function withContents<T>(name: string, verb: string, fn: (tree: string | Beneath, rec: VolumeRecord, notice: string | undefined) => Promise<T>): Promise<T> {
    const rec = mustGet(name);
    const kind = kindOf(rec.spec);
    const n = holdCount(rec);
    const notice = n > 0 ? `volume "${name}" is in use (${n} mount(s)); ${verb} its contents as they are now` : undefined;
    const read = async (): Promise<T> => {
      const contents = kind.contents(rec, kinds);
      try {
        return await fn(contents.tree, rec, notice);
      } finally {
        contents.close();
      }
    };
    if (!kind.hasOwnMount(rec.spec)) return read();
    const dir = layout.dataDir(name);
    const id = `${CLI_HOLD_PREFIX}${verb}-${nanoid(10)}`;
    await service.mount(name, id);
    try {
      if (!isMountRoot(dir)) {
        // Held by others, yet not mounted in this mount namespace: its owner is a server that is not
        // running (a managed plugin's mounts die with it). Reading _data here would read an empty directory.
        throw new UnavailableError(
          `volume "${name}" is held by ${n} mount(s) but its filesystem is not mounted here; start the tsvol server (docker plugin enable) and retry`,
        );
      }
      return await read();
    } finally {
      await service.unmount(name, id);
    }
  }

  return {
    async ls() {
      return service.list().map((v) => service.get(v.name));
    },

    async inspect(name) {
      const usage = await service.measureUsage(name);
      const info = service.get(name);
      return { ...info, status: { ...info.status, usage } };
    },

    async export(name, opts, sink) {
      await withContents(name, 'exporting', async (dir, _rec, notice) => {
        const tar = exportTree(dir);
        await sink(opts.gzip === true ? gzipped(tar) : tar, notice);
      });
    },

    async import(name, input) {
      const r = await importVolume(layout, store, name, input);
      return { name: r.record.name, files: r.files, bytes: r.bytes };
    },

    async commit(name, opts) {
      const layered = kinds.layered;
      const rec = mustGet(name);
      // A layered volume's own writes on its layer, read without mounting it; any other volume's whole tree.
      const diff = kindOf(rec.spec).diffOf(rec, kinds);
      const layer =
        diff !== undefined
          ? await layered.commitTree(diff.dir, diff.parent)
          : await withContents(name, 'committing', (tree) => layered.commitTree(tree));
      if (opts.tag !== undefined) await layered.layers.tag(layer.id, opts.tag);
      return layer.id;
    },

    async clone(from, name) {
      await service.create(name, new Map([['from', from]]));
    },

    async resize(name, range) {
      validateName(name);
      const { required, limit } = range;
      if (![required, limit].every((n) => Number.isSafeInteger(n) && n >= 0) || (required === 0 && limit === 0)) {
        throw new InvalidArgumentError(`resize volume "${name}": give a size in bytes (got required ${required}, limit ${limit})`);
      }
      if (limit > 0 && required > limit) throw new InvalidArgumentError(`resize volume "${name}": required ${required} bytes exceeds limit ${limit}`);
      // Under the volume's lock, as Mount and Remove are: the record read here is the one the grow replaces.
      return kinds.withLock(name, async () => {
        const rec = mustGet(name);
        const kind = kindOf(rec.spec);
        if (kind.grow === undefined) {
          throw new InvalidArgumentError(
            `volume "${name}" is a ${kind.statusKind} volume, with no size limit to grow (it takes what its filesystem has); only a sized volume (created with -o size=) can be resized`,
          );
        }
        try {
          return await kind.grow(rec, range, kinds, (spec) => store.put({ ...rec, spec }));
        } catch (err) {
          throw wrapError(`resize volume "${name}"`, err);
        }
      });
    },

    async df() {
      // Cluster mode (#14) has no layer store.
      const layers = ctx.config.scope === 'global' ? [] : kinds.layered.layers.list();
      const children = new Map<string, number>();
      for (const l of layers) if (l.parent !== undefined) children.set(l.parent, (children.get(l.parent) ?? 0) + 1);
      // A layer's chain below it is shared by every layer on top: count each layer's own diff once.
      const layerRows = layers.map((l) => ({ id: l.id, size: l.size, files: l.files, children: children.get(l.id) ?? 0 }));
      const volumes = await Promise.all(
        service.list().map(async (v) => {
          const info = service.get(v.name);
          // A host directory is not ours to walk unasked (VolumeKind.usageInStatus): 0.
          const u = kindOf(kinds.mustGet(v.name).spec).usageInStatus ? await service.measureUsage(v.name) : { bytes: 0, files: 0 };
          return { name: v.name, kind: info.status.kind, limit: info.status.limit, bytes: u.bytes, files: u.files, mounts: info.status.mounts };
        }),
      );
      return { layers: layerRows, volumes };
    },
  };
}
