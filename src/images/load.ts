/**
 * Reads an image archive into load plans (#11): `docker save` of Docker 20.10 (manifest.json,
 * <v1id>/layer.tar, a repeated layer as a symlink), of Docker ≥ 25 (the same manifest.json over an OCI
 * layout: blobs/sha256/<hex>, index.json) and a plain OCI layout tar (index.json only). Like `docker
 * load`, manifest.json wins when present. Everything is checked before anything is stored: media types,
 * every blob's digest (a content-addressed path is its digest), each layer's uncompressed digest against
 * the config's rootfs.diff_ids[i], and the layer count.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { InvalidArgumentError } from '../errors.js';
import { decompressed } from '../layers/tar/gzip.js';
import { INDEX_TYPES, MANIFEST_TYPES, MEDIA, parseConfig, parseIndex, parseJson, parseManifest, type Descriptor, type ImageConfig } from './formats.js';
import { isImageId, normalizeReference } from './reference.js';
import type { Spool } from './spool.js';

/** One image to store: its layers in the archive, verified, and its names. */
export interface LoadPlan {
  /** Normalized references (none: the image is stored under its ID). */
  readonly names: string[];
  readonly id: string;
  readonly config: string;
  readonly parsed: ImageConfig;
  readonly manifest: string;
  readonly digest: string;
  /** Archive paths of the layers, base first, each verified against diff_ids. */
  readonly layers: readonly string[];
}

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The digest a content-addressed archive path claims (`blobs/sha256/<hex>`, `<hex>.json`), if any. */
function claimedDigest(p: string): string | undefined {
  const m = /(?:^|\/)(?:blobs\/sha256\/)?([0-9a-f]{64})(?:\.json)?$/.exec(p);
  return m ? `sha256:${m[1]}` : undefined;
}

/** The path of a blob in an OCI layout. */
const blobPath = (digest: string): string => `blobs/sha256/${digest.slice(7)}`;

/**
 * Hashes a layer file: its stored digest (for a descriptor or a content-addressed path) and its
 * uncompressed digest (the DiffID), streaming; returns both and the uncompressed size.
 */
async function hashLayer(file: string): Promise<{ stored: string; diffId: string; size: number }> {
  const stored = createHash('sha256');
  const diff = createHash('sha256');
  let size = 0;
  async function* raw(): AsyncGenerator<Buffer> {
    for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
      stored.update(chunk as Buffer);
      yield chunk as Buffer;
    }
  }
  try {
    for await (const chunk of decompressed(raw())) {
      diff.update(chunk);
      size += chunk.length;
    }
  } catch (err) {
    throw new InvalidArgumentError(`layer ${file} cannot be decompressed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return { stored: `sha256:${stored.digest('hex')}`, diffId: `sha256:${diff.digest('hex')}`, size };
}

interface Candidate {
  names: string[];
  configPath: string;
  configDigest?: string;
  layers: { path: string; digest?: string }[];
  manifest?: { bytes: Buffer; digest: string };
}

function namesOf(raw: unknown, what: string): string[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw) || !raw.every((t) => typeof t === 'string')) throw new InvalidArgumentError(`${what} refused: RepoTags must be a list of strings`);
  return (raw as string[]).map((t) => normalizeReference(t));
}

/** The manifests an OCI layout's index.json leads to (one level of nested index, this platform's entry). */
function ociManifests(spool: Spool): { desc: Descriptor; bytes: Buffer; names: string[] }[] {
  const out: { desc: Descriptor; bytes: Buffer; names: string[] }[] = [];
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
        out.push({ desc: d, bytes, names: own });
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
  if (spool.has('manifest.json')) {
    const list = JSON.parse(spool.read('manifest.json').toString()) as unknown;
    if (!Array.isArray(list)) throw new InvalidArgumentError('manifest.json refused: not a JSON list');
    return list.map((raw, i): Candidate => {
      const what = `manifest.json entry ${i}`;
      const e = parseJson(JSON.stringify(raw), what);
      if (typeof e.Config !== 'string') throw new InvalidArgumentError(`${what} refused: Config must be a path`);
      if (!Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string')) throw new InvalidArgumentError(`${what} refused: Layers must be a list of paths`);
      const configDigest = claimedDigest(e.Config);
      // Docker ≥ 25 also writes index.json: its manifest for this config is the image's manifest.
      const match = configDigest === undefined ? undefined : oci.find((m) => parseManifest(m.bytes, `manifest ${m.desc.digest}`, m.desc.mediaType).config.digest === configDigest);
      return {
        names: namesOf(e.RepoTags, what),
        configPath: e.Config,
        ...(configDigest === undefined ? {} : { configDigest }),
        layers: (e.Layers as string[]).map((p) => {
          const d = claimedDigest(p);
          return { path: p, ...(d !== undefined && p.startsWith('blobs/') ? { digest: d } : {}) };
        }),
        ...(match ? { manifest: { bytes: match.bytes, digest: match.desc.digest } } : {}),
      };
    });
  }
  if (oci.length === 0) throw new InvalidArgumentError('image archive refused: no manifest.json or index.json; want `docker save` output or an OCI layout tar');
  return oci.map(({ desc, bytes, names }) => {
    const m = parseManifest(bytes, `manifest ${desc.digest}`, desc.mediaType);
    return {
      names,
      configPath: blobPath(m.config.digest),
      configDigest: m.config.digest,
      layers: m.layers.map((l) => ({ path: blobPath(l.digest), digest: l.digest })),
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

/** Reads and verifies every image of a spooled archive; throws before anything is stored. */
export async function planLoad(spool: Spool): Promise<LoadPlan[]> {
  const plans: LoadPlan[] = [];
  for (const c of candidatesOf(spool)) {
    const configBytes = spool.read(c.configPath);
    const id = sha256(configBytes);
    if (c.configDigest !== undefined && c.configDigest !== id) throw new InvalidArgumentError(`config ${c.configPath} refused: its content does not match its digest ${c.configDigest}`);
    const config = configBytes.toString('utf8');
    const parsed = parseConfig(configBytes, `config ${id}`);
    const diffIds = parsed.rootfs.diff_ids;
    if (c.layers.length !== diffIds.length) {
      throw new InvalidArgumentError(`image ${id} refused: its manifest lists ${c.layers.length} layers but its config's rootfs.diff_ids has ${diffIds.length}`);
    }
    const hashed: { diffId: string; size: number }[] = [];
    for (const [i, l] of c.layers.entries()) {
      const h = await hashLayer(spool.file(l.path));
      if (l.digest !== undefined && h.stored !== l.digest) throw new InvalidArgumentError(`layer ${l.path} refused: its content has digest ${h.stored}, not ${l.digest}`);
      if (h.diffId !== diffIds[i]) {
        throw new InvalidArgumentError(`layer ${i} (${l.path}) of image ${id} refused: its uncompressed digest ${h.diffId} is not rootfs.diff_ids[${i}] ${diffIds[i]}`);
      }
      hashed.push(h);
    }
    const manifest = c.manifest?.bytes.toString('utf8') ?? synthesizeManifest(config, id, hashed);
    const digest = c.manifest?.digest ?? sha256(manifest);
    plans.push({ names: c.names.filter((n) => !isImageId(n)), id, config, parsed, manifest, digest, layers: c.layers.map((l) => l.path) });
  }
  if (plans.length === 0) throw new InvalidArgumentError('image archive refused: it holds no image');
  return plans;
}
