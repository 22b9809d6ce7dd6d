/**
 * Reads an image archive into load plans (#11): `docker save` of Docker 20.10 (manifest.json,
 * <v1id>/layer.tar, a repeated layer as a symlink), of Docker ≥ 25 (the same manifest.json over an OCI
 * layout: blobs/sha256/<hex>, index.json) and a plain OCI layout tar (index.json only). Like `docker
 * load`, manifest.json wins when present. Everything is checked before anything is stored: media types,
 * every blob's digest (a content-addressed path is its digest), each layer's uncompressed digest against
 * the config's rootfs.diff_ids[i], and the layer count.
 */
import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { INDEX_TYPES, MANIFEST_TYPES, MAX_IMAGE_LAYERS, MEDIA, parseConfig, parseIndex, parseJson, parseManifest, type Descriptor, type ImageConfig } from './formats.js';
import type { Ingested } from './ingest.js';
import { isImageId, normalizeReference } from './reference.js';
import type { Spool } from './spool.js';

/** An image's names and documents, as a load or a pull stores them. */
export interface ImageDocumentsOf {
  /** Normalized references (none: the image is stored under its ID). */
  readonly names: readonly string[];
  readonly id: string;
  readonly config: string;
  readonly parsed: ImageConfig;
  readonly manifest: string;
  readonly digest: string;
  /** True when tsvol wrote the manifest (a Docker 20.10 save has none). */
  readonly made: boolean;
}

/** One image to store: its layers in the archive, verified, and its names. */
export interface LoadPlan extends ImageDocumentsOf {
  readonly names: string[];
  /** The layers, base first, each verified against its descriptor and diff_ids[i]. */
  readonly layers: readonly { readonly path: string; readonly ingested: Ingested; readonly mediaType: string | undefined; readonly digest: string | undefined }[];
}

/**
 * What the loader knows of the store before it reads the layers: whether a layer on this chain is stored
 * already (then, as `docker load` does, the archive's copy is not needed), so that only missing ones are
 * read and checked.
 */
export type HasChain = (diffIds: readonly string[], i: number) => boolean;

/** Checks `bytes` survive as text (the store keeps documents as TEXT: byte-exact is what keeps their digests). */
export function asText(bytes: Buffer, what: string): string {
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes)) throw new InvalidArgumentError(`${what} refused: not valid UTF-8`);
  return text;
}

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The digest a content-addressed archive path claims (`blobs/sha256/<hex>`, `<hex>.json`), if any. */
function claimedDigest(p: string): string | undefined {
  const m = /(?:^|\/)(?:blobs\/sha256\/)?([0-9a-f]{64})(?:\.json)?$/.exec(p);
  return m ? `sha256:${m[1]}` : undefined;
}

/** The path of a blob in an OCI layout. */
const blobPath = (digest: string): string => `blobs/sha256/${digest.slice(7)}`;

interface Candidate {
  names: string[];
  configPath: string;
  configDigest?: string;
  layers: { path: string; digest?: string; mediaType?: string }[];
  manifest?: { bytes: Buffer; digest: string };
}

function namesOf(raw: unknown, what: string): string[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw) || !raw.every((t) => typeof t === 'string')) throw new InvalidArgumentError(`${what} refused: RepoTags must be a list of strings`);
  return (raw as string[]).map((t) => normalizeReference(t));
}

/** A manifest an index leads to: its descriptor, bytes, parsed form (parsed once) and names. */
interface OciManifest {
  readonly desc: Descriptor;
  readonly bytes: Buffer;
  readonly names: string[];
  readonly parsed: { config: Descriptor; layers: Descriptor[] };
}

/** The manifests an OCI layout's index.json leads to (one level of nested index, this platform's entry). */
function ociManifests(spool: Spool): OciManifest[] {
  const out: OciManifest[] = [];
  const visit = (descs: Descriptor[], depth: number, names: string[]): void => {
    for (const d of descs) {
      const own = [...names];
      const full = d.annotations?.['io.containerd.image.name'] ?? d.annotations?.['org.opencontainers.image.ref.name'];
      // An OCI ref.name may be a tag only ("latest"): then there is no repository to name the image by.
      if (full !== undefined && /[/]|^[a-z0-9._-]+:[\w.-]+$/.test(full)) own.push(normalizeReference(full));
      const bytes = spool.read(blobPath(d.digest));
      if (sha256(bytes) !== d.digest) throw new InvalidArgumentError(`blob ${d.digest} refused: its content does not match its digest`);
      if (INDEX_TYPES.has(d.mediaType)) {
        if (depth > 1) throw new InvalidArgumentError('index.json refused: indexes nested more than two deep');
        const entries = parseIndex(bytes, `index ${d.digest}`);
        const arch = { x64: 'amd64', arm64: 'arm64', arm: 'arm' }[process.arch as 'x64'] ?? process.arch;
        const mine = entries.filter((e) => e.platform === undefined || (e.platform.os === 'linux' && e.platform.architecture === arch));
        visit(mine.slice(0, 1), depth + 1, own);
      } else if (MANIFEST_TYPES.has(d.mediaType)) {
        out.push({ desc: d, bytes, names: own, parsed: parseManifest(bytes, `manifest ${d.digest}`, d.mediaType) });
      } else {
        throw new InvalidArgumentError(`index.json refused: unknown media type ${JSON.stringify(d.mediaType)}`);
      }
    }
  };
  visit(parseIndex(spool.read('index.json'), 'index.json'), 0, []);
  return out;
}

