/**
 * How the layer store and container layers delete their own directories (a deleted layer's diff, a
 * container's directory, a superseded upper, orphans found by gc): never with a recursive fs.rm, which
 * crosses into anything mounted inside and runs on the event loop (#13). Each directory is
 *
 * 1. claimed (flocked, sys/staging.ts) and renamed into layers/tmp/rm-<id>: its name is free at once, and
 *    no reader ever sees a half-deleted layer or container under its real name;
 * 2. deleted there by the deleter (sys/remove.ts): on its worker thread, through fds beneath the pinned
 *    root (openat2 RESOLVE_BENEATH), never across a mountpoint (what is mounted inside stays, with the
 *    directories that hold it), holding the stage's lock until the tree is gone.
 *
 * A kill -9 anywhere after the rename leaves a stage whose owner is dead: the next start-up
 * (sweepLayerStages, from src/server.ts) or `tsvol layer gc` deletes it.
 */
import fs from 'node:fs';
import { nanoid } from 'nanoid';
import { ConflictError, errnoCode } from '../errors.js';
import type { LayersLayout } from '../store/layout.js';
import { crashPoint } from '../sys/crash-point.js';
import { claimDir, sweepStages, type Stage, type Sweep } from '../sys/staging.js';

/** The crash point between a directory's move into tmp/ and its delete (tests: TSVOL_CRASH_AT). */
export const STAGED_CRASH = 'layers:discard-staged';

/**
 * Step 1 of the module comment: claims `dir` and moves it into tmp/rm-<id>; returns the claimed stage,
 * for the caller to remove() (step 2) once it has done what must come first (a deleted diff's split and
 * link files go before its tree). Undefined if `dir` does not exist. Refused if a live process holds
 * its lock (nothing in the layer store locks these directories: that would be someone else's stage).
 */
export async function stageForDelete(layout: LayersLayout, dir: string): Promise<Stage | undefined> {
  const claim = await claimDir(dir);
  if (claim === undefined) {
    if (!fs.existsSync(dir)) return undefined;
    throw new ConflictError(`${dir} is locked by another live process; not deleted`);
  }
  try {
    claim.rename(layout.removedDir(nanoid(10)));
  } catch (err) {
    claim.release();
    // ENOENT: deleted meanwhile, which is what we wanted.
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  crashPoint(STAGED_CRASH);
  return claim;
}

/**
 * Deletes the directory `dir` of the layer store (both steps of the module comment); resolves to the
 * mountpoints left in place (now below tmp/rm-<id>). A missing `dir` is deleted already. `background`:
 * nobody waits on it, so the deletions someone awaits go first.
 */
export async function discardDir(layout: LayersLayout, dir: string, background = false): Promise<string[]> {
  const stage = await stageForDelete(layout, dir);
  return stage === undefined ? [] : stage.remove(background);
}

/** Deletes the file `file` (a split or link file: never a tree); a missing one is deleted already. */
export function discardFile(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    // ENOENT: already gone (a retry after a crash, or never made), which is what we wanted.
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
}

/**
 * Deletes the layer store's stages whose owner died (imports, commits, and the directories being deleted
 * above), leaving live ones alone: what a kill -9 left. The claims are made before this returns; the
 * deletions run in `done`. Start-up (src/server.ts) and gc call it.
 */
export function sweepLayerStages(layout: LayersLayout): Sweep {
  return sweepStages(layout.tmpDir);
}
