/** Volume names: Docker's local-driver rule, so names are portable between drivers. */
import { InvalidArgumentError } from '../errors.js';

/** moby daemon/volume/local: `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$` (so at least two characters). */
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;
/** A name is one path component on disk; ext4/xfs allow 255 bytes. */
const MAX_NAME_BYTES = 255;

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
