/**
 * Pulling from a registry (distribution spec, #11), as an OCI layout tar stream that `image load` takes:
 * the CLI fetches (the managed plugin has `network: none`), the server (or the CLI under the server lock)
 * loads, and load verifies everything again. Plain HTTP for 127.0.0.0/8, localhost and ::1, as Docker
 * does; HTTPS elsewhere (Docker Hub at registry-1.docker.io). Credentials from ~/.docker/config.json
 * `auths` (basic), through the bearer-token challenge. Every document and blob is checked against its
 * digest while it streams; a connection lost mid-blob is resumed with a Range request after a backoff.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError, NotFoundError, UnavailableError, describeError } from '../errors.js';
import { BLOCK, encodeHeader, padding, type TarHeader } from '../layers/tar/format.js';
import { INDEX_TYPES, MANIFEST_TYPES, MEDIA, parseConfig, parseIndex, parseManifest } from './formats.js';
import { formatReference, parseReference, type Reference } from './reference.js';
import { MAX_JSON } from './spool.js';

const ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');
/** Tries per request (the first and the retries), backing off 0.5 s, 1 s, 2 s. */
const TRIES = 4;

/** Where a reference's registry answers. */
function baseUrl(ref: Reference): string {
  const host = ref.domain === 'docker.io' ? 'registry-1.docker.io' : ref.domain;
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const loopback = /^127\.\d+\.\d+\.\d+$/.test(name) || name === 'localhost' || name === '::1';
  return `${loopback ? 'http' : 'https'}://${host}`;
}

