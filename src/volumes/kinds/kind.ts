/**
 * The contract every volume kind implements (containerd's snapshotter per driver, moby's driver per type).
 * The service (src/volumes/volume-service.ts) owns what is common to all kinds: names, options dispatch,
 * per-volume locks, holds, and the order of disk work and commits that makes a crash at any instant
 * repairable. A kind owns the disk work of its volumes and nothing else:
 *
 *   Create   plan → build → (service commits the record with `linked`) → stage released
 *   Mount    establish (first holder) → (service binds the mountpoint, commits the hold)
 *   Unmount  (service commits the release, unmounts the mountpoint) → release (last holder)
 *   Remove   release (a mount left by a crash) → checkRemovable → (service deletes the record) → destroy
 *
 * A new kind is one file in this directory and one line in KINDS (./index.ts). Kinds never import each
 * other or the table: what one needs of another volume (a clone's source) comes through KindContext.
 */
import type { Config } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Layout } from '../../store/layout.js';
import type { VolumeRecord, VolumeSpec } from '../../store/volume-store.js';
import type { Beneath } from '../../sys/beneath.js';
import type { BindRoots } from '../bind-roots.js';
import type { Deleter } from '../deleter.js';
import type { LayeredVolumes } from '../layered.js';
import type { ParsedOptions } from '../options.js';
import type { SizeBacking } from '../size-limit.js';

/** A spec kind: the key of KINDS and the `kind` of every stored spec. */
export type KindName = VolumeSpec['kind'];

/** The stored spec of kind K. */
export type SpecOf<K extends KindName> = Extract<VolumeSpec, { readonly kind: K }>;

/** A record whose spec is of kind K. */
export type RecordOf<K extends KindName> = VolumeRecord & { readonly spec: SpecOf<K> };

/** Bytes and files a volume uses, as one measurement finds them. */
export type Measure = () => Promise<{ bytes: number; files: number }>;

/**
 * A change that lives exactly as long as a volume's record (today: a layered volume's hold on its layer):
 * committed in the record's own transaction by the service, and dropped in the transaction that deletes
 * the record, so neither can exist without the other.
 */
export interface LinkedChange {
  readonly type: 'layerHold';
  /** The layer's ChainID. */
  readonly layer: string;
  /** The holder name (LayeredVolumes.holderOf). */
  readonly holder: string;
}

/**
 * A resize request (#12), as CSI's CapacityRange: the volume must end at least `required` bytes large and,
 * when `limit` is above 0, at most `limit` bytes. Volumes only grow: one already at or above `required` is
 * left as it is (and its last grow finished, if a crash cut it short).
 */
export interface GrowRange {
  readonly required: number;
  readonly limit: number;
}

/** What a build left on disk: released once the record is committed, removed if the commit fails. */
export interface Built {
  /** The record is committed: drop the build's lock (Stage.release). Idempotent. */
  release(): void;
  /** The record could not be committed: delete what the build made. */
  remove(): Promise<unknown>;
  /** What the volume holds, when the build knows it (an empty volume): its first usage figure, no walk. */
  readonly usage?: { readonly bytes: number; readonly files: number };
}

/**
 * A volume's files for a read outside a Mount (a clone's copy, an export, a commit): a path in the data
 * root, or a host directory pinned by an fd and checked against TSVOL_BIND_ROOTS, to be read only below
 * that fd (a Beneath; `.fd` for a worker thread), never by its path (#9 §3).
 */
export interface Contents {
  readonly tree: string | Beneath;
  /** Closes the pinned fds, if any. */
  close(): void;
}

/** What kinds get from the service: shared state and the few service operations they need. */
export interface KindContext {
  readonly config: Config;
  readonly layout: Layout;
  readonly log: Logger;
  /** The TSVOL_BIND_ROOTS allowlist (pins and checks bind-style devices). */
  readonly bindRoots: BindRoots;
  /** The layer manager, opened lazily (layered volumes). */
  readonly layered: LayeredVolumes;
  /** How sized volumes are made here; probed on first use, never at start-up. */
  sizeBacking(): SizeBacking;
  /** The host's devtmpfs, for loop devices (the managed plugin's own /dev has no loop nodes; sys/loop.ts). */
  readonly devDir: string;
  /** The process umask, read once (mkdir's mode is masked by it). */
  readonly umask: number;
  /** Moves volume directories to tmp/ and deletes them in the background. */
  readonly deleter: Deleter;
  /** The record of volume `name`, or NotFoundError (a clone's source). */
  mustGet(name: string): VolumeRecord;
  /** Runs `work` under volume `name`'s per-volume lock (a clone's source while it is mounted for the copy). */
  withLock<T>(name: string, work: () => Promise<T>): Promise<T>;
  /** The kind of another volume's spec (a clone's source): kinds never import the table. */
  kindOf(spec: { readonly kind: KindName }): VolumeKind;
  /**
   * Cluster mode (#14): the shared data root pinned by an fd (the cluster store's). A volume's files are
   * reached below it only (openat2, no symlink followed): another node, or anyone who can write the
   * shared filesystem, could plant a symlink there. Undefined in local mode.
   */
  readonly sharedRoot: Beneath | undefined;
  /**
   * Cluster mode: writes the record into a stage before the rename that publishes it (VolumeStore
   * stageRecord), so that a volume directory appears with its record; every kind then builds in tmp/.
   * Undefined in local mode.
   */
  readonly stageRecord: ((rec: VolumeRecord, dir: string) => void) | undefined;
  /**
   * Runs `fn` while volume `name` is held by this node under a mount ID of its own (a clone's source in
   * cluster mode: another node cannot remove it mid-copy). The hold goes when `fn` settles.
   */
  holdDuring<T>(name: string, fn: () => Promise<T>): Promise<T>;
}

