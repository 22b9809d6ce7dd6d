/**
 * Where a client finds the server of a data root, before it knows whether one runs: the control socket,
 * and the server lock a command takes when none answers. Apart from src/state.ts, which opens the stores,
 * so that a command served by the server loads only this, node:http and the control client.
 */
import type { Config } from './config.js';
import { createLayout } from './store/layout.js';

/** The paths a client needs: the data root, its server lock, its control socket. */
export interface ServerPaths {
  readonly root: string;
  readonly lockFile: string;
  readonly controlSocket: string;
  /** layers/: where `tsvol info` probes the layer driver (the server probes the same directory). */
  readonly layersDir: string;
}

/**
 * Where the server of `config`'s data root listens and locks (src/store/layout.ts): in cluster mode, this
 * node's own (nodes/<TSVOL_NODE_ID>/), so that each node's CLI reaches its own node's server.
 */
export function serverPaths(config: Config): ServerPaths {
  const { root, lockFile, controlSocket, layersDir } = createLayout(config.dataRoot, config.scope === 'global' ? config.nodeId : undefined);
  return { root, lockFile, controlSocket, layersDir };
}