/** Basic credentials for `domain` from Docker's config file, if any. */
function credentials(domain: string): string | undefined {
  const file = path.join(process.env.DOCKER_CONFIG ?? path.join(os.homedir(), '.docker'), 'config.json');
  let conf: { auths?: Record<string, { auth?: string }> };
  try {
    conf = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof conf;
  } catch {
    // No config (or an unreadable one): anonymous access, as docker does.
    return undefined;
  }
  const keys = domain === 'docker.io' ? ['https://index.docker.io/v1/', 'docker.io', 'index.docker.io'] : [domain, `https://${domain}`, `http://${domain}`];
  for (const k of keys) {
    const a = conf.auths && Object.hasOwn(conf.auths, k) ? conf.auths[k]?.auth : undefined;
    if (typeof a === 'string' && a !== '') return a;
  }
  return undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A registry session for one repository: requests with auth, retries and clear errors. */
class Registry {
  private token: string | undefined;
  constructor(
    private readonly ref: Reference,
    private readonly base = baseUrl(ref),
  ) {}

  private url(kind: 'manifests' | 'blobs', what: string): string {
    return `${this.base}/v2/${this.ref.path}/${kind}/${what}`;
  }

  /** Fetches with the bearer challenge answered; retries connection errors and 5xx. */
  async get(kind: 'manifests' | 'blobs', what: string, headers: Record<string, string> = {}): Promise<Response> {
    const url = this.url(kind, what);
    for (let attempt = 1; ; attempt++) {
      let res: Response;
      try {
        res = await fetch(url, { headers: { ...headers, ...(this.token ? { Authorization: `Bearer ${this.token}` } : {}) }, redirect: 'follow' });
      } catch (err) {
        if (attempt < TRIES) {
          await sleep(250 * 2 ** attempt);
          continue;
        }
        throw new UnavailableError(`registry ${this.base} unreachable for ${what}: ${describeError(err instanceof Error && err.cause !== undefined ? err.cause : err)}`, { cause: err });
      }
      if (res.status === 401 && this.token === undefined && attempt === 1) {
        await res.body?.cancel();
        await this.authenticate(res.headers.get('www-authenticate'));
        attempt = 0;
        continue;
      }
      if (res.status >= 500 && attempt < TRIES) {
        await res.body?.cancel();
        await sleep(250 * 2 ** attempt);
        continue;
      }
      if (res.status === 200 || res.status === 206) return res;
      await res.body?.cancel();
      const repo = formatReference({ domain: this.ref.domain, path: this.ref.path });
      if (res.status === 404) throw new NotFoundError(`${kind === 'manifests' ? `manifest ${what}` : `blob ${what}`} of ${repo} not found in the registry (404)`);
      if (res.status === 401 || res.status === 403) {
        throw new InvalidArgumentError(`the registry refused access to ${repo} (${res.status}); log in with \`docker login ${this.ref.domain}\` (tsvol reads ~/.docker/config.json)`);
      }
      throw new UnavailableError(`the registry answered ${res.status} for ${kind} ${what} of ${repo}`);
    }
  }

  /** Answers a `Bearer realm=…,service=…,scope=…` challenge with a token. */
  private async authenticate(challenge: string | null): Promise<void> {
    const m = challenge === null ? null : /^Bearer\s+(.*)$/i.exec(challenge);
    if (m === null) throw new InvalidArgumentError(`the registry ${this.base} wants authentication tsvol does not speak: ${challenge ?? 'no challenge'}`);
    const params = new Map<string, string>();
    for (const [, k, v] of m[1]!.matchAll(/(\w+)="([^"]*)"/g)) params.set(k!, v!);
    const realm = params.get('realm');
    if (realm === undefined) throw new InvalidArgumentError(`the registry ${this.base}'s challenge has no realm`);
    const url = new URL(realm);
    const service = params.get('service');
    if (service !== undefined) url.searchParams.set('service', service);
    url.searchParams.set('scope', params.get('scope') ?? `repository:${this.ref.path}:pull`);
    const basic = credentials(this.ref.domain);
    const res = await fetch(url, { headers: basic ? { Authorization: `Basic ${basic}` } : {} });
    if (res.status !== 200) throw new InvalidArgumentError(`the registry's token service refused access to ${this.ref.path} (${res.status}); log in with \`docker login ${this.ref.domain}\``);
    const body = (await res.json()) as { token?: string; access_token?: string };
    this.token = body.token ?? body.access_token;
    if (!this.token) throw new InvalidArgumentError(`the registry's token service gave no token for ${this.ref.path}`);
  }

  /** A small document (manifest, index, config), verified against `digest` when it is known. */
  async document(kind: 'manifests' | 'blobs', what: string, digest: string | undefined): Promise<{ bytes: Buffer; digest: string; mediaType: string | undefined }> {
    const res = await this.get(kind, what, kind === 'manifests' ? { Accept: ACCEPT } : {});
    const bytes = Buffer.from(await res.arrayBuffer());
    if (bytes.length > MAX_JSON) throw new InvalidArgumentError(`${kind} ${what} refused: ${bytes.length} bytes, at most ${MAX_JSON}`);
    const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const claimed = digest ?? res.headers.get('docker-content-digest') ?? undefined;
    if (claimed !== undefined && claimed !== got) throw new InvalidArgumentError(`${kind} ${what} refused: its content has digest ${got}, not ${claimed}`);
    return { bytes, digest: got, mediaType: res.headers.get('content-type')?.split(';')[0]?.trim() };
  }

  /** A blob's bytes, exactly `size` of them with digest `digest`; resumed with Range after a lost connection. */
  async *blob(digest: string, size: number): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let got = 0;
    for (let attempt = 1; got < size || attempt === 1; attempt++) {
      const res = await this.get('blobs', digest, got > 0 ? { Range: `bytes=${got}-` } : {});
      let skip = res.status === 200 ? got : 0; // a registry that ignores Range resends from the start
      try {
        for await (const raw of res.body as unknown as AsyncIterable<Uint8Array>) {
          let chunk = Buffer.from(raw);
          if (skip > 0) {
            const n = Math.min(skip, chunk.length);
            skip -= n;
            chunk = chunk.subarray(n);
          }
          if (chunk.length === 0) continue;
          if (got + chunk.length > size) throw new InvalidArgumentError(`blob ${digest} refused: longer than its ${size} bytes`);
          hash.update(chunk);
          got += chunk.length;
          yield chunk;
        }
      } catch (err) {
        if (err instanceof InvalidArgumentError || attempt >= TRIES) {
          throw err instanceof InvalidArgumentError ? err : new UnavailableError(`blob ${digest} cut short after ${got} of ${size} bytes: ${describeError(err)}`, { cause: err });
        }
        await sleep(250 * 2 ** attempt);
        continue;
      }
      if (got < size && attempt >= TRIES) throw new UnavailableError(`blob ${digest} cut short after ${got} of ${size} bytes`);
      if (got === size) break;
    }
    const d = `sha256:${hash.digest('hex')}`;
    if (d !== digest) throw new InvalidArgumentError(`blob ${digest} refused: its content has digest ${d}`);
  }
}

function tarHeader(p: string, size: number): Buffer {
  const h: TarHeader = { path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, size, mtime: 0, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map() };
  return encodeHeader(h);
}

