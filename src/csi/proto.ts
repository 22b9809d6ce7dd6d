/**
 * The CSI v1 services, loaded from csi.proto at run time (@grpc/proto-loader, with the options the Node.js
 * CSI drivers use: field names as in the proto, int64 as strings, enums as names, defaults filled in,
 * oneofs named). The build copies csi.proto beside this file in dist/ (package.json `build`), so the
 * plugin's rootfs, which ships dist/, has it.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** csi.proto next to this module (src/csi/ under tsx, dist/csi/ when built). */
export const CSI_PROTO_PATH = fileURLToPath(new URL('./csi.proto', import.meta.url));

/** The loader options: the wire types the handlers in src/csi/ read and write. */
export const CSI_LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

/** The three CSI services' definitions. */
export interface CsiServices {
  readonly Identity: grpc.ServiceDefinition;
  readonly Controller: grpc.ServiceDefinition;
  readonly Node: grpc.ServiceDefinition;
}

/** Loads csi.proto (from `protoPath`, default CSI_PROTO_PATH) and returns its services. */
export function loadCsiServices(protoPath = CSI_PROTO_PATH): CsiServices {
  const def = protoLoader.loadSync(protoPath, CSI_LOADER_OPTIONS);
  const service = (name: string): grpc.ServiceDefinition => {
    const d = def[`csi.v1.${name}`];
    if (d === undefined || 'format' in d) throw new Error(`csi.proto has no service csi.v1.${name}`);
    return d as grpc.ServiceDefinition;
  };
  return { Identity: service('Identity'), Controller: service('Controller'), Node: service('Node') };
}
