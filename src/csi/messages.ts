/**
 * The CSI messages the handlers read, as @grpc/proto-loader decodes them (src/csi/proto.ts: field names as
 * in csi.proto, int64 as decimal strings, enums as names, defaults filled in, oneofs named by a field).
 * Only what tsvol reads is typed; replies are plain objects in the same shape.
 */

/** Keys from the wire: read through Object.entries only, never indexed. */
export type WireMap = Readonly<Record<string, string>>;

/** VolumeCapability. */
export interface VolumeCapability {
  readonly block?: object | null;
  readonly mount?: { readonly fs_type: string; readonly mount_flags: readonly string[]; readonly volume_mount_group: string } | null;
  readonly access_type?: 'block' | 'mount';
  readonly access_mode?: { readonly mode: string } | null;
}

/** CapacityRange (int64 as strings). */
export interface CapacityRange {
  readonly required_bytes: string;
  readonly limit_bytes: string;
}

/** Topology. */
export interface Topology {
  readonly segments: WireMap;
}

/** VolumeContentSource. */
export interface VolumeContentSource {
  readonly snapshot?: { readonly snapshot_id: string } | null;
  readonly volume?: { readonly volume_id: string } | null;
  readonly type?: 'snapshot' | 'volume';
}

/** CreateVolumeRequest. */
export interface CreateVolumeRequest {
  readonly name: string;
  readonly capacity_range: CapacityRange | null;
  readonly volume_capabilities: readonly VolumeCapability[];
  readonly parameters: WireMap;
  readonly volume_content_source: VolumeContentSource | null;
  readonly accessibility_requirements: { readonly requisite: readonly Topology[]; readonly preferred: readonly Topology[] } | null;
}

/** DeleteVolumeRequest. */
export interface DeleteVolumeRequest {
  readonly volume_id: string;
}

/** ValidateVolumeCapabilitiesRequest. */
export interface ValidateVolumeCapabilitiesRequest {
  readonly volume_id: string;
  readonly volume_context: WireMap;
  readonly volume_capabilities: readonly VolumeCapability[];
  readonly parameters: WireMap;
}

/** ListVolumesRequest and ListSnapshotsRequest's paging fields. */
export interface PageRequest {
  readonly max_entries: number;
  readonly starting_token: string;
}

/** ListSnapshotsRequest. */
export interface ListSnapshotsRequest extends PageRequest {
  readonly source_volume_id: string;
  readonly snapshot_id: string;
}

/** GetCapacityRequest. */
export interface GetCapacityRequest {
  readonly volume_capabilities: readonly VolumeCapability[];
  readonly parameters: WireMap;
  readonly accessible_topology: Topology | null;
}

/** CreateSnapshotRequest. */
export interface CreateSnapshotRequest {
  readonly source_volume_id: string;
  readonly name: string;
  readonly parameters: WireMap;
}

/** DeleteSnapshotRequest. */
export interface DeleteSnapshotRequest {
  readonly snapshot_id: string;
}

/** ControllerExpandVolumeRequest. */
export interface ControllerExpandVolumeRequest {
  readonly volume_id: string;
  readonly capacity_range: CapacityRange | null;
  readonly volume_capability: VolumeCapability | null;
}

/** NodePublishVolumeRequest. */
export interface NodePublishVolumeRequest {
  readonly volume_id: string;
  readonly staging_target_path: string;
  readonly target_path: string;
  readonly volume_capability: VolumeCapability | null;
  readonly readonly: boolean;
}

/** NodeUnpublishVolumeRequest. */
export interface NodeUnpublishVolumeRequest {
  readonly volume_id: string;
  readonly target_path: string;
}

/** NodeGetVolumeStatsRequest. */
export interface NodeGetVolumeStatsRequest {
  readonly volume_id: string;
  readonly volume_path: string;
}
