/** Volume names: Docker's local-driver rule, so names are portable between drivers. */
import { InvalidArgumentError } from '../errors.js';
import { CLI_HOLD_PREFIX, PUBLISH_HOLD_PREFIX } from './holds.js';
import { MAX_MOUNT_ID, VOLUME_NAME_MAX_BYTES as MAX_NAME_BYTES, VOLUME_NAME_RE as NAME_RE, isMountId } from '../store/records.js';

export { MAX_MOUNT_ID };

/** Throws InvalidArgumentError unless `name` is a valid volume name. */
export function validateName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new InvalidArgumentError(
      `invalid volume name ${JSON.stringify(name)}: use at least 2 characters from [a-zA-Z0-9_.-], starting with a letter or digit`,
    );
  }
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) {
    throw new InvalidArgumentError(`invalid volume name: ${Buffer.byteLength(name)} bytes, at most ${MAX_NAME_BYTES}`);
  }
}

/**
 * Mount IDs (#9 §4): dockerd sends 64 hex digits, a random ID per container mount point, which `docker cp`
 * re-uses. Accepted: up to MAX_MOUNT_ID printable ASCII characters without spaces, so that tools and tests
 * may use readable IDs. The empty ID is accepted too: engines before Docker 1.13 sent no ID, and such a
 * caller holds the volume as one anonymous consumer. Holds are kept in a Map, so an ID such as
 * `constructor` or `__proto__` is an ordinary key. Throws InvalidArgumentError unless `id` is one (the rule
 * is records.ts MOUNT_ID_RE, which the cluster store applies to hold files too).
 */
export function validateMountId(id: string): void {
  if (isMountId(id)) return;
  const shown = id.length > 80 ? `${JSON.stringify(id.slice(0, 80))}…` : JSON.stringify(id);
  throw new InvalidArgumentError(
    `invalid mount ID ${shown}: want at most ${MAX_MOUNT_ID} printable ASCII characters without spaces (dockerd sends 64 hex digits)`,
  );
}

/**
 * A mount ID as the Docker protocol may send it: validateMountId, and outside tsvol's own hold namespaces,
 * `csi-` (a CSI publish, publish.ts) and `tsvol-cli-` (a hold for a request of this process, which start-up
 * drops). dockerd never sends either (64 hex digits); without this partition a VolumeDriver.Unmount naming
 * a publish's or an export's hold (Status lists the holders) would release it, so Remove could delete a
 * volume still published, and a Mount under `tsvol-cli-…` would be dropped at the next start while its
 * container still runs.
 */
export function validateDockerMountId(id: string): void {
  validateMountId(id);
  for (const prefix of [PUBLISH_HOLD_PREFIX, CLI_HOLD_PREFIX]) {
    if (id.startsWith(prefix)) {
      throw new InvalidArgumentError(`invalid mount ID ${JSON.stringify(id)}: IDs starting with "${prefix}" are tsvol's own holds (dockerd sends 64 hex digits)`);
    }
  }
}
