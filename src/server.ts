/**
 * Wiring only: config → lock → store → service → reconcile → http, and a SIGTERM drain. `docker plugin
 * disable` sends SIGTERM and SIGKILLs after ~10 s, so in-flight requests get up to DRAIN_MS to finish.
 */
import fs from 'node:fs';
import type http from 'node:http';
import type { Config } from './config.js';
import { describeError } from './errors.js';
import { createRequestListener, listenOnSocket } from './http/app.js';
import { volumeDriverRoutes } from './http/protocol.js';
import { createLogger } from './log.js';
import { createLayout } from './store/layout.js';
import { createVolumeStore } from './store/volume-store.js';
import { acquireLock } from './sys/lock.js';
import { reconcileVolumes } from './volumes/reconcile.js';
import { createVolumeService } from './volumes/volume-service.js';

/** How long SIGTERM waits for in-flight requests before closing connections. */
const DRAIN_MS = 8000;
/**
 * How long start-up waits for a previous server's lock: a killed server's lock is free at once (the kernel
 * drops a flock with its holder, src/sys/lock.ts); a stopping one may still be draining.
 */
const LOCK_WAIT_MS = 4000;

/** A running server. */
export interface RunningServer {
  readonly http: http.Server;
  /** Stops accepting, drains, commits, releases the lock. */
  stop(): Promise<void>;
}

/** Starts the VolumeDriver server described by `config`; exits the process on SIGTERM/SIGINT. */
export async function startServer(config: Config): Promise<RunningServer> {
  const started = Date.now();
  const log = createLogger(config.logLevel);
  const layout = createLayout(config.dataRoot);
  fs.mkdirSync(layout.root, { recursive: true, mode: 0o701 });
  // Held for the server's lifetime; a flock cannot be lost while this process lives (src/sys/lock.ts).
  const releaseLock = await acquireLock(layout.lockFile, 'tsvol server', LOCK_WAIT_MS);
  const store = createVolumeStore(layout);
  const service = createVolumeService({ config, layout, store, log });
  const repaired = await reconcileVolumes({ layout, store, mountsRoot: config.mountsRoot, service, log });
  const inflight = { count: 0 };
  const server = await listenOnSocket(createRequestListener(volumeDriverRoutes(service), log, inflight), config.socket);
  log.info(
    { socket: config.socket, data: config.dataRoot, mounts: config.mountsRoot, volumes: store.size, ms: Date.now() - started, ...repaired },
    'tsvol listening',
  );

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      log.info({ inflight: inflight.count }, 'draining');
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), DRAIN_MS);
      await closed;
      clearTimeout(timer);
      await store.close();
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
