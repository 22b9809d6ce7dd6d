/**
 * Probes whether overlayfs works on the filesystem under `dir`: d_type support, creating a whiteout, and a
 * real overlay mount with our options. The answer names what failed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describeError } from '../errors.js';
import { mknod } from '../sys/libc.js';
import { overlayMount, unmountTarget } from '../sys/mount.js';

/** The probe's verdict. */
export interface ProbeResult {
  readonly ok: boolean;
  readonly why: string;
}

/** Tries overlayfs in a scratch directory under `dir`. */
export function probeOverlay(dir: string): ProbeResult {
  const scratch = fs.mkdtempSync(path.join(dir, '.probe-'));
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
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}
