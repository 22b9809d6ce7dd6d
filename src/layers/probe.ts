/**
 * Probes whether overlayfs works on the filesystem under `dir`: d_type support, creating a whiteout, and a
 * real overlay mount with our options. The answer names what failed.
 *
 * The scratch directory is deleted by the deleter's walk (src/sys/remove.ts: removeTreeSync), not by a
 * recursive rm (#9): every directory is opened beneath the scratch root by the kernel, never through a
 * symlink and never across a mountpoint. A mount found inside (the probe's own overlay, if its unmount
 * failed, or anything mounted there meanwhile) is left with the directories that hold it, and said in
 * the verdict, instead of having the files of the mounted filesystem deleted through it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describeError } from '../errors.js';
import { pausePoint } from '../sys/crash-point.js';
import { mknod } from '../sys/libc.js';
import { overlayMount, unmountTarget } from '../sys/mount.js';
import { removeTreeSync } from '../sys/remove.js';

/** The pause point before the scratch directory is deleted (tests: TSVOL_PAUSE_AT), to plant things in it. */
export const PROBE_CLEANUP_PAUSE = 'probe:before-cleanup';

/** The probe's verdict. */
export interface ProbeResult {
  readonly ok: boolean;
  readonly why: string;
}

/** Tries overlayfs in a scratch directory under `dir`. */
export function probeOverlay(dir: string): ProbeResult {
  const scratch = fs.mkdtempSync(path.join(dir, '.probe-'));
  const result = probeIn(scratch);
  pausePoint(PROBE_CLEANUP_PAUSE);
  let left: string[];
  try {
    left = removeTreeSync(scratch);
  } catch (err) {
    return { ok: result.ok, why: `${result.why} (its scratch directory ${scratch} could not be deleted: ${describeError(err)})` };
  }
  if (left.length === 0) return result;
  return { ok: result.ok, why: `${result.why} (mounts inside its scratch directory were left in place: ${left.join(', ')}; unmount them and delete ${scratch})` };
}

/** The probe's steps in `scratch`, an empty directory. */
function probeIn(scratch: string): ProbeResult {
  const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((d) => path.join(scratch, d)) as [string, string, string, string];
  try {
    for (const d of [lower, upper, work, merged]) fs.mkdirSync(d);
    fs.writeFileSync(path.join(lower, 'f'), 'x');
    const dirent = fs.readdirSync(lower, { withFileTypes: true })[0];
    if (!dirent || !dirent.isFile()) return { ok: false, why: 'the filesystem does not report file types (d_type), which overlayfs needs' };
    mknod(path.join(upper, 'wh'), fs.constants.S_IFCHR, 0);
    overlayMount(merged, `lowerdir=${lower},upperdir=${upper},workdir=${work},index=off,redirect_dir=off,metacopy=off`);
    unmountTarget(merged, { ifBusy: 'detach' });
    return { ok: true, why: 'overlayfs mounted with index=off,redirect_dir=off,metacopy=off; d_type and whiteouts work' };
  } catch (err) {
    return { ok: false, why: `overlayfs is not usable here: ${describeError(err)}` };
  }
}
