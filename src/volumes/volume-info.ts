/**
 * What Get and List show of a volume, built from its record: Status has what every volume has (kind,
 * created, mounts, holders, options as they stand now) and what its kind adds (VolumeKind.describe), plus the cached usage
 * figure where the kind shows one (usage.ts: Get never measures on the request path).
 */
import { nullProtoRecord, type NodeHolds, type VolumeRecord } from '../store/volume-store.js';
import { holdCount } from './holds.js';
import { kindOf } from './kinds/index.js';
import type { KindContext } from './kinds/kind.js';
import type { Mountpoints } from './mountpoints.js';
import type { Usage, UsageCache } from './usage.js';

/** A volume as the driver reports it. */
export interface VolumeInfo {
  readonly name: string;
  readonly mountpoint: string;
  readonly createdAt: string;
  readonly status: Readonly<Record<string, unknown>>;
}

/** A volume in a listing: what List needs, without the Status that only Get shows. */
export interface VolumeSummary {
  readonly name: string;
  readonly mountpoint: string;
  readonly createdAt: string;
}

/** Builds a record's VolumeInfo, memoized: Get stays a memory read. */
export function createVolumeInfos(ctx: KindContext, mountpoints: Mountpoints, usage: UsageCache): (rec: VolumeRecord) => VolumeInfo {
  /** Records are immutable (every change stores a new one), so each one's info is built once. */
  const infos = new WeakMap<VolumeRecord, VolumeInfo>();
  /** Latest info per record with the usage figure it shows (figures are immutable objects, see usage.ts). */
  const withUsage = new WeakMap<VolumeRecord, { usage: Usage; info: VolumeInfo }>();

  function baseInfo(rec: VolumeRecord): VolumeInfo {
    const cached = infos.get(rec);
    if (cached !== undefined) return cached;
    const kind = kindOf(rec.spec);
    const status: Record<string, unknown> = {
      kind: kind.statusKind,
      created: rec.createdAt,
      mounts: holdCount(rec),
      holders: [...rec.holds.keys()],
      ...kind.describe(rec, ctx),
    };
    // As given at Create, or as they stand now where the volume changed since (a sized volume grown).
    const options = kind.statusOptions?.(rec) ?? rec.options;
    if (Object.keys(options).length > 0) status.options = options;
    const built = { name: rec.name, mountpoint: mountpoints.of(rec), createdAt: rec.createdAt, status };
    infos.set(rec, built);
    return built;
  }

  return (rec) => {
    const base = baseInfo(rec);
    const kind = kindOf(rec.spec);
    const figure = kind.usageInStatus ? usage.peek(rec.name, kind.measure(rec, ctx), holdCount(rec) > 0) : undefined;
    if (figure === undefined) return base;
    const memo = withUsage.get(rec);
    if (memo !== undefined && memo.usage === figure) return memo.info;
    const built = { ...base, status: { ...base.status, usage: { bytes: figure.bytes, files: figure.files, measured: figure.measured } } };
    withUsage.set(rec, { usage: figure, info: built });
    return built;
  };
}

/** Cluster mode (#14): `info` with what other nodes hold of the volume in Status `nodes` (mounts, holders, lease). */
export function withNodes(info: VolumeInfo, elsewhere: readonly NodeHolds[]): VolumeInfo {
  if (elsewhere.length === 0) return info;
  const nodes = nullProtoRecord(
    elsewhere.map((h) => {
      let mounts = 0;
      for (const c of h.holds.values()) mounts += c;
      const lease = h.live ? 'live' : Number.isFinite(h.expiredForMs) ? `expired ${Math.round(h.expiredForMs / 1000)} s ago` : 'none';
      return [h.node, { mounts, holders: [...h.holds.keys()], lease }] as const;
    }),
  );
  return { ...info, status: { ...info.status, nodes } };
}
