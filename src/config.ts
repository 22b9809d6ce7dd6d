/**
 * Configuration from the environment, validated once and frozen. This is the contract outside checks use
 * (README "Configuration"): TSVOL_SOCKET, TSVOL_DATA, TSVOL_MOUNTS, TSVOL_BIND_ROOTS, TSVOL_LOG_LEVEL,
 * TSVOL_LAYER_DRIVER, TSVOL_HOST_ROOT; for CSI (#12) TSVOL_CSI_SOCKET (or CSI_ENDPOINT) and TSVOL_NODE_ID;
 * for cluster mode (#14, README "Cluster mode") TSVOL_SCOPE, TSVOL_NODE_ID and TSVOL_LEASE_SECONDS.
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
  /**
   * This node's name: for CSI (NodeGetInfo, every volume's topology), and in cluster mode the name under
   * which its holds and lease live on the shared root (unique per node; src/store/cluster-store.ts).
   */
  readonly nodeId: string;
  /**
   * `local`: one host's volumes, metadata in SQLite. `global` (#14): TSVOL_DATA is a shared filesystem every
   * node mounts, the filesystem itself is the store, and Capabilities answers Scope "global".
   */
  readonly scope: 'local' | 'global';
  /** Cluster mode: how long this node's holds stay valid without a renewal (renewed every third of it). */
  readonly leaseSeconds: number;
}

/** TSVOL_LEASE_SECONDS unset: 30 s (README "Cluster mode": what the lease trades). */
export const DEFAULT_LEASE_SECONDS = 30;
/** Bounds of TSVOL_LEASE_SECONDS: below 3 s a renewal every second competes with real work on a slow filesystem. */
const MIN_LEASE_SECONDS = 3;
const MAX_LEASE_SECONDS = 3600;
/**
 * A node ID in cluster mode: a file name on the shared root (nodes/<id>/, volumes/<name>/holds/<id>), so
 * the volume-name alphabet, one component, at most 64 bytes; never `.`-led (temp files are).
 */
const CLUSTER_NODE_ID_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/;

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

/** TSVOL_SCOPE: `local` (default) or `global`. */
function scopeOf(env: NodeJS.ProcessEnv): 'local' | 'global' {
  const scope = (env.TSVOL_SCOPE || 'local').toLowerCase();
  if (scope !== 'local' && scope !== 'global') {
    throw new InvalidArgumentError(`TSVOL_SCOPE="${env.TSVOL_SCOPE}" is not a scope; use local (one host) or global (a shared TSVOL_DATA every node mounts)`);
  }
  return scope;
}

/** TSVOL_LEASE_SECONDS: whole seconds in [MIN, MAX]. */
function leaseSecondsOf(env: NodeJS.ProcessEnv): number {
  const raw = env.TSVOL_LEASE_SECONDS || String(DEFAULT_LEASE_SECONDS);
  const n = /^\d{1,7}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= MIN_LEASE_SECONDS && n <= MAX_LEASE_SECONDS)) {
    throw new InvalidArgumentError(`TSVOL_LEASE_SECONDS="${raw}" is not a lease; use whole seconds from ${MIN_LEASE_SECONDS} to ${MAX_LEASE_SECONDS} (default ${DEFAULT_LEASE_SECONDS})`);
  }
  return n;
}

/**
 * In cluster mode the node ID names this node's files on the shared root: it must be given (a hostname is
 * not known to be unique: cloned VMs, containers), and be a safe file name.
 */
function checkClusterNodeId(env: NodeJS.ProcessEnv, id: string): void {
  if (!env.TSVOL_NODE_ID) {
    throw new InvalidArgumentError('TSVOL_SCOPE=global needs TSVOL_NODE_ID: a name unique to this node (docker plugin set tsvol TSVOL_NODE_ID=node1)');
  }
  if (!CLUSTER_NODE_ID_RE.test(id)) {
    throw new InvalidArgumentError(`TSVOL_NODE_ID="${id}" cannot name a node in cluster mode; use 1 to 64 characters from [a-zA-Z0-9_.-], starting with a letter or digit`);
  }
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
  const nodeId = nodeIdOf(env);
  const scope = scopeOf(env);
  if (scope === 'global') checkClusterNodeId(env, nodeId);
  return Object.freeze({
    socket: absolutePath('TSVOL_SOCKET', env.TSVOL_SOCKET || '/run/docker/plugins/tsvol.sock'),
    dataRoot: absolutePath('TSVOL_DATA', env.TSVOL_DATA || '/var/lib/tsvol'),
    mountsRoot: env.TSVOL_MOUNTS ? absolutePath('TSVOL_MOUNTS', env.TSVOL_MOUNTS) : undefined,
    bindRoots: Object.freeze(bindRoots),
    hostRoot: env.TSVOL_HOST_ROOT ? absolutePath('TSVOL_HOST_ROOT', env.TSVOL_HOST_ROOT) : undefined,
    logLevel,
    layerDriver: driver,
    csiSocket: csiSocketOf(env),
    nodeId,
    scope,
    leaseSeconds: leaseSecondsOf(env),
  });
}
