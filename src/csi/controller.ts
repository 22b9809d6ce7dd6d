/**
 * The CSI Controller service over the volume service (#12): decode → call → encode. Volume IDs are tsvol
 * volume names; `parameters` are tsvol's Create options (uid, gid, mode, size, ...); `capacity_range` makes
 * a sized volume; a content source makes a layered volume on a snapshot's layer, or a clone of a volume.
 */
import fs from 'node:fs';
import { status } from '@grpc/grpc-js';
import { InvalidArgumentError, NotFoundError, TsvolError } from '../errors.js';
import { PUBLISH_HOLD_PREFIX } from '../volumes/holds.js';
import { MIN_SIZE, parseSize } from '../volumes/options.js';
import type { SnapshotInfo, Snapshots } from '../volumes/snapshots.js';
import type { VolumeOps } from '../volumes/volume-ops.js';
import type { VolumeInfo, VolumeService } from '../volumes/volume-service.js';
import { capacityOf, checkCapabilities, csiVolume, topologyMatches, unsupportedCapability } from './common.js';
import { CsiError, required } from './errors.js';
import type {
  ControllerExpandVolumeRequest,
  CreateSnapshotRequest,
  CreateVolumeRequest,
  DeleteSnapshotRequest,
  DeleteVolumeRequest,
  GetCapacityRequest,
  ListSnapshotsRequest,
  PageRequest,
  ValidateVolumeCapabilitiesRequest,
  VolumeContentSource,
} from './messages.js';

/** What the controller needs. */
export interface ControllerDeps {
  readonly service: VolumeService;
  readonly snapshots: Snapshots;
  /** Grows sized volumes (ControllerExpandVolume): the operation `tsvol volume resize` runs. */
  readonly volumes: Pick<VolumeOps, 'resize'>;
  readonly nodeId: string;
  /** The data root: GetCapacity is its filesystem's free space. */
  readonly dataRoot: string;
}

/** The capabilities the controller advertises: all it implements, nothing it does not. */
const CONTROLLER_RPCS = [
  'CREATE_DELETE_VOLUME',
  'LIST_VOLUMES',
  'LIST_VOLUMES_PUBLISHED_NODES',
  'GET_VOLUME',
  'GET_CAPACITY',
  'CREATE_DELETE_SNAPSHOT',
  'LIST_SNAPSHOTS',
  'CLONE_VOLUME',
  'EXPAND_VOLUME',
];

/** Options a restore or a clone takes from its source, so a request's are dropped (see CreateVolume). */
const OWN_OPTIONS = ['uid', 'gid', 'mode', 'size'];

/** Page tokens are opaque: `p1.` and the base64url of the first name of the next page. */
const TOKEN_PREFIX = 'p1.';

/** Pages `items` (sorted by `key`) as ListVolumes/ListSnapshots do; ABORTED for a token we did not make. */
function page<T>(items: readonly T[], key: (t: T) => string, req: PageRequest): { items: T[]; next: string } {
  if (req.max_entries < 0) throw new CsiError(status.INVALID_ARGUMENT, `max_entries ${req.max_entries} must not be negative`);
  let start = 0;
  if (req.starting_token !== '') {
    const token = req.starting_token;
    const from = token.startsWith(TOKEN_PREFIX) ? Buffer.from(token.slice(TOKEN_PREFIX.length), 'base64url').toString('utf8') : '';
    if (from === '' || `${TOKEN_PREFIX}${Buffer.from(from).toString('base64url')}` !== token) {
      throw new CsiError(status.ABORTED, `starting_token ${JSON.stringify(token)} was not issued by this plugin; list again without a token`);
    }
    // The first item at or after the token's name: deletions between pages never skip or repeat an item.
    start = items.findIndex((t) => key(t) >= from);
    if (start < 0) start = items.length;
  }
  const end = req.max_entries > 0 ? Math.min(items.length, start + req.max_entries) : items.length;
  const nextItem = items[end];
  return { items: items.slice(start, end), next: nextItem === undefined ? '' : `${TOKEN_PREFIX}${Buffer.from(key(nextItem)).toString('base64url')}` };
}

