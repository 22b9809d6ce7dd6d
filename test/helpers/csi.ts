/**
 * A CSI client for tests: @grpc/grpc-js with the server's own csi.proto, over the Unix socket, as kubelet
 * and the external provisioner speak to a driver. Calls resolve to the reply, or reject with the gRPC
 * error (code, details); `fails` returns the error for asserting its code and message.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CSI_LOADER_OPTIONS, CSI_PROTO_PATH } from '../../src/csi/proto.js';
import { withServer, type TestServer } from './server.js';

/** A reply as proto-loader decodes it (int64 as strings, enums as names). */
export type Reply = Record<string, unknown>;

/** The three services' clients. */
export interface CsiClient {
  identity(method: string, req?: object): Promise<Reply>;
  controller(method: string, req?: object): Promise<Reply>;
  node(method: string, req?: object): Promise<Reply>;
  close(): void;
}

type Unary = (req: object, cb: (err: grpc.ServiceError | null, reply: Reply) => void) => void;

/** Connects to the CSI server on `socket`. */
export function csiClient(socket: string): CsiClient {
  const def = protoLoader.loadSync(CSI_PROTO_PATH, CSI_LOADER_OPTIONS);
  const pkg = (grpc.loadPackageDefinition(def) as unknown as { csi: { v1: Record<string, grpc.ServiceClientConstructor> } }).csi.v1;
  const make = (name: string): grpc.Client => new pkg[name]!(`unix:${socket}`, grpc.credentials.createInsecure());
  const clients = { Identity: make('Identity'), Controller: make('Controller'), Node: make('Node') };
  const invoke = (c: grpc.Client, method: string, req: object = {}): Promise<Reply> =>
    new Promise((resolve, reject) => {
      const fn = (c as unknown as Record<string, Unary>)[method];
      if (fn === undefined) return reject(new Error(`no method ${method}`));
      fn.call(c, req, (err, reply) => (err ? reject(err) : resolve(reply)));
    });
  return {
    identity: (m, r) => invoke(clients.Identity, m, r),
    controller: (m, r) => invoke(clients.Controller, m, r),
    node: (m, r) => invoke(clients.Node, m, r),
    close: () => Object.values(clients).forEach((c) => c.close()),
  };
}

/** Awaits `p`, expecting a gRPC error; returns it (fails the test by throwing if `p` succeeded). */
export async function fails(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail, it succeeded');
}

/** A mount-access capability with `mode` (default SINGLE_NODE_WRITER). */
export function mountCap(mode = 'SINGLE_NODE_WRITER'): object {
  return { mount: { fs_type: '', mount_flags: [] }, access_mode: { mode } };
}

export { grpc };

/** Runs `fn` against a fresh root server with its CSI socket (node ID `node-a` unless `env` says), and a client on it. */
export function withCsi(
  t: { log: (m: string) => void },
  fn: (csi: CsiClient, s: TestServer) => Promise<void>,
  env: Record<string, string> = { TSVOL_NODE_ID: 'node-a' },
): Promise<void> {
  return withServer(t, { root: true, csi: true, env }, async (s) => {
    const csi = csiClient(s.csiSocket!);
    try {
      await fn(csi, s);
    } finally {
      csi.close();
    }
  });
}
