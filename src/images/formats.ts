/**
 * The image formats tsvol reads and writes (#11; moby image/tarexport, OCI image-spec): media types, and
 * the checked shapes of the JSON documents. Every document comes from an untrusted archive or registry:
 * each is parsed here into what the loader uses, or refused with an error naming the document.
 */
import { InvalidArgumentError } from '../errors.js';

/** The media types tsvol reads and writes, by short name. */
export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/** Image manifest media types (OCI, Docker schema2). */
export const MANIFEST_TYPES: ReadonlySet<string> = new Set([MEDIA.ociManifest, MEDIA.dockerManifest]);
/** Index media types (OCI index, Docker manifest list). */
export const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA.ociIndex, MEDIA.dockerList]);
/** Image config media types. */
export const CONFIG_TYPES: ReadonlySet<string> = new Set([MEDIA.ociConfig, MEDIA.dockerConfig]);
/** Compressed layer media types: their blobs are kept byte-exact (a push sends them as they came). */
export const COMPRESSED_LAYER_TYPES: ReadonlySet<string> = new Set([MEDIA.ociLayerGzip, MEDIA.dockerLayerGzip]);
/** Layer media types we unpack: plain or gzip tar (Docker 20.10 has no zstd). */
export const LAYER_TYPES: ReadonlySet<string> = new Set([MEDIA.ociLayer, MEDIA.ociLayerGzip, MEDIA.dockerLayer, MEDIA.dockerLayerGzip]);

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/**
 * The most layers an image may have. overlayfs stacks at most 500 lower directories (the kernel's
 * OVL_MAX_STACK) and Docker refuses more than 125 (moby layer/layer_store.go maxLayerDepth), so no usable
 * image is deeper; the bound keeps a document's cost linear (every layer's chain is computed from its
 * base) whatever an archive or a registry says.
 */
export const MAX_IMAGE_LAYERS = 500;

/** A content descriptor (OCI image-spec descriptor.md). */
export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly platform?: { readonly os?: string; readonly architecture?: string };
}

/** One history entry of an image config. */
export interface HistoryEntry {
  readonly created?: string;
  readonly created_by?: string;
  readonly comment?: string;
  readonly empty_layer?: boolean;
}

/** The parts of an image config tsvol reads. */
export interface ImageConfig {
  readonly created?: string;
  readonly architecture?: string;
  readonly os?: string;
  readonly rootfs: { readonly type: string; readonly diff_ids: readonly string[] };
  readonly history?: readonly HistoryEntry[];
}

function refuse(what: string, why: string): never {
  throw new InvalidArgumentError(`${what} refused: ${why}`);
}

/** `bytes` as a JSON object, or an error naming `what`. */
export function parseJson(bytes: Buffer | string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString());
  } catch (err) {
    refuse(what, `not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) refuse(what, 'not a JSON object');
  return v as Record<string, unknown>;
}

/** Checks a digest string (sha256 only). */
export function checkDigest(d: unknown, what: string): string {
  if (typeof d !== 'string' || !DIGEST.test(d)) refuse(what, `digest ${JSON.stringify(d)} is not sha256:<64 hex>`);
  return d;
}

/** A descriptor, checked. */
export function parseDescriptor(v: unknown, what: string): Descriptor {
  if (typeof v !== 'object' || v === null) refuse(what, 'a descriptor must be an object');
  const o = v as Record<string, unknown>;
  if (typeof o.mediaType !== 'string') refuse(what, 'a descriptor needs a mediaType');
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) refuse(what, 'a descriptor needs a size');
  const annotations = typeof o.annotations === 'object' && o.annotations !== null ? (o.annotations as Record<string, string>) : undefined;
  const platform = typeof o.platform === 'object' && o.platform !== null ? (o.platform as Descriptor['platform']) : undefined;
  return { mediaType: o.mediaType, digest: checkDigest(o.digest, what), size: o.size, ...(annotations ? { annotations } : {}), ...(platform ? { platform } : {}) };
}

/** An image manifest: its config and layer descriptors, media types checked. */
export function parseManifest(bytes: Buffer, what: string, mediaType?: string): { config: Descriptor; layers: Descriptor[] } {
  const m = parseJson(bytes, what);
  const type = typeof m.mediaType === 'string' ? m.mediaType : mediaType;
  if (type !== undefined && !MANIFEST_TYPES.has(type)) refuse(what, `unknown manifest media type ${JSON.stringify(type)}`);
  if (m.schemaVersion !== 2) refuse(what, 'schemaVersion must be 2');
  const config = parseDescriptor(m.config, `${what} config`);
  if (!CONFIG_TYPES.has(config.mediaType)) refuse(what, `unknown config media type ${JSON.stringify(config.mediaType)}`);
  if (!Array.isArray(m.layers)) refuse(what, 'layers must be an array');
  if (m.layers.length > MAX_IMAGE_LAYERS) refuse(what, `${m.layers.length} layers; an image has at most ${MAX_IMAGE_LAYERS}`);
  const layers = (m.layers as unknown[]).map((l, i) => parseDescriptor(l, `${what} layer ${i}`));
  for (const l of layers) if (!LAYER_TYPES.has(l.mediaType)) refuse(what, `unknown layer media type ${JSON.stringify(l.mediaType)} (plain and gzip tar layers only)`);
  return { config, layers };
}

/** An image index's manifest descriptors. */
export function parseIndex(bytes: Buffer, what: string): Descriptor[] {
  const m = parseJson(bytes, what);
  if (m.schemaVersion !== 2) refuse(what, 'schemaVersion must be 2');
  if (typeof m.mediaType === 'string' && !INDEX_TYPES.has(m.mediaType)) refuse(what, `unknown index media type ${JSON.stringify(m.mediaType)}`);
  if (!Array.isArray(m.manifests)) refuse(what, 'manifests must be an array');
  return (m.manifests as unknown[]).map((d, i) => parseDescriptor(d, `${what} manifest ${i}`));
}

/** An image config, checked for what tsvol needs: rootfs.diff_ids (at least one), history. */
export function parseConfig(bytes: Buffer | string, what: string): ImageConfig {
  const c = parseJson(bytes, what);
  const rootfs = c.rootfs as Record<string, unknown> | undefined;
  if (typeof rootfs !== 'object' || rootfs === null || rootfs.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) {
    refuse(what, 'rootfs must be {type: "layers", diff_ids: [...]}');
  }
  if (rootfs.diff_ids.length > MAX_IMAGE_LAYERS) refuse(what, `${rootfs.diff_ids.length} diff_ids; an image has at most ${MAX_IMAGE_LAYERS} layers`);
  const diffIds = (rootfs.diff_ids as unknown[]).map((d, i) => checkDigest(d, `${what} diff_ids[${i}]`));
  if (diffIds.length === 0) refuse(what, 'an image without layers is not supported');
  const history = Array.isArray(c.history) ? (c.history as HistoryEntry[]).filter((h) => typeof h === 'object' && h !== null) : undefined;
  return {
    ...(typeof c.created === 'string' ? { created: c.created } : {}),
    ...(typeof c.architecture === 'string' ? { architecture: c.architecture } : {}),
    ...(typeof c.os === 'string' ? { os: c.os } : {}),
    rootfs: { type: 'layers', diff_ids: diffIds },
    ...(history ? { history } : {}),
  };
}
