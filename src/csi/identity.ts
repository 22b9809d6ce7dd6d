/** The CSI Identity service (#12): the driver's name and version, its capabilities, and readiness. */
import { growsOnline } from '../volumes/size-limit.js';
import { DRIVER_NAME } from './common.js';

/** The Identity service's handlers; `version` is the package's. */
export function identityHandlers(version: string) {
  return {
    async GetPluginInfo() {
      return { name: DRIVER_NAME, vendor_version: version, manifest: {} };
    },
    async GetPluginCapabilities() {
      return {
        capabilities: [
          { service: { type: 'CONTROLLER_SERVICE' } },
          { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } },
          // ControllerExpandVolume grows a sized volume, also while it is published where this process may
          // resize a mounted filesystem (CAP_SYS_RESOURCE), else only unpublished (#12). No NodeExpandVolume.
          { volume_expansion: { type: growsOnline() ? 'ONLINE' : 'OFFLINE' } },
        ],
      };
    },
    // Serving means ready: the server answers only after start-up repair (src/server.ts).
    async Probe() {
      return { ready: { value: true } };
    },
  };
}