function* small(p: string, body: Buffer | string): Generator<Buffer> {
  const b = Buffer.from(body);
  yield tarHeader(p, b.length);
  yield b;
  yield Buffer.alloc(padding(b.length));
}

/** What a pull is about to fetch (for progress and the final message). */
export interface PullInfo {
  readonly name: string;
  readonly digest: string;
  readonly layers: number;
  readonly bytes: number;
}

/**
 * Pulls `refText` as an OCI layout tar stream (index.json naming the image by its normalized reference),
 * for `image load`. Manifest, index and config are fetched and checked first (`onInfo` hears of them);
 * then each layer streams from the registry into the tar, its digest checked at its end.
 */
export async function* pullArchive(refText: string, onInfo: (info: PullInfo) => void = () => undefined): AsyncGenerator<Buffer> {
  const ref = parseReference(refText);
  const reg = new Registry(ref);
  const want = ref.digest ?? ref.tag ?? 'latest';
  let top = await reg.document('manifests', want, ref.digest);
  let mediaType = top.mediaType;
  let json = JSON.parse(top.bytes.toString()) as { mediaType?: string };
  if (typeof json.mediaType === 'string') mediaType = json.mediaType;
  if (mediaType !== undefined && INDEX_TYPES.has(mediaType)) {
    const arch = ({ x64: 'amd64', arm64: 'arm64', arm: 'arm' } as Record<string, string>)[process.arch] ?? process.arch;
    const pick = parseIndex(top.bytes, `index of ${refText}`).find((d) => d.platform?.os === 'linux' && d.platform.architecture === arch);
    if (pick === undefined) throw new NotFoundError(`${refText} has no linux/${arch} image`);
    top = await reg.document('manifests', pick.digest, pick.digest);
    json = JSON.parse(top.bytes.toString()) as { mediaType?: string };
    mediaType = typeof json.mediaType === 'string' ? json.mediaType : pick.mediaType;
  }
  if (mediaType === undefined || !MANIFEST_TYPES.has(mediaType)) throw new InvalidArgumentError(`${refText} refused: unknown manifest media type ${JSON.stringify(mediaType)}`);
  const manifest = parseManifest(top.bytes, `manifest of ${refText}`, mediaType);
  const config = await reg.document('blobs', manifest.config.digest, manifest.config.digest);
  const parsed = parseConfig(config.bytes, `config of ${refText}`);
  if (parsed.rootfs.diff_ids.length !== manifest.layers.length) {
    throw new InvalidArgumentError(`${refText} refused: its manifest lists ${manifest.layers.length} layers but its config's rootfs.diff_ids has ${parsed.rootfs.diff_ids.length}`);
  }
  // The name the image is stored under: the reference as asked, normalized.
  const name = formatReference(ref);
  onInfo({ name, digest: top.digest, layers: manifest.layers.length, bytes: manifest.layers.reduce((n, l) => n + l.size, 0) });
  const index = JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA.ociIndex,
    manifests: [{ mediaType, digest: top.digest, size: top.bytes.length, annotations: { 'io.containerd.image.name': name } }],
  });
  yield* small('oci-layout', '{"imageLayoutVersion":"1.0.0"}');
  yield* small('index.json', index);
  yield* small(`blobs/sha256/${top.digest.slice(7)}`, top.bytes);
  yield* small(`blobs/sha256/${config.digest.slice(7)}`, config.bytes);
  const seen = new Set<string>();
  for (const l of manifest.layers) {
    if (seen.has(l.digest)) continue;
    seen.add(l.digest);
    yield tarHeader(`blobs/sha256/${l.digest.slice(7)}`, l.size);
    yield* reg.blob(l.digest, l.size);
    yield Buffer.alloc(padding(l.size));
  }
  yield Buffer.alloc(2 * BLOCK);
}

/** What a push needs of the store: the documents and the layers' bytes (uncompressed, byte-exact). */
export interface PushSource {
  readonly manifest: string;
  readonly config: string;
  readonly layers: readonly { readonly id: string; readonly diffId: string }[];
  /** Streams layer `id`'s tar to `sink`. */
  exportLayer(id: string, sink: (tar: AsyncIterable<Buffer>) => Promise<void>): Promise<void>;
}

