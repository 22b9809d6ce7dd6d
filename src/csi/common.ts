/**
 * What the CSI services share: the driver's name and topology key, access-mode checks, and how a tsvol
 * volume looks as a CSI Volume. Volume IDs are tsvol volume names, so Docker and CSI see one list.
 */
import { status } from '@grpc/grpc-js';
import type { VolumeInfo } from '../volumes/volume-service.js';
import { PUBLISH_MOUNT_FLAGS } from '../volumes/publish.js';
import { CsiError } from './errors.js';
import type { Topology, VolumeCapability } from './messages.js';

/** GetPluginInfo's name: DNS-style, at most 63 characters (the spec), and the name of the CSIDriver object. */
export const DRIVER_NAME = 'csi.tsvol.local';
/** The topology segment every volume and this node report: volumes live on one node's disk. */
export const TOPOLOGY_KEY = 'topology.csi.tsvol.local/node';

/**
 * Access modes of a node-local volume: any number of publishes on its one node. Modes that span nodes are
 * refused: another node cannot reach this node's disk.
 */
const SUPPORTED_MODES = new Set(['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER']);
/** Read-only access modes: a publish with one is read-only whatever `readonly` says. */
export const READ_ONLY_MODES = new Set(['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY']);

/** Why `cap` cannot be served, or undefined if it can. */
export function unsupportedCapability(cap: VolumeCapability): string | undefined {
  if (cap.access_type === 'block' || (cap.block !== undefined && cap.block !== null)) {
    return 'block access is not supported: tsvol volumes are directories; ask for mount access';
  }
  if (cap.access_type !== 'mount' && (cap.mount === undefined || cap.mount === null)) {
    return 'a volume capability needs an access type (mount)';
  }
  const flags = mountFlagsOf(cap);
  if (typeof flags === 'string') return flags;
  if ((cap.mount?.volume_mount_group ?? '') !== '') {
    return 'volume_mount_group is not supported (the node does not advertise VOLUME_MOUNT_GROUP): a bind mount cannot change file ownership';
  }
  const mode = cap.access_mode?.mode ?? 'UNKNOWN';
  if (!SUPPORTED_MODES.has(mode)) {
    return `access mode ${mode} is not supported: tsvol volumes are node-local; use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY`;
  }
  return undefined;
}

/** mount_flags a publish sets on its bind (src/volumes/publish.ts), plus `rw`, the default. */
const HONOURED_FLAGS = new Set([...PUBLISH_MOUNT_FLAGS, 'rw']);
/** At most one of these: each names the whole atime policy. */
const ATIME_FLAGS = ['noatime', 'relatime', 'strictatime'];

/**
 * The mount flags of `cap` (each entry may hold several, comma-separated, as mount(8) takes them), or why
 * they cannot be honoured. A publish is a bind mount: only per-mount flags can be set on it; a filesystem
 * option (`uid=`, `data=`, `discard`…) would need a mount of its own, so it is refused, not ignored.
 */
export function mountFlagsOf(cap: VolumeCapability): string[] | string {
  const flags = (cap.mount?.mount_flags ?? []).flatMap((f) => f.split(',')).map((f) => f.trim()).filter((f) => f !== '');
  const bad = flags.filter((f) => !HONOURED_FLAGS.has(f));
  if (bad.length > 0) {
    return `mount_flags ${bad.map((f) => JSON.stringify(f)).join(', ')} cannot be honoured: a publish is a bind mount, which takes only ${[...HONOURED_FLAGS].join(', ')}`;
  }
  if (flags.includes('ro') && flags.includes('rw')) return 'mount_flags has both "ro" and "rw"';
  if (ATIME_FLAGS.filter((f) => flags.includes(f)).length > 1) return `mount_flags has more than one of ${ATIME_FLAGS.join(', ')}`;
  return flags;
}

/** Throws INVALID_ARGUMENT unless `caps` is a non-empty list of supported capabilities; `what` names the volume. */
export function checkCapabilities(caps: readonly VolumeCapability[], what: string): void {
  if (caps.length === 0) throw new CsiError(status.INVALID_ARGUMENT, `${what}: volume_capabilities is required`);
  for (const cap of caps) {
    const why = unsupportedCapability(cap);
    if (why !== undefined) throw new CsiError(status.INVALID_ARGUMENT, `${what}: ${why}`);
  }
}

/** This node as a topology. */
export function nodeTopology(nodeId: string): Topology {
  return { segments: { [TOPOLOGY_KEY]: nodeId } };
}

/** True if `t` names this node (a segment for another key is not ours to judge, and passes). */
export function topologyMatches(t: Topology, nodeId: string): boolean {
  for (const [key, value] of Object.entries(t.segments)) {
    if (key === TOPOLOGY_KEY && value !== nodeId) return false;
  }
  return true;
}

/** The size limit of a volume (a sized volume's `limit`), or 0 for unknown/unlimited. */
export function capacityOf(info: VolumeInfo): number {
  const limit = info.status.limit;
  return typeof limit === 'number' ? limit : 0;
}

/** A tsvol volume as a CSI Volume on `nodeId`; `contentSource` as CreateVolume was asked for. */
export function csiVolume(info: VolumeInfo, nodeId: string, contentSource: object | null = null): Record<string, unknown> {
  return {
    volume_id: info.name,
    capacity_bytes: String(capacityOf(info)),
    volume_context: {},
    content_source: contentSource,
    accessible_topology: [nodeTopology(nodeId)],
  };
}
