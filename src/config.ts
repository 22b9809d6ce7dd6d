/**
 * Configuration from the environment, validated once and frozen. This is the contract outside checks use
 * (README "Configuration"): TSVOL_SOCKET, TSVOL_DATA, TSVOL_MOUNTS, TSVOL_BIND_ROOTS, TSVOL_LOG_LEVEL,
 * TSVOL_LAYER_DRIVER, TSVOL_HOST_ROOT; and for CSI (#12) TSVOL_CSI_SOCKET (or CSI_ENDPOINT) and TSVOL_NODE_ID.
 */
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError } from './errors.js';

/** Validated runtime configuration. */
export interface Config {
  /** Unix socket the VolumeDriver server listens on. */
  readonly socket: string;
  /** Persistent root: volume data, metadata database, layers. */
  readonly dataRoot: string;
  /** Where mountpoints appear (a managed plugin's propagatedMount); undefined = return data dirs directly. */
  readonly mountsRoot: string | undefined;
  /** Allowlist of host directories for bind-style volumes; empty = bind-style refused. */
  readonly bindRoots: readonly string[];
  /**
   * Where the host's filesystem is visible to this process (a managed plugin binds the host's / there);
   * undefined = bind-style device paths are host paths as seen here. Devices and TSVOL_BIND_ROOTS are
   * always written as host paths; this prefix is added before touching them.
   */
  readonly hostRoot: string | undefined;
  /** pino level. */
  readonly logLevel: string;
  /** Layer storage driver override: 'overlay', 'copy' or undefined for auto-probe. */
  readonly layerDriver: 'overlay' | 'copy' | undefined;
  /** Unix socket the CSI gRPC server listens on (#12); undefined = no CSI server. */
  readonly csiSocket: string | undefined;
  /** This node's name for CSI (NodeGetInfo, every volume's topology). */
  readonly nodeId: string;
}

const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

function absolutePath(name: string, value: string): string {
  if (!path.isAbsolute(value)) {
    throw new InvalidArgumentError(`${name}="${value}" must be an absolute path`);
  }
  return path.resolve(value);
}

/**
 * The CSI socket: TSVOL_CSI_SOCKET (a path), else CSI_ENDPOINT, the name Kubernetes and Docker pass
 * (`unix:///path/csi.sock`; `unix:/path` and a bare absolute path are taken too). Only Unix sockets.
 */
function csiSocketOf(env: NodeJS.ProcessEnv): string | undefined {
  if (env.TSVOL_CSI_SOCKET) return absolutePath('TSVOL_CSI_SOCKET', env.TSVOL_CSI_SOCKET);
  const endpoint = env.CSI_ENDPOINT;
  if (!endpoint) return undefined;
  // unix:///abs (empty authority) or unix:/abs; unix://name/… would be a host name, which a socket has not.
  const m = /^unix:(?:\/\/(\/.*)|(\/(?!\/).*))$/.exec(endpoint);
  if (m !== null) return absolutePath('CSI_ENDPOINT', (m[1] ?? m[2])!);
  if (endpoint.startsWith('/')) return absolutePath('CSI_ENDPOINT', endpoint);
  throw new InvalidArgumentError(`CSI_ENDPOINT="${endpoint}" is not a Unix socket; use unix:///path/csi.sock`);
}

/** A CSI node ID: at most 128 printable ASCII characters without spaces (the spec's limit for IDs). */
function nodeIdOf(env: NodeJS.ProcessEnv): string {
  const id = env.TSVOL_NODE_ID || os.hostname();
  if (!/^[\x21-\x7e]{1,128}$/.test(id)) {
    throw new InvalidArgumentError(`TSVOL_NODE_ID="${id}" is not a node ID; use 1 to 128 printable ASCII characters without spaces`);
  }
  return id;
}

/** Reads and validates the configuration from `env` (defaults match the managed plugin's layout). */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const logLevel = (env.TSVOL_LOG_LEVEL ?? 'info').toLowerCase();
  if (!LOG_LEVELS.has(logLevel)) {
    throw new InvalidArgumentError(
      `TSVOL_LOG_LEVEL="${logLevel}" is not a level; use one of ${[...LOG_LEVELS].join(', ')}`,
    );
  }
  const driver = env.TSVOL_LAYER_DRIVER || undefined;
  if (driver !== undefined && driver !== 'overlay' && driver !== 'copy') {
    throw new InvalidArgumentError(`TSVOL_LAYER_DRIVER="${driver}" is not a driver; use overlay or copy`);
  }
  const bindRoots = (env.TSVOL_BIND_ROOTS ?? '')
    .split(':')
    .filter((p) => p !== '')
    .map((p) => absolutePath('TSVOL_BIND_ROOTS entry', p));
  return Object.freeze({
    socket: absolutePath('TSVOL_SOCKET', env.TSVOL_SOCKET || '/run/docker/plugins/tsvol.sock'),
    dataRoot: absolutePath('TSVOL_DATA', env.TSVOL_DATA || '/var/lib/tsvol'),
    mountsRoot: env.TSVOL_MOUNTS ? absolutePath('TSVOL_MOUNTS', env.TSVOL_MOUNTS) : undefined,
    bindRoots: Object.freeze(bindRoots),
    hostRoot: env.TSVOL_HOST_ROOT ? absolutePath('TSVOL_HOST_ROOT', env.TSVOL_HOST_ROOT) : undefined,
    logLevel,
    layerDriver: driver,
    csiSocket: csiSocketOf(env),
    nodeId: nodeIdOf(env),
  });
}
