/** Holds: a volume record's persisted set of Docker mount IDs (STYLE: a Set of IDs, never a bare counter). */
import type { VolumeRecord } from '../store/volume-store.js';

/** Total holds on a record. */
export function holdCount(rec: VolumeRecord): number {
  let n = 0;
  for (const c of rec.holds.values()) n += c;
  return n;
}

/** Mount IDs of CSI publishes (src/volumes/publish.ts): `csi-` and 32 hex digits of sha256(target path). */
export const PUBLISH_HOLD_PREFIX = 'csi-';
