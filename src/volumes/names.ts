/** Volume names: Docker's local-driver rule, so names are portable between drivers. */
import { InvalidArgumentError } from '../errors.js';
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
