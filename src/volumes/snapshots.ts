/**
 * Snapshots (CSI CreateSnapshot, #12): a snapshot is a committed layer of its volume (volume-ops commit),
 * named by a hold on that layer. The hold's holder string is the snapshot's record:
 * `csi snapshot "NAME" of volume "SRC" at ISO-TIME`, so the layer store keeps it (rm refuses and gc skips
 * the layer, naming the snapshot), it survives restarts in the one metadata store, and no new table is
 * needed. Snapshot IDs are their names: two snapshots of an unchanged volume are one layer (content
 * addressed) but two holds. A restore is a layered volume on the layer (`layer=ID`), copy-on-write.
 */
import { ConflictError, InvalidArgumentError, NotFoundError, TsvolError, wrapError } from '../errors.js';
import type { Logger } from '../log.js';
import { createKeyedMutex } from '../sys/keyed-mutex.js';
import type { VolumeOps } from './volume-ops.js';
import type { VolumeMechanics, VolumeService } from './volume-service.js';

/** A snapshot. */
export interface SnapshotInfo {
  /** The snapshot's name, also its ID. */
  readonly name: string;
  /** The volume it was taken of. */
  readonly source: string;
  /** The layer (ChainID) holding its files. */
  readonly layer: string;
  /** Bytes of file content in the layer's own diff. */
  readonly size: number;
  readonly createdAt: string;
}

/** Snapshot operations. */
export interface Snapshots {
  /** Takes snapshot `name` of `source`; the existing one if `name` was taken of `source` already. */
  create(name: string, source: string): Promise<SnapshotInfo>;
  /** Forgets snapshot `name` and deletes its layer if nothing else holds it. Unknown names succeed. */
  remove(name: string): Promise<void>;
  /** Every snapshot, sorted by name. */
  list(): SnapshotInfo[];
  /** Snapshot `name`, or undefined. */
  find(name: string): SnapshotInfo | undefined;
}

/** Snapshot names: the volume-name rule, so a name never needs quoting inside the holder string. */
const SNAPSHOT_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const HOLDER = /^csi snapshot "([a-zA-Z0-9][a-zA-Z0-9_.-]*)" of volume "([^"]+)" at (\S+)$/;
/** The layer store's limit on a holder's name. */
const MAX_HOLDER = 200;

function holderOf(name: string, source: string, at: string): string {
  return `csi snapshot "${name}" of volume "${source}" at ${at}`;
}

/** Snapshots of the volumes of `service`, committed with `volumes`. */
export function createSnapshots(service: VolumeService & VolumeMechanics, volumes: VolumeOps, log: Logger): Snapshots {
  const locks = createKeyedMutex();
  const layers = () => service.kinds.layered.layers;

  function list(): SnapshotInfo[] {
    const out: SnapshotInfo[] = [];
    for (const h of layers().listHolds()) {
      const m = HOLDER.exec(h.holder);
      if (m === null) continue;
      let size = 0;
      try {
        size = layers().resolve(h.layer).size;
      } catch (err) {
        // A hold names an existing layer (a foreign key); a layer gone anyway is reported as empty.
        if (!(err instanceof NotFoundError)) throw err;
      }
      out.push({ name: m[1]!, source: m[2]!, createdAt: m[3]!, layer: h.layer, size });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  const find = (name: string): SnapshotInfo | undefined => list().find((s) => s.name === name);

  return {
    list,
    find,

    async create(name, source) {
      if (!SNAPSHOT_NAME.test(name)) {
        throw new InvalidArgumentError(`invalid snapshot name ${JSON.stringify(name)}: use 1 to 63 characters from [a-zA-Z0-9_.-], starting with a letter or digit`);
      }
      return locks.run(name, async () => {
        const existing = find(name);
        if (existing !== undefined) {
          if (existing.source === source) return existing;
          throw new ConflictError(`snapshot "${name}" already exists, of volume "${existing.source}"; choose another name to snapshot volume "${source}"`);
        }
        service.get(source); // NotFound naming the volume
        const at = new Date().toISOString();
        const holder = holderOf(name, source, at);
        if (holder.length > MAX_HOLDER) throw new InvalidArgumentError(`snapshot "${name}" of volume "${source}": the names are too long together; use shorter names`);
        try {
          const layer = await volumes.commit(source, {});
          const rec = await layers().holdLayer(layer, holder);
          return { name, source, layer: rec.id, size: rec.size, createdAt: at };
        } catch (err) {
          throw wrapError(`snapshot volume "${source}" as "${name}"`, err);
        }
      });
    },

    async remove(name) {
      await locks.run(name, async () => {
        const snap = find(name);
        if (snap === undefined) return;
        await layers().releaseLayer(snap.layer, holderOf(snap.name, snap.source, snap.createdAt));
        try {
          await layers().remove(snap.layer);
        } catch (err) {
          // Still held (a volume restored from it, another snapshot of the same state, a child layer):
          // the layer stays for them, and `tsvol layer gc` takes it once they are gone.
          if (!(err instanceof TsvolError) || (err.code !== 'TSVOL_IN_USE' && err.code !== 'TSVOL_CONFLICT')) throw err;
          log.debug({ snapshot: name, layer: snap.layer }, 'snapshot layer still held; kept');
        }
      });
    },
  };
}