/**
 * Pushes an image to `refText`'s registry: each blob that the registry lacks (HEAD) is uploaded (POST
 * uploads/ → 202 Location, then PUT Location&digest=), then the manifest is PUT under the tag. The stored
 * manifest is pushed byte-exact when its layers are the uncompressed tars the store holds (images loaded
 * from docker save), so the manifest digest is unchanged; an image whose manifest names compressed blobs
 * (pulled) gets a new schema2 manifest of uncompressed layers, since the store keeps no compressed bytes.
 * Returns the manifest digest.
 */
export async function pushImage(refText: string, src: PushSource): Promise<string> {
  const ref = parseReference(refText);
  if (ref.tag === undefined) throw new InvalidArgumentError(`push needs a tag: ${JSON.stringify(refText)}`);
  const base = baseUrl(ref);
  const repoUrl = `${base}/v2/${ref.path}`;
  const send = async (url: string, init: RequestInit & { duplex?: 'half' }, what: string): Promise<Response> => {
    let res: Response;
    try {
      res = await fetch(url, init);
    } catch (err) {
      throw new UnavailableError(`registry ${base} unreachable (${what}): ${describeError(err instanceof Error && err.cause !== undefined ? err.cause : err)}`, { cause: err });
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw new InvalidArgumentError(`the registry refused ${what} (${res.status}); log in with \`docker login ${ref.domain}\``);
    }
    return res;
  };
  const upload = async (digest: string, body: Buffer | AsyncIterable<Buffer>): Promise<void> => {
    const head = await send(`${repoUrl}/blobs/${digest}`, { method: 'HEAD' }, `HEAD blob ${digest}`);
    if (head.status === 200) return;
    const start = await send(`${repoUrl}/blobs/uploads/`, { method: 'POST' }, 'an upload');
    await start.body?.cancel();
    const location = start.headers.get('location');
    if (start.status !== 202 || location === null) throw new UnavailableError(`the registry answered ${start.status} to an upload of ${digest}`);
    const url = new URL(location, base);
    url.searchParams.set('digest', digest);
    const stream = Buffer.isBuffer(body) ? body : ReadableStream.from(body);
    const put = await send(url.toString(), { method: 'PUT', body: stream, headers: { 'Content-Type': 'application/octet-stream' }, duplex: 'half' }, `the upload of ${digest}`);
    const text = await put.text();
    if (put.status !== 201) throw new UnavailableError(`the registry answered ${put.status} to the upload of ${digest}: ${text.slice(0, 300)}`);
  };
  const stored = parseJson(src.manifest);
  const storedLayers = Array.isArray(stored.layers) ? (stored.layers as { digest?: string }[]) : [];
  const exact = storedLayers.length === src.layers.length && storedLayers.every((l, i) => l.digest === src.layers[i]!.diffId);
  const sizes = new Map<string, number>();
  for (const l of src.layers) {
    let size = 0;
    if (!sizes.has(l.diffId)) {
      await src.exportLayer(l.id, async (tar) => {
        async function* counted(): AsyncGenerator<Buffer> {
          for await (const c of tar) {
            size += c.length;
            yield c;
          }
        }
        await upload(l.diffId, counted());
        if (size === 0) {
          // HEAD said the registry has it: drain the export (its size is needed for a new manifest).
          for await (const c of tar) size += c.length;
        }
      });
      sizes.set(l.diffId, size);
    }
  }
  const configDigest = `sha256:${createHash('sha256').update(src.config).digest('hex')}`;
  await upload(configDigest, Buffer.from(src.config));
  const manifest = exact
    ? src.manifest
    : JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.dockerManifest,
        config: { mediaType: MEDIA.dockerConfig, size: Buffer.byteLength(src.config), digest: configDigest },
        layers: src.layers.map((l) => ({ mediaType: MEDIA.dockerLayer, size: sizes.get(l.diffId) ?? 0, digest: l.diffId })),
      });
  const mediaType = typeof parseJson(manifest).mediaType === 'string' ? (parseJson(manifest).mediaType as string) : MEDIA.dockerManifest;
  const put = await send(`${repoUrl}/manifests/${ref.tag}`, { method: 'PUT', body: manifest, headers: { 'Content-Type': mediaType } }, `the manifest of ${refText}`);
  const text = await put.text();
  if (put.status !== 201) throw new UnavailableError(`the registry answered ${put.status} to the manifest of ${refText}: ${text.slice(0, 300)}`);
  return `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
}

function parseJson(text: string): Record<string, unknown> {
  return JSON.parse(text) as Record<string, unknown>;
}
