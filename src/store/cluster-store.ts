/**
 * The cluster-mode VolumeStore (#14): the shared filesystem itself is the store. No SQLite (its own
 * documentation warns against a database on a network filesystem), no global file that every write
 * rewrites, and nothing cached that another node can change: every read goes to the filesystem, and costs
 * the same however many volumes there are (List aside). Layout in src/store/layout.ts; files and their
 * strict parsers in cluster-files.ts; node leases in node-lease.ts.
 *
 * One writer per file. A volume's record is written once, by the node that creates it, into the stage
 * that becomes the volume's directory: one rename publishes directory and record together, or fails
 * because the name is taken (Create then finds the volume that won). Each node's holds are in
 * volumes/<name>/holds/<node>, and only that node writes them; a removal in progress is
 * volumes/<name>/removing/<node>, likewise. So no two nodes ever write one file, and the only operation
 * nodes contend on is the rename that removes a volume, which the filesystem makes atomic.
 *
 * Remove against Mount on another node, race-free by structure (Dekker's protocol on files):
 * - Mount writes its hold (durably), then looks for live removal markers, then checks the volume is still
 *   the one it read (its incarnation). A marker: it withdraws its hold and retries a few times (the
 *   remover may be about to give up), then fails; the volume gone: it fails.
 * - Remove writes its marker (durably), then looks for live holds of other nodes. One: it withdraws its
 *   marker and refuses, naming the node. None: it renames the volume's directory into its own tmp/ (the
 *   volume is gone for everyone at that instant) and deletes it in the background.
 * Each side writes before it reads, so at least one of any Mount and Remove that overlap sees the other:
 * never a removed volume with a live hold. Holds of a node whose lease expired count as gone; the remover
 * takes them over with a log line (node, volume, mount IDs, how long expired). A marker counts only while
 * its writer's server instance holds its node's lease.
 *
 * The protocol needs the filesystem to show an operation one client completed to the next lookup or
 * readdir of another (close-to-open consistency: GlusterFS and CephFS give it; NFS with the options in the
 * README), and nodes' clocks to agree to well within the lease (node-lease.ts).
 */
