/**
 * How a `tsvol` command reaches the state: one path (#9 §6). The CLI is a client of the running server,
 * like docker of dockerd: when a server answers on TSVOL_DATA/control.sock, the command is a request to
 * it, whatever TSVOL_SOCKET says (a managed plugin's VolumeDriver socket is somewhere only dockerd knows,
 * but its data root is a bind of the host's, so the control socket is at the same host path). Only when no
 * server answers does the command do the work itself, and then it holds the server lock from before it
 * opens the store until it has closed it, so no server starts under it (a server starting meanwhile waits;
 * src/server.ts).
 *
 * `tsvol layer …` and `tsvol container …` do not come here: they coordinate through the layer store's own
 * lock (src/layers/layer-store.ts).
 */
import fs from 'node:fs';
import type { Config } from '../config.js';
import { ConflictError } from '../errors.js';
import { controlReachable, createControlClient } from '../http/control-client.js';
import { createLogger } from '../log.js';
import { createLayout, type Layout } from '../store/layout.js';
import { createVolumeStore } from '../store/volume-store.js';
import { acquireLock, type ReleaseLock } from '../sys/lock.js';
import { volumeOps, type VolumeOps } from '../volumes/volume-ops.js';
import { createVolumeService } from '../volumes/volume-service.js';

/** How long a command waits while another process holds the data root and no server answers. */
const WAIT_MS = 30_000;
/** Each try at the lock waits this long before the control socket is tried again. */
const LOCK_TRY_MS = 1000;

/** Takes the server lock for a command working alone (a flock: held until the command exits). */
function lockForCommand(layout: Layout, waitMs: number): Promise<ReleaseLock> {
  return acquireLock(layout.lockFile, 'tsvol server', waitMs);
}

/** A command's two ways to its work: as a request to the running server, or alone under the server lock. */
export interface ServerOrLock<T> {
  remote(client: VolumeOps): Promise<T>;
  local(layout: Layout): Promise<T>;
}

/**
 * Runs `work.remote` against the server answering on the data root's control socket, or, when none answers,
 * `work.local` with the server lock held for its whole run. If another process holds the lock and no server
 * answers (a server starting or stopping, or another command working alone), tries the socket and the lock
 * in turn for up to WAIT_MS.
 */
export async function withServerOrLock<T>(config: Config, work: ServerOrLock<T>): Promise<T> {
  const layout = createLayout(config.dataRoot);
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (await controlReachable(layout.controlSocket)) return work.remote(createControlClient(layout.controlSocket));
    // The lock lives in the data root: make it as the server would.
    fs.mkdirSync(layout.root, { recursive: true, mode: 0o701 });
    let release: ReleaseLock;
    try {
      release = await lockForCommand(layout, LOCK_TRY_MS);
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err;
      if (Date.now() < deadline) continue;
      throw new ConflictError(
        `${layout.root} is held by another process (lock ${layout.lockFile}): a tsvol server that is starting or stopping, ` +
          `or another tsvol command working without a server; no server answers on ${layout.controlSocket}. Wait for it and retry`,
        { cause: err },
      );
    }
    try {
      return await work.local(layout);
    } finally {
      await release();
    }
  }
}

/**
 * Runs `fn` with the volume operations: the server's through its control socket, or this process's own
 * over the store, opened and closed inside the server lock.
 */
export function withVolumeOps<T>(config: Config, fn: (ops: VolumeOps) => Promise<T>): Promise<T> {
  return withServerOrLock(config, {
    remote: fn,
    async local(layout) {
      const store = createVolumeStore(layout);
      try {
        const service = createVolumeService({ config, layout, store, log: createLogger('silent') });
        return await fn(volumeOps({ config, layout, store, service }));
      } finally {
        await store.close();
      }
    },
  });
}
