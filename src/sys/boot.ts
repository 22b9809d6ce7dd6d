/** The kernel's id of this boot; changes on every reboot (shared by containers, so right inside a plugin). */
import fs from 'node:fs';

export function readBootId(): string {
  return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}
