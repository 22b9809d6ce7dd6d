/**
 * Wiring only: config → lock → state (store, service, layer stores, operations: src/state.ts) → reconcile →
 * http, and a SIGTERM drain. `docker plugin disable` sends SIGTERM and SIGKILLs after ~10 s, so in-flight
 * requests get up to DRAIN_MS to finish.
 *
 * Two sockets, one process: the VolumeDriver socket for dockerd, and the control socket in the data root
 * for the `tsvol` CLI (src/http/control.ts), so the CLI never works on the state behind the server's back.
 * While a CLI command holds the data root's lock (no server was running when it started), start-up waits
 * for it (#9 §6). With TSVOL_CSI_SOCKET (or CSI_ENDPOINT) a third: CSI over gRPC (src/csi/, #12), on the
 * same service, so Docker and an orchestrator share one store and one set of holds.
 */
import fs from 'node:fs';
import type http from 'node:http';
import type { Config } from './config.js';
import { ConflictError, describeError, errnoCode } from './errors.js';
import { startCsiServer, type CsiServer } from './csi/server.js';
import { NotFoundLines, createRequestListener, listenOnSocket } from './http/app.js';
import { createControlApi } from './http/control.js';
import { controlReachable } from './http/control-client.js';
import { volumeDriverRoutes } from './http/protocol.js';
import { createLogger, type Logger } from './log.js';
import { serverPaths } from './server-paths.js';
import { checkSharedRoot, lockDataRoot, openState, type ReleaseLock } from './state.js';
import { makePrivateDir, reportPrivateDir } from './sys/private-dir.js';
import { sweepLayerStages } from './layers/discard.js';
import type { LayersLayout } from './store/layout.js';
import { createPublisher } from './volumes/publish.js';
import { reconcileVolumes } from './volumes/reconcile.js';
import { createSnapshots } from './volumes/snapshots.js';

/** How long SIGTERM waits for in-flight requests before closing connections. */
const DRAIN_MS = 8000;
/**
 * How long start-up waits for the data root's lock. A killed server's is free at once (the kernel drops a
 * flock with its holder, src/sys/lock.ts), but a `tsvol` command that found no server holds it for its
 * whole run (an import of a large tar takes a while).
 */
const LOCK_WAIT_MS = 60_000;

/** A running server. */
export interface RunningServer {
  readonly http: http.Server;
  /** Stops accepting, drains, commits, releases the lock. */
  stop(): Promise<void>;
}

/** Takes the data root's lock, saying once in the log when another process holds it and start-up waits. */
async function lockForServer(config: Config, log: Logger): Promise<ReleaseLock> {
  const { lockFile, controlSocket } = serverPaths(config);
  try {
    return await lockDataRoot(config, 0);
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    // A server answering on the control socket holds the lock for its lifetime: waiting would not help.
    if (await controlReachable(controlSocket)) throw err;
  }
  log.info({ lock: lockFile, waitMs: LOCK_WAIT_MS }, 'waiting for another process holding the data root (a tsvol command, or a server stopping)');
  return lockDataRoot(config, LOCK_WAIT_MS);
}

/**
 * Deletes the layer store's stages whose owner died (an import, a commit, or a layer or container being
 * deleted when its process was killed: src/layers/discard.ts), in the background; returns how many.
 */
function sweepLayerDebris(layout: LayersLayout, log: Logger): number {
  if (!fs.existsSync(layout.tmpDir)) return 0; // no layer was ever made here
  const sweep = sweepLayerStages(layout);
  if (sweep.live.length > 0) log.info({ stages: sweep.live }, 'layers/tmp/ stages of live processes left alone');
  sweep.done.then(
    (skipped) => {
      if (skipped.length > 0) log.warn({ mounts: skipped }, 'layers/tmp/ leftovers had mounts inside; left them');
    },
    (err: unknown) => log.warn({ err: describeError(err) }, 'deleting layers/tmp/ leftover failed'),
  );
  return sweep.dead.length;
}

