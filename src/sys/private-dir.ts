/**
 * Root-only directories (#9 §5): the data root, the mounts root and the bind mountpoints' directory. Every
 * path into volume data runs through one of them, so their mode 0700 is what keeps other local users out,
 * whatever the modes below (a volume's _data keeps the mode its owner asked for). Moby closed the same hole
 * in CVE-2021-41091 (/var/lib/docker 0710).
 */
import fs from 'node:fs';
import type { Logger } from '../log.js';

/** The mode of every root-only directory. */
export const PRIVATE_DIR_MODE = 0o700;

/** What makePrivateDir found. */
export interface PrivateDirResult {
  /** The directory's mode before it was tightened (group or other had some access); undefined if it was fine. */
  readonly tightenedFrom?: number;
  /** Its owner, when that is not this process's user (still able to reach everything: worth a warning). */
  readonly foreignOwner?: number;
}

/**
 * Makes `dir` (and any missing parents, likewise 0700) if needed, and takes every group and other
 * permission off an existing one. Follows a symlink at `dir`: an administrator may point TSVOL_DATA at
 * another disk that way, and the directory behind it is what must be closed.
 */
export function makePrivateDir(dir: string): PrivateDirResult {
  fs.mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  const st = fs.statSync(dir);
  const uid = process.geteuid?.();
  const foreignOwner = uid !== undefined && st.uid !== uid ? st.uid : undefined;
  if ((st.mode & 0o077) === 0) return foreignOwner === undefined ? {} : { foreignOwner };
  fs.chmodSync(dir, PRIVATE_DIR_MODE);
  return { tightenedFrom: st.mode & 0o7777, ...(foreignOwner === undefined ? {} : { foreignOwner }) };
}

/** `mode` as the octal string people read (`0755`). */
export function octalMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/** Logs what makePrivateDir did to `dir` (`what`: "data root"): once at info if it was tightened. */
export function reportPrivateDir(log: Logger, what: string, dir: string, result: PrivateDirResult): void {
  if (result.tightenedFrom !== undefined) {
    log.info({ what, path: dir, oldMode: octalMode(result.tightenedFrom), mode: octalMode(PRIVATE_DIR_MODE) }, 'closed a directory other users could enter');
  }
  if (result.foreignOwner !== undefined) {
    log.warn({ what, path: dir, owner: result.foreignOwner }, 'directory is owned by another user, who can reach every volume through it');
  }
}
