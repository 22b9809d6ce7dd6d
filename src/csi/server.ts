/**
 * The CSI gRPC server on a Unix socket (#12), in the same process as the VolumeDriver socket: one writer,
 * one truth about who holds what. Every handler is decode → call the volume service → encode; this file
 * turns errors into gRPC statuses (errors.ts) and writes one log line per call (op, volume, ms, code), at
 * info for mutations and failures, at debug for reads, as http/app.ts does for Docker.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { describeError, errnoCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { Publisher } from '../volumes/publish.js';
import type { Snapshots } from '../volumes/snapshots.js';
import type { VolumeOps } from '../volumes/volume-ops.js';
import type { VolumeService } from '../volumes/volume-service.js';
import { controllerHandlers } from './controller.js';
import { grpcCodeOf, toServiceError } from './errors.js';
import { identityHandlers } from './identity.js';
import { nodeHandlers } from './node.js';
import { loadCsiServices } from './proto.js';

/** What the CSI server serves. */
export interface CsiServerDeps {
  readonly socket: string;
  readonly nodeId: string;
  readonly dataRoot: string;
  readonly service: VolumeService;
  readonly publisher: Publisher;
  readonly snapshots: Snapshots;
  /** ControllerExpandVolume's operation (volume-ops.ts resize). */
  readonly volumes: Pick<VolumeOps, 'resize'>;
  readonly log: Logger;
}

/** A running CSI server. */
export interface CsiServer {
  /** Stops accepting, lets calls in flight finish for up to `drainMs`, then cuts them off. */
  stop(drainMs: number): Promise<void>;
}

/** RPCs that change nothing: logged at debug when they succeed. */
const READS = new Set(['GetPluginInfo', 'GetPluginCapabilities', 'Probe', 'ValidateVolumeCapabilities', 'ListVolumes', 'ControllerGetVolume', 'GetCapacity', 'ControllerGetCapabilities', 'ListSnapshots', 'NodeGetInfo', 'NodeGetCapabilities', 'NodeGetVolumeStats']);

/** The package's version (GetPluginInfo), from package.json two levels above this module (dist/csi/, src/csi/). */
function packageVersion(): string {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

type Handler = (req: never) => Promise<object>;

/** Wraps async handlers as grpc-js unary handlers with logging and error encoding. */
function unaryHandlers(handlers: Record<string, Handler>, log: Logger): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [op, fn] of Object.entries(handlers)) {
    const call: grpc.handleUnaryCall<Record<string, unknown>, object> = (c, callback) => {
      const started = Date.now();
      const req = c.request;
      // With proto-loader's defaults an absent field is '', so `||`: the volume and the snapshot a call names.
      const volume = req.volume_id || req.source_volume_id || (op === 'CreateVolume' ? req.name : undefined) || undefined;
      const snapshot = req.snapshot_id || (op === 'CreateSnapshot' ? req.name : undefined) || undefined;
      fn(req as never).then(
        (reply) => {
          const line = { op, volume, snapshot, target: req.target_path || undefined, ms: Date.now() - started, code: 'OK' };
          if (READS.has(op)) log.debug(line, 'csi request');
          else log.info(line, 'csi request');
          callback(null, reply);
        },
        (err: unknown) => {
          const code = grpcCodeOf(err);
          log[code === grpc.status.INTERNAL ? 'error' : 'info'](
            { op, volume, snapshot, target: req.target_path || undefined, ms: Date.now() - started, code: grpc.status[code], err: describeError(err) },
            'csi request',
          );
          callback(toServiceError(err), null);
        },
      );
    };
    out[op] = call as grpc.UntypedHandleCall;
  }
  return out;
}

/** Starts the CSI server on `deps.socket` (a stale socket file is replaced: the caller holds the server lock). */
export async function startCsiServer(deps: CsiServerDeps): Promise<CsiServer> {
  const services = loadCsiServices();
  const server = new grpc.Server();
  const { log } = deps;
  server.addService(services.Identity, unaryHandlers(identityHandlers(packageVersion()), log));
  server.addService(services.Controller, unaryHandlers(controllerHandlers(deps), log));
  server.addService(services.Node, unaryHandlers(nodeHandlers(deps), log));
  fs.mkdirSync(path.dirname(deps.socket), { recursive: true });
  try {
    fs.unlinkSync(deps.socket);
  } catch (err) {
    // ENOENT: no stale socket from an earlier run.
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  // Root only, like the VolumeDriver socket: a publish mounts as root wherever the caller says. The socket
  // is bound inside a fresh 0700 directory beside its name, made 0600 there, and only then renamed into
  // place: bound at its name, it would be open to anyone for as long as the bind takes under a loose umask
  // (gRPC binds asynchronously, so the umask cannot be held tight around it).
  const privateDir = fs.mkdtempSync(path.join(path.dirname(deps.socket), '.csi-'));
  const bound = path.join(privateDir, 's');
  try {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${bound}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    fs.chmodSync(bound, 0o600);
    fs.renameSync(bound, deps.socket);
  } catch (err) {
    server.forceShutdown();
    throw err;
  } finally {
    fs.rmSync(privateDir, { recursive: true, force: true });
  }
  return {
    async stop(drainMs) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, drainMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      try {
        fs.unlinkSync(deps.socket);
      } catch (err) {
        // ENOENT: the shutdown removed it already.
        if (errnoCode(err) !== 'ENOENT') log.warn({ socket: deps.socket, err: describeError(err) }, 'could not remove csi socket file');
      }
    },
  };
}