import path from 'node:path';
import { nanoid } from 'nanoid';
import { ConflictError, InUseError, InternalError, NotFoundError, describeError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import { Beneath } from '../sys/beneath.js';
import { readBootId } from '../sys/boot.js';
import { fsyncDirAt, writeFileDurableAt } from '../sys/durable.js';
import {
  BadFileError,
  VOLUMES,
  clusterPaths,
  isNodeId,
  listNamesAt,
  parseHolds,
  parseMarker,
  parseMeta,
  parseRecord,
  readFileAt,
  serializeHolds,
  serializeMarker,
  serializeMeta,
  serializeRecord,
  type StoredRecord,
} from './cluster-files.js';
import { CLUSTER_MARKER, NODES_DIR, type Layout } from './layout.js';
import { pausePoint } from './crash-point.js';
import { createNodeLease, type NodeLease } from './node-lease.js';
import { isVolumeName, type VolumeRecord } from './records.js';
import type { NodeHolds, VolumeStore } from './volume-store.js';

/** How often a Mount that found a removal in progress withdraws and tries again before it gives up. */
const MOUNT_TRIES = 8;
/** Its pause between tries grows by this much each time (ms): about 3.6 s in all. */
const MOUNT_BACKOFF_MS = 100;

/** What the cluster store needs. */
export interface ClusterStoreOptions {
  /** The data root's layout for this node (createLayout(root, node)). */
  readonly layout: Layout;
  readonly leaseMs: number;
  readonly log: Logger;
  /** The kernel's boot id (tests of two nodes in one process give each its own). */
  readonly boot?: string;
  /** How often a start-up watch reads a live twin's lease (tests shorten it). */
  readonly leasePollMs?: number;
}

/** The cluster store: a VolumeStore, and the node's lease (which the server keeps renewing). */
export interface ClusterStore extends VolumeStore {
  readonly lease: NodeLease;
  /** The data root pinned by an fd: the kinds reach volume files below it only (#9). */
  readonly root: Beneath;
}

/** Two holds maps with the same IDs and counts. */
function sameHolds(a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>): boolean {
  if (a.size !== b.size) return false;
  for (const [id, n] of a) if (b.get(id) !== n) return false;
  return true;
}

/** True if `b` holds some ID more often than `a`: a Mount. */
function grows(a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>): boolean {
  for (const [id, n] of b) if (n > (a.get(id) ?? 0)) return true;
  return false;
}

/** "IDs a, b" for a message; the empty ID shown as (none). */
function idList(holds: ReadonlyMap<string, number>): string {
  return [...holds.keys()].map((id) => (id === '' ? '(none)' : id)).join(', ');
}

/** The mkdir of `rel` below `root`; an existing directory is fine. */
function mkdirAt(root: Beneath, rel: string, mode: number): void {
  try {
    root.mkdir(rel, mode);
  } catch (err) {
    // EEXIST: made before (by this node or another): what we want.
    if (errnoCode(err) !== 'EEXIST') throw err;
  }
}

/**
 * Opens the cluster store of `opts.layout` (a cluster-mode layout: createLayout(root, node)): pins the
 * data root, marks it a cluster root, makes this node's directories and claims the node's lease (which
 * may wait to rule out a live twin: NodeLease.claim). The caller checked that the root is a shared
 * filesystem (src/sys/fs-type.ts).
 */
export async function openClusterStore(opts: ClusterStoreOptions): Promise<ClusterStore> {
  const { layout, log } = opts;
  const me = layout.node;
  if (me === undefined || !isNodeId(me)) throw new InternalError('the cluster store needs a layout with a valid node ID');
  const root = Beneath.open(layout.root);
  try {
    if (root.lstat('tsvol.db') !== undefined) {
      throw new ConflictError(
        `${layout.root} holds a local-mode store (tsvol.db): cluster mode (TSVOL_SCOPE=global) needs a shared root of its own; move the volumes over with tsvol volume export/import`,
      );
    }
    // Two nodes starting at once on a fresh root both write it: the same content, by rename.
    if (root.lstat(CLUSTER_MARKER) === undefined) writeFileDurableAt(root, CLUSTER_MARKER, `${JSON.stringify({ format: 1, scope: 'global' })}\n`, 0o644);
    mkdirAt(root, VOLUMES, 0o701);
    mkdirAt(root, NODES_DIR, 0o700);
    mkdirAt(root, clusterPaths.nodeDir(me), 0o700);
    mkdirAt(root, clusterPaths.tmp(me), 0o700);
  } catch (err) {
    root.close();
    throw err;
  }
  const lease = createNodeLease({ root, node: me, leaseMs: opts.leaseMs, log, boot: opts.boot ?? readBootId(), pollMs: opts.leasePollMs });
  try {
    await lease.claim();
  } catch (err) {
    root.close();
    throw err;
  }
  return clusterStore(root, me, layout, lease, log);
}

function clusterStore(root: Beneath, me: string, layout: Layout, lease: NodeLease, log: Logger): ClusterStore {
  /** A Mount or Remove needs this much of its own lease left when it acts: a third of the lease. */
  const marginMs = lease.leaseMs / 3;
  /** Volumes this node holds, for the report after a lapsed lease (only this node writes its holds). */
  const held = new Set<string>();

  lease.onRegained(() => {
    for (const name of held) {
      if (readRecord(name) !== undefined) continue;
      held.delete(name);
      log.error({ node: me, volume: name }, 'volume was removed by another node while this node had lost its lease; its mounts here now see a deleted directory');
    }
  });

  /** The record file of `name` as stored, or undefined if there is none (never, or removed). */
  function readRecord(name: string): StoredRecord | undefined {
    const rel = clusterPaths.record(name);
    try {
      const text = readFileAt(root, rel);
      return text === undefined ? undefined : parseRecord(name, text, `${root.where}/${rel}`);
    } catch (err) {
      // A record that is not tsvol's shape, or a path through a symlink or a file: refused, never followed.
      if (err instanceof InternalError) throw err;
      throw new InternalError(
        `volume "${name}": its record on the shared root is damaged or was not written by tsvol (${describeError(err)}); remove ${layout.volumeDir(name)} by hand if it is no volume`,
        { cause: err },
      );
    }
  }

  /** This node's holds on `name` (none if the file is missing). */
  function readOwnHolds(name: string): Map<string, number> {
    const rel = clusterPaths.holds(name, me);
    const text = readFileAt(root, rel);
    if (text === undefined) return new Map();
    try {
      return parseHolds(me, text, `${root.where}/${rel}`);
    } catch (err) {
      if (!(err instanceof BadFileError)) throw err;
      throw new InternalError(`volume "${name}": this node's holds file is damaged (${err.message}); remove ${root.where}/${rel} by hand and restart`);
    }
  }

  /** Writes this node's holds on `name` (removes the file when there are none). ENOENT: the volume is gone. */
  function writeOwnHolds(name: string, holds: ReadonlyMap<string, number>): void {
    const rel = clusterPaths.holds(name, me);
    if (holds.size === 0) {
      root.remove(rel); // a missing file is fine; a missing volume directory throws ENOENT
      fsyncDirAt(root, clusterPaths.holdsDir(name));
      return;
    }
    mkdirAt(root, clusterPaths.holdsDir(name), 0o700);
    writeFileDurableAt(root, rel, serializeHolds(me, holds));
  }

  /** writeOwnHolds, for an undo: a volume gone meanwhile has nothing left to undo. */
  function restoreOwnHolds(name: string, holds: ReadonlyMap<string, number>): void {
    try {
      writeOwnHolds(name, holds);
    } catch (err) {
      // ENOENT: the volume's directory is gone (removed), and the hold with it.
      if (errnoCode(err) !== 'ENOENT') log.error({ volume: name, err: describeError(err) }, 'could not withdraw this node\'s hold; it lasts until this node unmounts or its lease expires');
    }
  }

  /** Other nodes' holds on `name`, each with its node's lease state (read now). */
  function holdsElsewhere(name: string): NodeHolds[] {
    const out: NodeHolds[] = [];
    for (const node of listNamesAt(root, clusterPaths.holdsDir(name))) {
      if (node === me || !isNodeId(node)) continue;
      const rel = clusterPaths.holds(name, node);
      let holds: Map<string, number>;
      try {
        const text = readFileAt(root, rel);
        if (text === undefined) continue; // withdrawn between the listing and the read
        holds = parseHolds(node, text, `${root.where}/${rel}`);
      } catch (err) {
        // A holds file nobody can read still says its node holds the volume: err towards refusing Remove.
        log.warn({ volume: name, node, err: describeError(err) }, 'unreadable holds file of another node; counting it as one hold');
        holds = new Map([['(unreadable)', 1]]);
      }
      if (holds.size === 0) continue;
      const state = lease.stateOf(node);
      out.push({ node, holds, live: state.live, expiredForMs: state.expiredForMs });
    }
    return out;
  }

  /** Nodes whose removal of `name` is in progress now (a marker whose writer still holds its lease). */
  function liveRemovers(name: string): string[] {
    const out: string[] = [];
    for (const node of listNamesAt(root, clusterPaths.removingDir(name))) {
      // This node's own marker: its removals and mounts of one volume never overlap (the service's lock).
      if (node === me || !isNodeId(node)) continue;
      const rel = clusterPaths.removing(name, node);
      try {
        const text = readFileAt(root, rel);
        if (text === undefined) continue;
        const marker = parseMarker(node, text, `${root.where}/${rel}`);
        const state = lease.stateOf(node);
        if (state.live && state.record?.state === 'running' && state.record.instance === marker.instance) out.push(node);
      } catch (err) {
        // A marker nobody can read cannot name a live removal: ignored, and said.
        log.warn({ volume: name, node, err: describeError(err) }, 'unreadable removal marker of another node; ignoring it');
      }
    }
    return out;
  }

  /** The refusal of a Remove while other live nodes hold the volume, naming them. */
  function inUseElsewhere(name: string, live: readonly NodeHolds[]): InUseError {
    const where = live.map((h) => {
      let n = 0;
      for (const c of h.holds.values()) n += c;
      return `node "${h.node}": ${n} active mount(s) (IDs ${idList(h.holds)})`;
    });
    return new InUseError(`volume "${name}" is in use on ${where.join('; ')}; stop the containers using it on ${live.length === 1 ? 'that node' : 'those nodes'} first`);
  }

  function removeMarker(name: string): void {
    try {
      root.remove(clusterPaths.removing(name, me));
    } catch (err) {
      // ENOENT: the volume's directory is gone, the marker with it. Else the marker stays, ignored by
      // every node once this server's instance no longer holds the lease.
      if (errnoCode(err) !== 'ENOENT') log.warn({ volume: name, err: describeError(err) }, 'could not withdraw removal marker');
    }
  }

  /** A Mount's hold: write it, then check for removals and that the volume is still the same one. */
  async function acquire(rec: VolumeRecord, stored: StoredRecord, before: ReadonlyMap<string, number>): Promise<void> {
    const { name } = rec;
    for (let attempt = 1; ; attempt++) {
      lease.assertOwn(`mount volume "${name}"`, marginMs);
      try {
        writeOwnHolds(name, rec.holds);
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') throw new NotFoundError(`volume "${name}" was removed by another node meanwhile`);
        throw err;
      }
      const removers = liveRemovers(name);
      const now = readRecord(name);
      if (now?.incarnation !== stored.incarnation) {
        // Gone, or a new volume of the same name (created after a removal elsewhere) that this node never
        // held: the hold just written, if it landed anywhere, is withdrawn whole.
        if (now !== undefined) restoreOwnHolds(name, new Map());
        throw new NotFoundError(`volume "${name}" was removed by another node meanwhile`);
      }
      if (removers.length === 0) {
        try {
          lease.assertOwn(`mount volume "${name}"`, marginMs);
        } catch (err) {
          restoreOwnHolds(name, before);
          throw err;
        }
        held.add(name);
        return;
      }
      // A removal in progress: withdraw, and give it time to finish or to give up (it sees our hold).
      restoreOwnHolds(name, before);
      if (attempt >= MOUNT_TRIES) {
        throw new ConflictError(`volume "${name}" is being removed by node "${removers[0]!}"; retry if it is still there`);
      }
      await new Promise((r) => setTimeout(r, MOUNT_BACKOFF_MS * attempt));
    }
  }

  function readMeta(): Map<string, string> {
    const rel = clusterPaths.meta(me);
    const text = readFileAt(root, rel);
    if (text === undefined) return new Map();
    try {
      return parseMeta(text, `${root.where}/${rel}`);
    } catch (err) {
      // Only start-up facts live there (the boot id): a damaged file forgets them, as a fresh node would.
      if (!(err instanceof BadFileError)) throw err;
      log.warn({ err: err.message }, 'node meta file damaged; starting it afresh');
      return new Map();
    }
  }

  function get(name: string): VolumeRecord | undefined {
    if (!isVolumeName(name)) return undefined;
    const stored = readRecord(name);
    if (stored === undefined) return undefined;
    const { node: _creator, ...rec } = stored;
    return { ...rec, holds: readOwnHolds(name) };
  }

  function volumeNames(): string[] {
    return listNamesAt(root, VOLUMES).filter(isVolumeName);
  }

  return {
    scope: 'global',
    lease,
    root,
    get,

    *list() {
      for (const name of volumeNames()) {
        let rec: VolumeRecord | undefined;
        try {
          rec = get(name);
        } catch (err) {
          // One damaged record must not hide every other volume: skipped, and said (Get names the fix).
          log.warn({ volume: name, err: describeError(err) }, 'volume skipped in listing: unreadable record');
          continue;
        }
        if (rec !== undefined) yield rec;
      }
    },

    get size() {
      return volumeNames().length;
    },

    async put(record, syncDirs = [], also = []) {
      if (also.length > 0) throw new InternalError('cluster mode keeps no layer records (layered volumes are refused)');
      // Directories a new record depends on were fsynced by its stage's publish (stageRecord); kept for the contract.
      for (const dir of syncDirs) fsyncDirAt(root, path.relative(layout.root, dir));
      const { name } = record;
      const stored = readRecord(name);
      if (stored === undefined || (record.incarnation !== undefined && record.incarnation !== stored.incarnation)) {
        // A record is published with its directory (stageRecord): a record missing here was removed.
        throw new NotFoundError(`volume "${name}" was removed by another node meanwhile`);
      }
      const before = readOwnHolds(name);
      if (sameHolds(before, record.holds)) return;
      if (grows(before, record.holds)) {
        await acquire(record, stored, before);
        return;
      }
      // Unmount: no lease needed to let go (a node that lost its lease still unmounts).
      try {
        writeOwnHolds(name, record.holds);
      } catch (err) {
        // ENOENT: removed by another node (after this node's lease expired): nothing of it holds anything.
        if (errnoCode(err) !== 'ENOENT') throw err;
      }
      if (record.holds.size === 0) held.delete(name);
    },

    async delete(name, also = []) {
      if (also.length > 0) throw new InternalError('cluster mode keeps no layer records (layered volumes are refused)');
      lease.assertOwn(`remove volume "${name}"`, marginMs);
      if (readRecord(name) === undefined) return undefined; // removed by another node: what Remove wants
      const early = holdsElsewhere(name).filter((h) => h.live);
      if (early.length > 0) throw inUseElsewhere(name, early);
      // Mark, then look (Dekker): a Mount that wrote its hold before our mark is seen below; one after it sees the mark.
      try {
        mkdirAt(root, clusterPaths.removingDir(name), 0o700);
        writeFileDurableAt(root, clusterPaths.removing(name, me), serializeMarker({ node: me, instance: lease.instance, at: Date.now() }));
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') return undefined; // removed by another node meanwhile
        throw err;
      }
      let others: NodeHolds[];
      try {
        others = holdsElsewhere(name);
        const live = others.filter((h) => h.live);
        if (live.length > 0) throw inUseElsewhere(name, live);
        lease.assertOwn(`remove volume "${name}"`, marginMs);
      } catch (err) {
        removeMarker(name);
        throw err;
      }
      for (const h of others) {
        log.warn(
          { node: h.node, volume: name, ids: [...h.holds.keys()], expiredForS: Number.isFinite(h.expiredForMs) ? Math.round(h.expiredForMs / 1000) : 'no lease' },
          'taking over the holds of a node whose lease expired',
        );
      }
      const tomb = `${clusterPaths.tmp(me)}/rm-${nanoid(10)}`;
      pausePoint('cluster:remove:before-rename');
      try {
        root.rename(clusterPaths.volume(name), tomb);
      } catch (err) {
        // ENOENT: another node removed it first (its rename won): gone, as Remove wants.
        if (errnoCode(err) === 'ENOENT') return undefined;
        removeMarker(name);
        throw err;
      }
      fsyncDirAt(root, VOLUMES);
      held.delete(name);
      return path.join(layout.root, tomb);
    },

    holdsElsewhere: (name) => (isVolumeName(name) ? holdsElsewhere(name) : []),

    stageRecord(rec, dir) {
      const rel = path.relative(layout.root, dir);
      if (rel.startsWith('..') || path.isAbsolute(rel)) throw new InternalError(`stage ${dir} is outside the data root ${layout.root}`);
      mkdirAt(root, `${rel}/holds`, 0o700);
      mkdirAt(root, `${rel}/removing`, 0o700);
      writeFileDurableAt(root, `${rel}/record`, serializeRecord(rec, me), 0o600);
    },

    getMeta: (key) => readMeta().get(key),
    async putMeta(key, value) {
      const meta = readMeta();
      meta.set(key, value);
      writeFileDurableAt(root, clusterPaths.meta(me), serializeMeta(meta));
    },

    async close() {
      await lease.stop(true);
      root.close();
    },
  };
}