/** Starts the VolumeDriver server described by `config`; exits the process on SIGTERM/SIGINT. */
export async function startServer(config: Config): Promise<RunningServer> {
  const started = Date.now();
  const log = createLogger(config.logLevel);
  // Cluster mode (#14): refuse a root that is not a shared filesystem before anything touches it.
  const shared = config.scope === 'global' ? checkSharedRoot(config) : undefined;
  const { root } = serverPaths(config);
  // Root-only (#9 §5); a root left open by an older version or by hand is closed now, and said so once.
  reportPrivateDir(log, 'data root', root, makePrivateDir(root));
  // Held for the server's lifetime; a flock cannot be lost while this process lives (src/sys/lock.ts).
  const releaseLock = await lockForServer(config, log);
  let state;
  try {
    state = await openState(config, log);
  } catch (err) {
    await releaseLock();
    throw err;
  }
  const { layout, store, service } = state;
  const repaired = await reconcileVolumes({ layout, store, mountsRoot: config.mountsRoot, service, log });
  // Cluster mode has no layer store (#14): nothing of another node's is swept.
  const layerDebris = config.scope === 'global' ? 0 : sweepLayerDebris(layout.layers, log);
  // Diffs no record uses (a kill while a diff was published or deleted), in the layer store's queue;
  // awaited before the stores close.
  const repairing = state.repairLayers().then(
    ({ removed, left }) => {
      if (removed.length > 0) log.info({ removed }, 'layers/diffs/ entries no layer uses deleted');
      if (left.length > 0) log.warn({ mounts: left }, 'layers/diffs/ leftovers had mounts inside; left them');
    },
    (err: unknown) => log.warn({ err: describeError(err) }, 'deleting layers/diffs/ leftovers failed'),
  );
  const inflight = { count: 0 };
  // The control socket first: a CLI that sees the VolumeDriver socket answer finds it too. Any control.sock
  // already there is a dead server's (we hold the lock), and listenOnSocket replaces it.
  const control = createControlApi(state, log);
  const controlServer = await listenControl(control.listener, layout.controlSocket, config.scope, log);
  // CSI before the VolumeDriver socket: whoever sees that one answer (tests, dockerd) finds CSI up too.
  let csi: CsiServer | undefined;
  if (config.csiSocket !== undefined) {
    csi = await startCsiServer({
      socket: config.csiSocket,
      nodeId: config.nodeId,
      dataRoot: config.dataRoot,
      service,
      publisher: createPublisher(service, log),
      snapshots: createSnapshots(service, state.volumes, log),
      volumes: state.volumes,
      log,
    });
  }
  const notFound = new NotFoundLines();
  const server = await listenOnSocket(createRequestListener(volumeDriverRoutes(service, config.scope), log, inflight, notFound), config.socket);
  log.info(
    {
      socket: config.socket,
      csi: config.csiSocket,
      scope: config.scope,
      node: config.csiSocket === undefined && shared === undefined ? undefined : config.nodeId,
      ...(shared === undefined ? {} : { sharedFs: shared.name, leaseSeconds: config.leaseSeconds }),
      control: layout.controlSocket,
      data: config.dataRoot,
      mounts: config.mountsRoot,
      volumes: store.size,
      ms: Date.now() - started,
      ...repaired,
      layerDebris,
    },
    'tsvol listening',
  );

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      log.info({ inflight: inflight.count }, 'draining');
      const servers = controlServer === undefined ? [server] : [server, controlServer];
      const closed = Promise.all(servers.map((srv) => new Promise<void>((resolve) => srv.close(() => resolve()))));
      for (const srv of servers) srv.closeIdleConnections();
      const timer = setTimeout(() => servers.forEach((srv) => srv.closeAllConnections()), DRAIN_MS);
      await Promise.all([closed, csi?.stop(DRAIN_MS)]);
      clearTimeout(timer);
      notFound.flush(true); // "not found" lines still waiting for a Create that will not come now
      // A control request cut off above (an export) still releases its hold: let it, before the store closes.
      await control.settled();
      removeSocketFile(layout.controlSocket, log);
      await repairing;
      await state.close();
      await releaseLock();
      log.info('stopped');
    })());

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      stop().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: describeError(err) }, 'shutdown failed');
          process.exit(1);
        },
      );
    });
  }
  return { http: server, stop };
}

/**
 * The control socket. In cluster mode it lives on the shared root (nodes/<node>/control.sock, where this
 * node's CLI finds it), and a shared filesystem may refuse socket files (a FUSE filesystem without mknod):
 * then the server runs without one, and says so, since dockerd's socket is what matters.
 */
async function listenControl(listener: http.RequestListener, socket: string, scope: Config['scope'], log: Logger): Promise<http.Server | undefined> {
  try {
    return await listenOnSocket(listener, socket, 0o600);
  } catch (err) {
    if (scope !== 'global') throw err;
    log.warn({ socket, err: describeError(err) }, 'no control socket on the shared filesystem; tsvol commands on this node cannot reach the server');
    return undefined;
  }
}

/** Removes a socket file we listened on (close usually has); a failure is logged, the next start replaces it. */
function removeSocketFile(socket: string, log: Logger): void {
  try {
    fs.unlinkSync(socket);
  } catch (err) {
    // ENOENT: closing the server already removed it.
    if (errnoCode(err) !== 'ENOENT') log.warn({ socket, err: describeError(err) }, 'could not remove socket file');
  }
}