/** The candidates of a spooled archive, from manifest.json (Docker) or index.json (OCI). */
function candidatesOf(spool: Spool): Candidate[] {
  const oci = spool.has('index.json') ? ociManifests(spool) : [];
  // Each config's manifest, found once (not once per entry and layer: a long list would make that quadratic).
  const byConfig = new Map<string, OciManifest>();
  for (const m of oci) if (!byConfig.has(m.parsed.config.digest)) byConfig.set(m.parsed.config.digest, m);
  if (spool.has('manifest.json')) {
    const list = JSON.parse(spool.read('manifest.json').toString()) as unknown;
    if (!Array.isArray(list)) throw new InvalidArgumentError('manifest.json refused: not a JSON list');
    return list.map((raw, i): Candidate => {
      const what = `manifest.json entry ${i}`;
      const e = parseJson(JSON.stringify(raw), what);
      if (typeof e.Config !== 'string') throw new InvalidArgumentError(`${what} refused: Config must be a path`);
      if (!Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string')) throw new InvalidArgumentError(`${what} refused: Layers must be a list of paths`);
      if (e.Layers.length > MAX_IMAGE_LAYERS) throw new InvalidArgumentError(`${what} refused: ${e.Layers.length} layers; an image has at most ${MAX_IMAGE_LAYERS}`);
      const configDigest = claimedDigest(e.Config);
      // Docker ≥ 25 also writes index.json: its manifest for this config is the image's manifest.
      const match = configDigest === undefined ? undefined : byConfig.get(configDigest);
      return {
        names: namesOf(e.RepoTags, what),
        configPath: e.Config,
        ...(configDigest === undefined ? {} : { configDigest }),
        layers: (e.Layers as string[]).map((p, j) => {
          const d = claimedDigest(p);
          const mediaType = match?.parsed.layers[j]?.mediaType;
          return { path: p, ...(d !== undefined && p.startsWith('blobs/') ? { digest: d } : {}), ...(mediaType === undefined ? {} : { mediaType }) };
        }),
        ...(match ? { manifest: { bytes: match.bytes, digest: match.desc.digest } } : {}),
      };
    });
  }
  if (oci.length === 0) throw new InvalidArgumentError('image archive refused: no manifest.json or index.json; want `docker save` output or an OCI layout tar');
  return oci.map(({ desc, bytes, names, parsed: m }) => {
    return {
      names,
      configPath: blobPath(m.config.digest),
      configDigest: m.config.digest,
      layers: m.layers.map((l) => ({ path: blobPath(l.digest), digest: l.digest, mediaType: l.mediaType })),
      manifest: { bytes, digest: desc.digest },
    };
  });
}

/** A schema2 manifest for an image that came without one (Docker 20.10's save): uncompressed layers. */
function synthesizeManifest(config: string, id: string, layers: { diffId: string; size: number }[]): string {
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA.dockerManifest,
    config: { mediaType: MEDIA.dockerConfig, size: Buffer.byteLength(config), digest: id },
    layers: layers.map((l) => ({ mediaType: MEDIA.dockerLayer, size: l.size, digest: l.diffId })),
  });
}

/**
 * Reads and verifies every image of a spooled archive; throws before anything is stored. A layer whose
 * chain the store has already is not checked (nor needed); every other one must have been read whole,
 * with its digest as named (a `blobs/sha256/<hex>` path, or the manifest's descriptor) and its DiffID
 * equal to the config's diff_ids[i].
 */
export async function planLoad(spool: Spool, hasChain: HasChain): Promise<LoadPlan[]> {
  const plans: LoadPlan[] = [];
  for (const c of candidatesOf(spool)) {
    const configBytes = spool.read(c.configPath);
    const id = sha256(configBytes);
    if (c.configDigest !== undefined && c.configDigest !== id) throw new InvalidArgumentError(`config ${c.configPath} refused: its content does not match its digest ${c.configDigest}`);
    const config = asText(configBytes, `config ${c.configPath}`);
    const parsed = parseConfig(configBytes, `config ${id}`);
    const diffIds = parsed.rootfs.diff_ids;
    if (c.layers.length !== diffIds.length) {
      throw new InvalidArgumentError(`image ${id} refused: its manifest lists ${c.layers.length} layers but its config's rootfs.diff_ids has ${diffIds.length}`);
    }
    const layers: LoadPlan['layers'][number][] = [];
    for (const [i, l] of c.layers.entries()) {
      const ingested = await spool.layer(l.path);
      layers.push({ path: l.path, ingested, mediaType: l.mediaType, digest: l.digest });
      if (hasChain(diffIds, i)) continue;
      if (ingested.error !== undefined) throw new InvalidArgumentError(`layer ${i} (${l.path}) of image ${id}: ${ingested.error.message}`, { cause: ingested.error });
      if (l.digest !== undefined && ingested.digest !== l.digest) throw new InvalidArgumentError(`layer ${l.path} refused: its content has digest ${ingested.digest}, not ${l.digest}`);
      if (ingested.diffId !== diffIds[i]) {
        throw new InvalidArgumentError(`layer ${i} (${l.path}) of image ${id} refused: its uncompressed digest ${ingested.diffId} is not rootfs.diff_ids[${i}] ${diffIds[i]}`);
      }
    }
    const made = c.manifest === undefined;
    const manifest = c.manifest !== undefined ? asText(c.manifest.bytes, `manifest ${c.manifest.digest}`) : synthesizeManifest(config, id, layers.map((l, i) => ({ diffId: diffIds[i]!, size: l.ingested.tarSize })));
    const digest = c.manifest?.digest ?? sha256(manifest);
    plans.push({ names: c.names.filter((n) => !isImageId(n)), id, config, parsed, manifest, digest, made, layers });
  }
  if (plans.length === 0) throw new InvalidArgumentError('image archive refused: it holds no image');
  return plans;
}