/**
 * One kind of volume. Methods get records of their own kind only (the table dispatches on spec.kind);
 * they are declared as methods so that the table can hold every kind under one type.
 */
export interface VolumeKind<K extends KindName = KindName> {
  /** What Status shows as `kind` (#6): named, bind, sized, clone-of, layered. */
  readonly statusKind: string;
  /**
   * Cluster mode (#14, TSVOL_SCOPE=global): undefined if the kind works there; else why not, naming its
   * options, for the Err of a Create refused in cluster mode.
   */
  readonly clusterRefusal: string | undefined;
  /**
   * True when the volume's files are its own filesystem, visible only while a mount of its own is up on
   * _data (a loop-backed sized volume's ext4 image, a layered volume's overlay): mounted by establish,
   * unmounted by release, so it exists exactly while the volume is held.
   */
  hasOwnMount(spec: SpecOf<K>): boolean;
  /**
   * True when the volume's mountpoint is always a bind mount tsvol makes (binds/<name> without
   * TSVOL_MOUNTS): its source cannot be handed to dockerd as a path (a host directory that could be
   * swapped for a symlink, #9 §10a). Otherwise, without TSVOL_MOUNTS, the mountpoint is its _data.
   */
  readonly privateMountpoint: boolean;
  /**
   * The spec for a Create's validated options: chooses what they leave open (a size backing and project
   * ID, a layer's ChainID for a tag) and checks what they name (a device against TSVOL_BIND_ROOTS, a
   * layer that exists). Nothing on disk: a Create refused here leaves nothing to undo.
   */
  plan(name: string, parsed: Extract<ParsedOptions, { readonly kind: K }>, ctx: KindContext): Promise<SpecOf<K>>;
  /** Changes made with the record and undone after it is deleted (LinkedChange); none for most kinds. */
  linked(rec: RecordOf<K>, ctx: KindContext): readonly LinkedChange[];
  /**
   * Disk work before the record is committed. A directory built whole in tmp/ and renamed into volumes/
   * (buildInTmp) stays locked until Built.release, so that no other process deletes it as record-less
   * meanwhile (sys/staging.ts). On failure leaves nothing behind.
   */
  build(rec: RecordOf<K>, ctx: KindContext): Promise<Built>;
  /**
   * First holder: makes the files visible at the volume's source, its _data (its own mount; a named
   * volume's directory rebuilt if power loss took it). The service then binds the mountpoint if it has one.
   */
  establish(rec: RecordOf<K>, ctx: KindContext): Promise<void>;
  /**
   * Binds the volume's files at `mountpoint` (TSVOL_MOUNTS, or privateMountpoint), after establish.
   * A bind-style volume binds its device pinned by an fd, never by its path (#9 §10a).
   */
  bindTo(rec: RecordOf<K>, mountpoint: string, ctx: KindContext): Promise<void>;
  /**
   * Undoes establish (last holder gone, or a stale mount after a crash): unmounts the volume's own mount;
   * false if nothing was mounted. Throws on failure: the caller logs or refuses.
   */
  release(rec: RecordOf<K>, ctx: KindContext): Promise<boolean>;
  /** The volume's files for a read outside a Mount (see Contents); a volume with its own mount must be established. */
  contents(rec: RecordOf<K>, ctx: KindContext): Contents;
  /**
   * How to measure what the volume uses: its quota's or image's own accounting where there is one, else a
   * walk (a bind-style volume's below its pinned device, never by its path).
   */
  measure(rec: RecordOf<K>, ctx: KindContext): Measure;
  /**
   * True when Status shows the volume's usage, measured in the background (after the last Unmount, or a
   * Get of a stale figure). False for a host directory: not ours to walk unasked; it is measured only when
   * a user asks (`tsvol volume inspect`).
   */
  readonly usageInStatus: boolean;
  /**
   * What a commit to a layer reads when it is not the volume's whole tree: a layered volume's own writes
   * (its upper directory) on top of its layer, read without mounting it. Undefined: the whole tree.
   */
  diffOf(rec: RecordOf<K>, ctx: KindContext): { readonly dir: string; readonly parent: string } | undefined;
  /** Kind-specific Status fields, in display order: device or path, limit and sizeBacking, from, layer. */
  describe(rec: RecordOf<K>, ctx: KindContext): Record<string, unknown>;
  /**
   * The options Status shows, where the volume changed since Create (a sized volume's size after a grow):
   * what they would be to create it as it is now. Undefined: the options given at Create (rec.options,
   * which stay as given, the record of what was asked).
   */
  statusOptions?(rec: RecordOf<K>): Readonly<Record<string, string>> | undefined;
  /**
   * Sized volumes only (#12): grows the volume's limit to `range`, online when it is in use, and returns
   * the limit now in effect. The kind orders its disk work around `commit` (the service's store.put of the
   * new spec, under the volume's lock) so that a crash at any instant leaves the old limit in effect, or the
   * new one committed and finished by the next establish or grow. Undefined: the kind has no size to grow.
   */
  grow?(rec: RecordOf<K>, range: GrowRange, ctx: KindContext, commit: (spec: SpecOf<K>) => Promise<void>): Promise<number>;
  /**
   * Before Remove deletes the record (its mounts are already gone): throws InUseError when the volume's
   * files cannot be deleted now (something mounted on its directory).
   */
  checkRemovable(rec: RecordOf<K>, ctx: KindContext): void;
  /**
   * After Remove deleted the record: the volume's directory to the background deleter (a named volume's
   * empty one removed in place, common.ts removeEmptyVolumeDir), its quota limit cleared. Failures are
   * logged, never returned: the record is gone and start-up collects the rest.
   */
  destroy(rec: RecordOf<K>, ctx: KindContext): Promise<void>;
}
