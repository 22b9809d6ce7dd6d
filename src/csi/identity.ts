/** The CSI Identity service (#12): the driver's name and version, its capabilities, and readiness. */
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
          // ControllerExpandVolume grows a sized volume while it is published (#12): no NodeExpandVolume.
          { volume_expansion: { type: 'ONLINE' } },
        ],
      };
    },
    // Serving means ready: the server answers only after start-up repair (src/server.ts).
    async Probe() {
      return { ready: { value: true } };
    },
  };
}