const byName = <T extends { name: string }>(a: T, b: T): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** Parses an int64 string; INVALID_ARGUMENT for a negative one. */
function bytes(value: string, what: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new CsiError(status.INVALID_ARGUMENT, `${what} ${value} must be a non-negative number of bytes`);
  return n;
}

/** The volume, or undefined if unknown (or its ID is no tsvol name, so cannot be ours). */
function tryGet(service: VolumeService, id: string): VolumeInfo | undefined {
  try {
    return service.get(id);
  } catch (err) {
    if (err instanceof NotFoundError || err instanceof InvalidArgumentError) return undefined;
    throw err;
  }
}

/** A volume's Create options as a canonical string, to compare requests. */
function optionsKey(opts: Iterable<[string, string]>): string {
  return JSON.stringify([...opts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Whether an existing volume answers a CreateVolume of its name (the spec: "compatible with the specified
 * capacity_range … parameters"): the same options but size, and a size the volume meets. Status shows a
 * grown volume's size now (ControllerExpandVolume), so a CreateVolume retried after an expand asks for less
 * than the volume has: compatible, as long as the volume is within limit_bytes.
 */
function answersCreate(had: Readonly<Record<string, string>> | undefined, asked: ReadonlyMap<string, string>, capacity: number, limitBytes: number): boolean {
  const rest = (opts: Iterable<[string, string]>): string => optionsKey([...opts].filter(([k]) => k !== 'size'));
  const hadOpts = Object.entries(had ?? {});
  if (rest(hadOpts) !== rest(asked)) return false;
  const size = asked.get('size');
  const hadSize = hadOpts.find(([k]) => k === 'size')?.[1];
  if (size === undefined || hadSize === undefined) return size === hadSize;
  return parseSize(size) <= capacity && (limitBytes === 0 || capacity <= limitBytes);
}

function snapshotMessage(s: SnapshotInfo): Record<string, unknown> {
  const ms = Date.parse(s.createdAt);
  return {
    snapshot_id: s.name,
    source_volume_id: s.source,
    size_bytes: String(s.size),
    creation_time: { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 },
    ready_to_use: true,
    group_snapshot_id: '',
  };
}

/** The Controller service's handlers. */
export function controllerHandlers(deps: ControllerDeps) {
  const { service, snapshots, nodeId } = deps;

  /** The content source a volume was made from, as CreateVolume reports it. */
  function contentSourceOf(info: VolumeInfo): VolumeContentSource | null {
    const opts = info.status.options as Readonly<Record<string, string>> | undefined;
    if (opts === undefined) return null;
    const from = Object.entries(opts).find(([k]) => k === 'from')?.[1];
    if (from !== undefined) return { volume: { volume_id: from } };
    const layer = Object.entries(opts).find(([k]) => k === 'layer')?.[1];
    const snap = layer === undefined ? undefined : snapshots.list().find((s) => s.layer === layer);
    return snap === undefined ? null : { snapshot: { snapshot_id: snap.name } };
  }

  /** A volume's status: published on this node while any CSI publish holds it (a Docker Mount is not a CSI publish). */
  function statusOf(info: VolumeInfo): Record<string, unknown> {
    const holders = info.status.holders;
    const published = Array.isArray(holders) && holders.some((h) => typeof h === 'string' && h.startsWith(PUBLISH_HOLD_PREFIX));
    return { published_node_ids: published ? [nodeId] : [], volume_condition: null };
  }

  return {
    async ControllerGetVolume(req: DeleteVolumeRequest) {
      const id = required(req.volume_id, 'ControllerGetVolume: volume_id');
      const info = tryGet(service, id);
      if (info === undefined) throw new CsiError(status.NOT_FOUND, `volume "${id}" not found; ListVolumes lists them`);
      return { volume: csiVolume(info, nodeId, contentSourceOf(info)), status: statusOf(info) };
    },

    async CreateVolume(req: CreateVolumeRequest) {
      const name = required(req.name, 'CreateVolume: name');
      checkCapabilities(req.volume_capabilities, `CreateVolume "${name}"`);
      const requisite = req.accessibility_requirements?.requisite ?? [];
      if (requisite.length > 0 && !requisite.some((t) => topologyMatches(t, nodeId))) {
        throw new CsiError(status.RESOURCE_EXHAUSTED, `CreateVolume "${name}": tsvol makes volumes on node "${nodeId}" only, which the requisite topology excludes`);
      }
      const opts = new Map<string, string>(Object.entries(req.parameters));
      const source = req.volume_content_source;
      if (source !== null) {
        // A restore or a clone has its source's files, owners and modes: a StorageClass's ownership and
        // size parameters, which Kubernetes passes on every CreateVolume, do not apply to it.
        for (const key of OWN_OPTIONS) opts.delete(key);
      }
      if (source?.snapshot) {
        const snap = snapshots.find(source.snapshot.snapshot_id);
        if (snap === undefined) throw new CsiError(status.NOT_FOUND, `CreateVolume "${name}": snapshot "${source.snapshot.snapshot_id}" not found; ListSnapshots lists them`);
        opts.set('layer', snap.layer);
      } else if (source?.volume) {
        const from = source.volume.volume_id;
        if (tryGet(service, from) === undefined) throw new CsiError(status.NOT_FOUND, `CreateVolume "${name}": source volume "${from}" not found; ListVolumes lists them`);
        opts.set('from', from);
      }
      const range = req.capacity_range;
      const wanted = range === null ? 0 : bytes(range.required_bytes, 'capacity_range.required_bytes');
      const limit = range === null ? 0 : bytes(range.limit_bytes, 'capacity_range.limit_bytes');
      if (limit > 0 && wanted > limit) throw new CsiError(status.INVALID_ARGUMENT, `CreateVolume "${name}": required_bytes ${wanted} exceeds limit_bytes ${limit}`);
      // A clone or a restore has its source's contents and no limit of its own (tsvol cannot size those yet):
      // the range is met by an unlimited volume, so it is accepted and the capacity reported as unknown (0).
      if ((wanted > 0 || limit > 0) && source === null) {
        if (opts.has('size')) throw new CsiError(status.INVALID_ARGUMENT, `CreateVolume "${name}": give the size as capacity_range or as parameter size, not both`);
        const size = Math.max(wanted, MIN_SIZE);
        if (limit > 0 && size > limit) {
          throw new CsiError(status.OUT_OF_RANGE, `CreateVolume "${name}": the smallest sized volume is ${MIN_SIZE} bytes, above limit_bytes ${limit}; raise the limit`);
        }
        opts.set('size', String(size));
      }
      // Create of an existing name changes nothing (the service's rule, as Docker's): compare afterwards,
      // so that two racing CreateVolumes with incompatible options cannot both succeed.
      if (tryGet(service, name) === undefined) await service.create(name, opts);
      const info = service.get(name);
      const had = info.status.options as Readonly<Record<string, string>> | undefined;
      const cap = capacityOf(info);
      if (!answersCreate(had, opts, cap, limit)) {
        throw new CsiError(
          status.ALREADY_EXISTS,
          `volume "${name}" already exists with other ${cap > 0 ? `capacity (${cap} bytes) or ` : ''}parameters (${JSON.stringify(had ?? {})}); ask with the same ones, or use another name`,
        );
      }
      return { volume: csiVolume(info, nodeId, contentSourceOf(info)) };
    },

    async DeleteVolume(req: DeleteVolumeRequest) {
      const id = required(req.volume_id, 'DeleteVolume: volume_id');
      if (tryGet(service, id) === undefined) return {}; // an unknown ID is success (the spec: idempotent)
      try {
        await service.remove(id);
      } catch (err) {
        if (err instanceof NotFoundError) return {}; // removed meanwhile
        throw err;
      }
      return {};
    },

    /**
     * Grows a sized volume (#12), online: the controller is the node, so it does the whole of it (the
     * filesystem included) and never asks for NodeExpandVolume. At or above the range already: OK with
     * the current capacity (the spec's idempotency); above limit_bytes: OUT_OF_RANGE (no shrinking).
     */
    async ControllerExpandVolume(req: ControllerExpandVolumeRequest) {
      const id = required(req.volume_id, 'ControllerExpandVolume: volume_id');
      const range = req.capacity_range;
      if (range === null) throw new CsiError(status.INVALID_ARGUMENT, `ControllerExpandVolume "${id}": capacity_range is required`);
      const wanted = bytes(range.required_bytes, 'capacity_range.required_bytes');
      const limit = bytes(range.limit_bytes, 'capacity_range.limit_bytes');
      if (wanted === 0 && limit === 0) throw new CsiError(status.INVALID_ARGUMENT, `ControllerExpandVolume "${id}": capacity_range needs required_bytes or limit_bytes`);
      if (limit > 0 && wanted > limit) throw new CsiError(status.INVALID_ARGUMENT, `ControllerExpandVolume "${id}": required_bytes ${wanted} exceeds limit_bytes ${limit}`);
      if (req.volume_capability !== null) checkCapabilities([req.volume_capability], `ControllerExpandVolume "${id}"`);
      if (tryGet(service, id) === undefined) throw new CsiError(status.NOT_FOUND, `volume "${id}" not found; ListVolumes lists them`);
      const capacity = await deps.volumes.resize(id, { required: wanted, limit });
      return { capacity_bytes: String(capacity), node_expansion_required: false };
    },

    async ValidateVolumeCapabilities(req: ValidateVolumeCapabilitiesRequest) {
      const id = required(req.volume_id, 'ValidateVolumeCapabilities: volume_id');
      if (req.volume_capabilities.length === 0) throw new CsiError(status.INVALID_ARGUMENT, `ValidateVolumeCapabilities "${id}": volume_capabilities is required`);
      if (tryGet(service, id) === undefined) throw new CsiError(status.NOT_FOUND, `volume "${id}" not found; ListVolumes lists them`);
      const why = req.volume_capabilities.map(unsupportedCapability).find((w) => w !== undefined);
      if (why !== undefined) return { confirmed: null, message: `volume "${id}": ${why}` };
      return {
        confirmed: { volume_context: req.volume_context, volume_capabilities: req.volume_capabilities, parameters: req.parameters, mutable_parameters: {} },
        message: '',
      };
    },

    async ListVolumes(req: PageRequest) {
      const all = service.list().sort(byName);
      const { items, next } = page(all, (v) => v.name, req);
      return {
        entries: items.map((v) => {
          const info = service.get(v.name);
          return { volume: csiVolume(info, nodeId, contentSourceOf(info)), status: statusOf(info) };
        }),
        next_token: next,
      };
    },

    async GetCapacity(req: GetCapacityRequest) {
      const caps = req.volume_capabilities;
      const elsewhere = req.accessible_topology !== null && !topologyMatches(req.accessible_topology, nodeId);
      if (elsewhere || caps.some((c) => unsupportedCapability(c) !== undefined)) return { available_capacity: '0', maximum_volume_size: null, minimum_volume_size: null };
      const st = await fs.promises.statfs(deps.dataRoot);
      return { available_capacity: String(st.bavail * st.bsize), maximum_volume_size: null, minimum_volume_size: null };
    },

    async ControllerGetCapabilities() {
      return { capabilities: CONTROLLER_RPCS.map((type) => ({ rpc: { type } })) };
    },

    async CreateSnapshot(req: CreateSnapshotRequest) {
      const name = required(req.name, 'CreateSnapshot: name');
      const source = required(req.source_volume_id, `CreateSnapshot "${name}": source_volume_id`);
      if (tryGet(service, source) === undefined) throw new CsiError(status.NOT_FOUND, `CreateSnapshot "${name}": source volume "${source}" not found; ListVolumes lists them`);
      try {
        return { snapshot: snapshotMessage(await snapshots.create(name, source)) };
      } catch (err) {
        if (err instanceof TsvolError && err.code === 'TSVOL_CONFLICT') throw new CsiError(status.ALREADY_EXISTS, err.message);
        throw err;
      }
    },

    async DeleteSnapshot(req: DeleteSnapshotRequest) {
      await snapshots.remove(required(req.snapshot_id, 'DeleteSnapshot: snapshot_id'));
      return {};
    },

    async ListSnapshots(req: ListSnapshotsRequest) {
      let all = snapshots.list();
      if (req.snapshot_id !== '') all = all.filter((s) => s.name === req.snapshot_id);
      if (req.source_volume_id !== '') all = all.filter((s) => s.source === req.source_volume_id);
      const { items, next } = page(all, (s) => s.name, req);
      return { entries: items.map((s) => ({ snapshot: snapshotMessage(s) })), next_token: next };
    },
  };
}
