/** Holds: a volume record's persisted set of Docker mount IDs (STYLE: a Set of IDs, never a bare counter). */
import { InUseError } from '../errors.js';
import type { VolumeRecord } from '../store/volume-store.js';

/** Total holds on a record. */
export function holdCount(rec: VolumeRecord): number {
  let n = 0;
  for (const c of rec.holds.values()) n += c;
  return n;
}

/** Mount IDs of CSI publishes (src/volumes/publish.ts): `csi-` and 32 hex digits of sha256(target path). */
export const PUBLISH_HOLD_PREFIX = 'csi-';

/**
 * Mount IDs of holds taken for a request of this process's own (`tsvol-cli-<verb>-<random>`: a CLI export,
 * a cluster-mode clone's source): no such hold outlives the process that took it, so start-up drops any
 * it finds (src/volumes/reconcile.ts).
 */
export const CLI_HOLD_PREFIX = 'tsvol-cli-';

/**
 * Remove's refusal of a held volume: the holders' IDs, and how to let go (a CSI publish is a hold too,
 * #12); `node` names this node in cluster mode, where the holds shown are this node's.
 */
export function inUseError(rec: VolumeRecord, node?: string): InUseError {
  const ids = [...rec.holds.keys()].map((id) => (id === '' ? '(none)' : id)).join(', ');
  const csi = [...rec.holds.keys()].some((id) => id.startsWith(PUBLISH_HOLD_PREFIX));
  const fix = csi ? 'stop the containers and pods using it first (a CSI publish ends with NodeUnpublishVolume)' : 'stop the containers using it first';
  const here = node === undefined ? '' : ` on this node ("${node}")`;
  return new InUseError(`volume "${rec.name}" is in use${here}: ${holdCount(rec)} active mount(s) (IDs ${ids}); ${fix}`);
}
