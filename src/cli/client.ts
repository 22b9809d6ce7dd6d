/**
 * How a `tsvol` command reaches the state: one path for every command that reads or changes it (`volume`,
 * `layer`, `container`, `df`; #9 §6, #10). The CLI is a client of the running server, like docker of
 * dockerd: when a server answers on TSVOL_DATA/control.sock, the command is a request to it, whatever
 * TSVOL_SOCKET says (a managed plugin's VolumeDriver socket is somewhere only dockerd knows, but its data
 * root is a bind of the host's, so the control socket is at the same host path). Only when no server
 * answers does the command do the work itself (src/state.ts), and then it holds the server lock from before
 * it opens the state until it has closed it, so no server starts under it (a server starting meanwhile
 * waits; src/server.ts).
 *
 * The local path is loaded only when it is needed: a command served by the server loads node:http, not
 * the stores, SQLite or the layer code.
 */
import type { Config } from '../config.js';
import { ConflictError, UnavailableError } from '../errors.js';
import { controlReachable, createControlClient, type ControlOps } from '../http/control-client.js';
import type { ImageOps } from '../images/image-ops.js';
import type { LayerOps } from '../layers/layer-ops.js';
import { serverPaths } from '../server-paths.js';
import type { VolumeOps } from '../volumes/volume-ops.js';

/** How long a command waits while another process holds the data root and no server answers. */
const WAIT_MS = 30_000;
/** Each try at the lock waits this long before the control socket is tried again. */
const LOCK_TRY_MS = 1000;

/**
 * Runs `fn` with the operations of the server answering on the data root's control socket, or, when none
 * answers, with this process's own, opened and closed while it holds the server lock. If another process
 * holds the lock and no server answers (a server starting or stopping, or another command working alone),
 * tries the socket and the lock in turn for up to WAIT_MS.
 */
export async function withOps<T>(config: Config, fn: (ops: ControlOps) => Promise<T>): Promise<T> {
  const { root, lockFile, controlSocket } = serverPaths(config);
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (await controlReachable(controlSocket)) return fn(createControlClient(controlSocket));
    if (config.scope === 'global') {
      // Cluster mode (#14): only a live server holds this node's lease; a command alone would act without one.
      throw new UnavailableError(
        `cluster mode (TSVOL_SCOPE=global): no tsvol server of node "${config.nodeId}" answers on ${controlSocket}; tsvol commands go through this node's running server: start it (docker plugin enable tsvol)`,
      );
    }
    const state = await import('../state.js');
    let release: () => Promise<void>;
    try {
      release = await state.lockDataRoot(config, LOCK_TRY_MS);
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err;
      if (Date.now() < deadline) continue;
      throw new ConflictError(
        `${root} is held by another process (lock ${lockFile}): a tsvol server that is starting or stopping, ` +
          `or another tsvol command working without a server; no server answers on ${controlSocket}. Wait for it and retry`,
        { cause: err },
      );
    }
    try {
      return await state.withOwnState(config, fn);
    } finally {
      await release();
    }
  }
}

/** Runs `fn` with the volume operations (see withOps). */
export function withVolumeOps<T>(config: Config, fn: (ops: VolumeOps) => Promise<T>): Promise<T> {
  return withOps(config, (ops) => fn(ops.volumes));
}

/** Runs `fn` with the layer and container operations (see withOps). */
export function withLayerOps<T>(config: Config, fn: (ops: LayerOps) => Promise<T>): Promise<T> {
  return withOps(config, (ops) => fn(ops.layers));
}

/** Runs `fn` with the image operations (see withOps). */
export function withImageOps<T>(config: Config, fn: (ops: ImageOps) => Promise<T>): Promise<T> {
  return withOps(config, (ops) => fn(ops.images));
}
