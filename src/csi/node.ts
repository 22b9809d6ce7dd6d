/**
 * The CSI Node service (#12): publishes are real bind mounts at the orchestrator's target path, held like
 * Docker Mounts (src/volumes/publish.ts). No staging: NodeStage/NodeUnstage are not advertised, and so
 * answer UNIMPLEMENTED.
 */
import fs from 'node:fs';
import { status } from '@grpc/grpc-js';
import { NotFoundError } from '../errors.js';
import type { Publisher } from '../volumes/publish.js';
import type { VolumeService } from '../volumes/volume-service.js';
import { READ_ONLY_MODES, capacityOf, checkCapabilities, mountFlagsOf, nodeTopology } from './common.js';
import { CsiError, required } from './errors.js';
import type { NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest } from './messages.js';

/** What the node service needs. */
export interface NodeDeps {
  readonly service: VolumeService;
  readonly publisher: Publisher;
  readonly nodeId: string;
}

/** NOT_FOUND naming the volume, for an unknown volume ID. */
function mustExist(service: VolumeService, id: string, rpc: string): void {
  try {
    service.get(id);
  } catch (err) {
    throw new CsiError(status.NOT_FOUND, `${rpc}: volume "${id}" not found; ListVolumes lists them${err instanceof NotFoundError ? '' : ` (${String(err)})`}`);
  }
}

/** The Node service's handlers. */
export function nodeHandlers(deps: NodeDeps) {
  const { service, publisher, nodeId } = deps;
  return {
    async NodeGetInfo() {
      return { node_id: nodeId, max_volumes_per_node: '0', accessible_topology: nodeTopology(nodeId) };
    },

    async NodeGetCapabilities() {
      return { capabilities: [{ rpc: { type: 'GET_VOLUME_STATS' } }] };
    },

    async NodePublishVolume(req: NodePublishVolumeRequest) {
      const id = required(req.volume_id, 'NodePublishVolume: volume_id');
      const target = required(req.target_path, `NodePublishVolume "${id}": target_path`);
      if (req.volume_capability === null) throw new CsiError(status.INVALID_ARGUMENT, `NodePublishVolume "${id}": volume_capability is required`);
      checkCapabilities([req.volume_capability], `NodePublishVolume "${id}"`);
      mustExist(service, id, 'NodePublishVolume');
      const cap = req.volume_capability;
      // checkCapabilities refused flags that cannot be honoured; these can (set on the bind before it is attached).
      const flags = mountFlagsOf(cap) as string[];
      const readOnly = req.readonly || READ_ONLY_MODES.has(cap.access_mode?.mode ?? '') || flags.includes('ro');
      if (readOnly && flags.includes('rw')) {
        throw new CsiError(status.INVALID_ARGUMENT, `NodePublishVolume "${id}": mount_flags has "rw" but the publish is read-only (readonly or a read-only access mode)`);
      }
      await publisher.publish(id, target, { readOnly, flags: flags.filter((f) => f !== 'rw'), fsType: cap.mount?.fs_type ?? '' });
      return {};
    },

    async NodeUnpublishVolume(req: NodeUnpublishVolumeRequest) {
      const id = required(req.volume_id, 'NodeUnpublishVolume: volume_id');
      const target = required(req.target_path, `NodeUnpublishVolume "${id}": target_path`);
      mustExist(service, id, 'NodeUnpublishVolume');
      await publisher.unpublish(id, target);
      return {};
    },

    async NodeGetVolumeStats(req: NodeGetVolumeStatsRequest) {
      const id = required(req.volume_id, 'NodeGetVolumeStats: volume_id');
      const volumePath = required(req.volume_path, `NodeGetVolumeStats "${id}": volume_path`);
      mustExist(service, id, 'NodeGetVolumeStats');
      if (!fs.existsSync(volumePath)) throw new CsiError(status.NOT_FOUND, `NodeGetVolumeStats "${id}": volume_path "${volumePath}" does not exist; publish the volume there first`);
      if (!publisher.isPublished(id, volumePath)) {
        throw new CsiError(status.NOT_FOUND, `NodeGetVolumeStats "${id}": volume "${id}" is not published at "${volumePath}"`);
      }
      // Used bytes and files are the cached usage (Get's figure, measured off the request path); the
      // filesystem under the publish gives room and totals (a sized volume's own, else the data root's).
      const info = service.get(id);
      const cached = info.status.usage as { bytes?: number; files?: number } | undefined;
      const usage = cached?.bytes !== undefined ? { bytes: cached.bytes, files: cached.files ?? 0 } : await service.measureUsage(id);
      const st = await fs.promises.statfs(volumePath);
      const limit = capacityOf(info);
      const total = limit > 0 ? limit : st.blocks * st.bsize;
      return {
        usage: [
          { unit: 'BYTES', used: String(usage.bytes), total: String(total), available: String(Math.max(0, limit > 0 ? Math.min(limit - usage.bytes, st.bavail * st.bsize) : st.bavail * st.bsize)) },
          { unit: 'INODES', used: String(usage.files), total: String(st.files), available: String(st.ffree) },
        ],
        volume_condition: null,
      };
    },
  };
}
