/**
 * Registries (distribution spec v2, #11), spoken by the CLI: a managed plugin has `network: none`.
 *
 * Pull: the manifest (an index → this platform's manifest) and the config are fetched and checked first;
 * then the CLI asks the store which layers it has (by ChainID, from the config's rootfs.diff_ids) and
 * which compressed blobs it keeps, and fetches only the others, up to 3 at once (dockerd's default
 * max-concurrent-downloads). Their bytes go to the store as they arrive, interleaved in one pull stream
 * (src/images/pull-stream.ts), where each is hashed, kept and unpacked while it streams; the receiver
 * checks every digest. A connection lost mid-blob resumes with a Range request after a backoff.
 *
 * Push: a pulled image (its manifest `received`) is pushed byte-exact, the manifest as it came and each
 * blob as it was kept, so the manifest digest is the one it was pulled with. Each blob is checked with
 * HEAD first; one the registry has in the repository it came from is cross-mounted (`POST
 * uploads/?mount=&from=`), falling back to an upload. An image whose manifest tsvol made (a Docker 20.10
 * save) has no compressed blobs: its layers are gzipped as they are uploaded and a new schema2 manifest
 * names them, as `docker push` does.
 *
 * Plain HTTP for 127.0.0.0/8, localhost and ::1, as Docker does; HTTPS elsewhere (Docker Hub at
 * registry-1.docker.io). Credentials from ~/.docker/config.json `auths` (basic), through the bearer-token
 * challenge.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createGzip } from 'node:zlib';
import { InvalidArgumentError, NotFoundError, UnavailableError, describeError } from '../errors.js';
import { Channel } from './channel.js';
import { COMPRESSED_LAYER_TYPES, INDEX_TYPES, MANIFEST_TYPES, MEDIA, parseConfig, parseIndex, parseJson, parseManifest, type Descriptor } from './formats.js';
import type { ImageDocuments } from './image-ops.js';
import { FRAME, dataFrames, framePrefix, headerFrame } from './pull-stream.js';
import { formatReference, parseReference, repositoryOf, type Reference } from './reference.js';
import { MAX_JSON } from './spool.js';

const ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');
/** Tries per request (the first and the retries), backing off 0.5 s, 1 s, 2 s. */
const TRIES = 4;
/** Payload bytes gathered into one frame of a pull stream. */
const FRAME_BYTES = 256 << 10;
/** Blobs fetched at once (dockerd's default max-concurrent-downloads). */
export const PULL_CONCURRENCY = 3;
/** Blobs sent at once on push (dockerd's default max-concurrent-uploads is 5; 3 keeps two cores busy). */
const PUSH_CONCURRENCY = 3;

/** True for a loopback host name (127.0.0.0/8, localhost, ::1), with or without a port or brackets. */
function isLoopback(host: string): boolean {
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return /^127\.\d+\.\d+\.\d+$/.test(name) || name === 'localhost' || name === '::1';
}

/** Where a reference's registry answers: plain HTTP on loopback, as Docker does; HTTPS elsewhere. */
function baseUrl(ref: Reference): string {
  const host = ref.domain === 'docker.io' ? 'registry-1.docker.io' : ref.domain;
  return `${isLoopback(host) ? 'http' : 'https'}://${host}`;
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

/** The most bytes of a token service's reply read. */
const MAX_TOKEN_REPLY = 1 << 20;
/** The most bytes of an error reply kept for its message. */
const ERROR_TEXT = 4096;

/**
 * Up to the first `max` bytes of a reply's body, and whether more followed; the connection is closed as soon
 * as more than `max` has arrived, so memory never holds more than one chunk past `max`.
 */
async function readUpTo(res: Response, max: number): Promise<{ bytes: Buffer; more: boolean }> {
  const reader = res.body?.getReader();
  const parts: Buffer[] = [];
  let size = 0;
  for (;;) {
    const r = await reader?.read();
    if (r === undefined || r.done) return { bytes: Buffer.concat(parts, size), more: false };
    parts.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength));
    size += r.value.byteLength;
    if (size > max) {
      await reader!.cancel();
      return { bytes: Buffer.concat(parts, size).subarray(0, max), more: true };
    }
  }
}

/**
 * A reply's body, at most `max` bytes: a registry (or its token service) is not trusted to send a small
 * document, so a longer body, announced (Content-Length) or streamed, is refused once `max` is passed and
 * its connection closed (#9, #11).
 */
async function boundedBody(res: Response, max: number, what: string): Promise<Buffer> {
  const announced = Number(res.headers.get('content-length') ?? NaN);
  const refuse = (n: string): InvalidArgumentError => new InvalidArgumentError(`${what} refused: the registry sent ${n} bytes, at most ${max} are accepted`);
  if (announced > max) {
    await res.body?.cancel();
    throw refuse(String(announced));
  }
  const { bytes, more } = await readUpTo(res, max);
  if (more) throw refuse(`more than ${max}`);
  return bytes;
}

/** The start of an error reply's body, for its message (at most ERROR_TEXT bytes are read). */
async function errorText(res: Response): Promise<string> {
  return (await readUpTo(res, ERROR_TEXT)).bytes.toString('utf8');
}

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

type Init = RequestInit & { duplex?: 'half' };

/** A registry session for one repository: requests with auth, retries and clear errors. */
class Registry {
  private token: string | undefined;
  readonly base: string;
  readonly repo: string;
  constructor(
    readonly ref: Reference,
    private readonly push = false,
  ) {
    this.base = baseUrl(ref);
    this.repo = formatReference({ domain: ref.domain, path: ref.path });
  }

  /** `/v2/<name>/<rest>` of this repository, or an absolute URL (an upload's Location) as it is. */
  url(rest: string): string {
    return /^https?:\/\//.test(rest) ? rest : `${this.base}/v2/${this.ref.path}/${rest}`;
  }

  /**
   * One request with the bearer challenge answered (once per request, with the challenge's own scope).
   * A connection error is an UnavailableError; 401/403 after auth an InvalidArgumentError naming the login.
   */
  async send(method: string, rest: string, init: Init, what: string): Promise<Response> {
    for (let authed = false; ; authed = true) {
      let res: Response;
      try {
        res = await fetch(this.url(rest), { ...init, method, headers: { ...(init.headers as Record<string, string>), ...(this.token ? { Authorization: `Bearer ${this.token}` } : {}) }, redirect: 'follow' });
      } catch (err) {
        throw new UnavailableError(`registry ${this.base} unreachable (${what}): ${describeError(err instanceof Error && err.cause !== undefined ? err.cause : err)}`, { cause: err });
      }
      // A body being streamed cannot be sent twice: only bodiless requests retry after the challenge.
      if (res.status === 401 && !authed && (init.body === undefined || Buffer.isBuffer(init.body) || typeof init.body === 'string')) {
        await res.body?.cancel();
        await this.authenticate(res.headers.get('www-authenticate'));
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        await res.body?.cancel();
        throw new InvalidArgumentError(`the registry refused ${what} on ${this.repo} (${res.status}); log in with \`docker login ${this.ref.domain}\` (tsvol reads ~/.docker/config.json)`);
      }
      return res;
    }
  }

  /** GET with retries on connection errors and 5xx; 404 is NotFound. */
  async get(rest: string, headers: Record<string, string>, what: string): Promise<Response> {
    for (let attempt = 1; ; attempt++) {
      let res: Response;
      try {
        res = await this.send('GET', rest, { headers }, what);
      } catch (err) {
        if (err instanceof UnavailableError && attempt < TRIES) {
          await sleep(250 * 2 ** attempt);
          continue;
        }
        throw err;
      }
      if (res.status >= 500 && attempt < TRIES) {
        await res.body?.cancel();
        await sleep(250 * 2 ** attempt);
        continue;
      }
      if (res.status === 200 || res.status === 206) return res;
      await res.body?.cancel();
      if (res.status === 404) throw new NotFoundError(`${what} of ${this.repo} not found in the registry (404)`);
      throw new UnavailableError(`the registry answered ${res.status} for ${what} of ${this.repo}`);
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
    let url: URL;
    try {
      url = new URL(realm);
    } catch (err) {
      throw new InvalidArgumentError(`the registry ${this.base}'s challenge names a realm that is not a URL: ${JSON.stringify(realm)}`, { cause: err });
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new InvalidArgumentError(`the registry ${this.base}'s challenge names a realm that is not HTTP(S): ${JSON.stringify(realm)}`);
    const basic = credentials(this.ref.domain);
    // The realm is the registry's to name, but the user's password never goes out in clear text: over
    // plain HTTP only to a loopback token service (as the registry itself is reached).
    if (basic !== undefined && url.protocol === 'http:' && !isLoopback(url.host)) {
      throw new InvalidArgumentError(`the registry ${this.base} asks for your ${this.ref.domain} credentials at ${url.origin}, over plain HTTP; tsvol sends them only over HTTPS (or to a loopback address)`);
    }
    const service = params.get('service');
    if (service !== undefined) url.searchParams.set('service', service);
    url.searchParams.set('scope', params.get('scope') ?? `repository:${this.ref.path}:${this.push ? 'pull,push' : 'pull'}`);
    let res: Response;
    try {
      res = await fetch(url, { headers: basic ? { Authorization: `Basic ${basic}` } : {} });
    } catch (err) {
      throw new UnavailableError(`the token service ${url.origin} of ${this.base} unreachable: ${describeError(err instanceof Error && err.cause !== undefined ? err.cause : err)}`, { cause: err });
    }
    if (res.status !== 200) {
      await res.body?.cancel();
      throw new InvalidArgumentError(`the registry's token service refused access to ${this.ref.path} (${res.status}); log in with \`docker login ${this.ref.domain}\``);
    }
    let body: { token?: unknown; access_token?: unknown } | null;
    try {
      body = JSON.parse((await boundedBody(res, MAX_TOKEN_REPLY, `the token service's reply for ${this.ref.path}`)).toString('utf8')) as typeof body;
    } catch (err) {
      if (err instanceof InvalidArgumentError) throw err;
      throw new InvalidArgumentError(`the registry's token service sent no JSON for ${this.ref.path}: ${describeError(err)}`, { cause: err });
    }
    const token = body?.token ?? body?.access_token;
    this.token = typeof token === 'string' ? token : undefined;
    if (!this.token) throw new InvalidArgumentError(`the registry's token service gave no token for ${this.ref.path}`);
  }

  /** A small document (manifest, index, config), verified against `digest` when it is known. */
  async document(kind: 'manifests' | 'blobs', what: string, digest: string | undefined): Promise<{ bytes: Buffer; digest: string; mediaType: string | undefined }> {
    const res = await this.get(`${kind}/${what}`, kind === 'manifests' ? { Accept: ACCEPT } : {}, `${kind === 'manifests' ? 'manifest' : 'blob'} ${what}`);
    const bytes = await boundedBody(res, MAX_JSON, `${kind} ${what}`);
    const got = sha256(bytes);
    const claimed = digest ?? res.headers.get('docker-content-digest') ?? undefined;
    if (claimed !== undefined && claimed !== got) throw new InvalidArgumentError(`${kind} ${what} refused: its content has digest ${got}, not ${claimed}`);
    return { bytes, digest: got, mediaType: res.headers.get('content-type')?.split(';')[0]?.trim() };
  }

  /**
   * A blob's bytes, exactly `size` of them; resumed with Range after a lost connection (backing off). The
   * receiver checks the digest as the bytes arrive (it hashes what it stores).
   */
  async *blob(digest: string, size: number): AsyncGenerator<Buffer> {
    let got = 0;
    for (let attempt = 1; got < size || attempt === 1; attempt++) {
      const res = await this.get(`blobs/${digest}`, got > 0 ? { Range: `bytes=${got}-` } : {}, `blob ${digest}`);
      let skip = res.status === 200 ? got : 0; // a registry that ignores Range resends from the start
      try {
        for await (const raw of res.body as unknown as AsyncIterable<Uint8Array>) {
          let chunk = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength); // a view: fetch hands out fresh chunks
          if (skip > 0) {
            const n = Math.min(skip, chunk.length);
            skip -= n;
            chunk = chunk.subarray(n);
          }
          if (chunk.length === 0) continue;
          if (got + chunk.length > size) throw new InvalidArgumentError(`blob ${digest} refused: longer than its ${size} bytes`);
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
  }
}

/** An image resolved in its registry: documents fetched and checked, layers not yet. */
export interface ResolvedPull {
  /** The normalized reference it is stored under (the reference as asked). */
  readonly name: string;
  readonly manifest: { readonly bytes: Buffer; readonly digest: string; readonly mediaType: string };
  readonly config: Buffer;
  readonly layers: readonly Descriptor[];
  readonly diffIds: readonly string[];
  readonly registry: Registry;
}

/** Fetches and checks `refText`'s manifest (this platform's, from an index) and config. */
export async function resolvePull(refText: string): Promise<ResolvedPull> {
  const ref = parseReference(refText);
  const reg = new Registry(ref);
  const want = ref.digest ?? ref.tag ?? 'latest';
  let top = await reg.document('manifests', want, ref.digest);
  let mediaType = top.mediaType;
  let json = parseJson(top.bytes, `manifest of ${refText}`) as { mediaType?: string };
  if (typeof json.mediaType === 'string') mediaType = json.mediaType;
  if (mediaType !== undefined && INDEX_TYPES.has(mediaType)) {
    const arch = ({ x64: 'amd64', arm64: 'arm64', arm: 'arm' } as Record<string, string>)[process.arch] ?? process.arch;
    const pick = parseIndex(top.bytes, `index of ${refText}`).find((d) => d.platform?.os === 'linux' && d.platform.architecture === arch);
    if (pick === undefined) throw new NotFoundError(`${refText} has no linux/${arch} image`);
    top = await reg.document('manifests', pick.digest, pick.digest);
    json = parseJson(top.bytes, `manifest of ${refText}`) as { mediaType?: string };
    mediaType = typeof json.mediaType === 'string' ? json.mediaType : pick.mediaType;
  }
  if (mediaType === undefined || !MANIFEST_TYPES.has(mediaType)) throw new InvalidArgumentError(`${refText} refused: unknown manifest media type ${JSON.stringify(mediaType)}`);
  const manifest = parseManifest(top.bytes, `manifest of ${refText}`, mediaType);
  const config = await reg.document('blobs', manifest.config.digest, manifest.config.digest);
  const parsed = parseConfig(config.bytes, `config of ${refText}`);
  if (parsed.rootfs.diff_ids.length !== manifest.layers.length) {
    throw new InvalidArgumentError(`${refText} refused: its manifest lists ${manifest.layers.length} layers but its config's rootfs.diff_ids has ${parsed.rootfs.diff_ids.length}`);
  }
  return {
    name: formatReference(ref),
    manifest: { bytes: top.bytes, digest: top.digest, mediaType },
    config: config.bytes,
    layers: manifest.layers,
    diffIds: parsed.rootfs.diff_ids,
    registry: reg,
  };
}

/** What the store has of a pull's layers: layers[i] (its chain), blobs[i] (its compressed blob kept). */
export interface Stored {
  readonly layers: readonly boolean[];
  readonly blobs: readonly boolean[];
}

/**
 * The blobs to fetch: a layer whose chain is stored is not fetched, unless it is compressed and its blob
 * is not kept (a push of this image would need it). Each digest once.
 */
export function blobsToFetch(r: ResolvedPull, stored: Stored): Descriptor[] {
  const out = new Map<string, Descriptor>();
  for (const [i, l] of r.layers.entries()) {
    const need = !stored.layers[i] || (COMPRESSED_LAYER_TYPES.has(l.mediaType) && !stored.blobs[i]);
    if (need && !out.has(l.digest)) out.set(l.digest, l);
  }
  return [...out.values()];
}

/** Hears how a pull's downloads go (per blob). */
export interface PullEvents {
  bytes(digest: string, done: number): void;
  downloaded(digest: string): void;
}

/**
 * The pull stream (src/images/pull-stream.ts) of `r` carrying `fetch`'s blobs: up to PULL_CONCURRENCY
 * downloads at once, their chunks framed as they arrive. Memory stays bounded: a download waits while the
 * stream's reader is behind. If the reader stops (the store refused the pull), the downloads stop too.
 */
export async function* pullStream(r: ResolvedPull, fetchBlobs: readonly Descriptor[], events: PullEvents, concurrency = PULL_CONCURRENCY): AsyncGenerator<Buffer> {
  yield headerFrame({
    name: r.name,
    source: repositoryOf(r.registry.ref),
    manifest: r.manifest.bytes.toString('base64'),
    mediaType: r.manifest.mediaType,
    config: r.config.toString('base64'),
    blobs: fetchBlobs.map((b) => ({ digest: b.digest, size: b.size })),
  });
  // One item per whole frame (prefix and payload in one buffer): several downloads push at once, and a
  // frame's parts must never be interleaved with another's.
  const out = new Channel<Buffer>(16);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < fetchBlobs.length && !out.closed) {
      const j = next++;
      const b = fetchBlobs[j]!;
      let done = 0;
      // fetch hands out chunks of 16 to 64 KiB: gathered into frames of FRAME_BYTES, a quarter to a sixteenth
      // as many frames (each costs a queue hop and a write here, a parse and two queue hops in the store).
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flush = async (): Promise<void> => {
        if (pendingBytes === 0) return;
        const payload = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        for (const f of dataFrames(j, payload)) await out.push(f);
      };
      for await (const chunk of r.registry.blob(b.digest, b.size)) {
        if (out.closed) return;
        done += chunk.length;
        events.bytes(b.digest, done);
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= FRAME_BYTES) await flush();
      }
      await flush();
      await out.push(framePrefix(FRAME.blobEnd, j, 0));
      events.downloaded(b.digest);
    }
  };
  const workers = Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, fetchBlobs.length)) }, worker)).then(
    async () => {
      await out.push(framePrefix(FRAME.end, 0, 0));
      out.end();
    },
    (err: unknown) => out.fail(err),
  );
  try {
    yield* out;
  } finally {
    // The reader stopped early or all was sent: either way the workers end now.
    await out[Symbol.asyncIterator]().return?.();
    await workers;
  }
}

/** What a push needs of the store: the image's documents and a way to read its layers and kept blobs. */
export interface PushSource {
  readonly documents: ImageDocuments;
  /** Streams layer `id`'s tar (uncompressed, byte-exact) to `sink`. */
  exportLayer(id: string, sink: (tar: AsyncIterable<Buffer>) => Promise<void>): Promise<void>;
  /** Streams the kept blob `digest` to `sink`. */
  readBlob(digest: string, sink: (blob: AsyncIterable<Buffer>) => Promise<void>): Promise<void>;
}

/** Hears how a push goes, per layer (by the layer's position). */
export interface PushEvents {
  start(layers: readonly { readonly key: string; readonly size: number | undefined }[]): void;
  bytes(key: string, done: number): void;
  finished(key: string, how: 'exists' | 'mounted' | 'pushed'): void;
}

/** What a push did. */
export interface PushResult {
  /** The manifest digest (the registry's Docker-Content-Digest when it sends one). */
  readonly digest: string;
  /** True when the layers were gzipped on the way (tsvol made the manifest). */
  readonly compressed: boolean;
  readonly mounted: number;
  readonly uploaded: number;
  readonly existing: number;
}

/** Runs `fn` over `items`, at most `n` at once; results in order. */
async function pool<T, R>(items: readonly T[], n: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(n, items.length)) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

/** Counts bytes of `input` for `onBytes` as they pass. */
async function* counting(input: AsyncIterable<Buffer>, onBytes: (n: number) => void): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const c of input) {
    n += c.length;
    onBytes(n);
    yield c;
  }
}

/**
 * Pushes an image to `refText`'s registry (see the module comment): blob by blob (HEAD, mount, upload),
 * then the manifest under the tag. Returns what it did and the manifest digest.
 */
export async function pushImage(refText: string, src: PushSource, events?: PushEvents): Promise<PushResult> {
  const ref = parseReference(refText);
  if (ref.tag === undefined) throw new InvalidArgumentError(`push needs a tag: ${JSON.stringify(refText)}`);
  const reg = new Registry(ref, true);
  const docs = src.documents;
  const kept = new Map(docs.blobs.map((b) => [b.digest, b]));
  const counts = { mounted: 0, uploaded: 0, existing: 0 };

  /** True if the registry has `digest` in this repository. */
  const has = async (digest: string): Promise<boolean> => {
    const res = await reg.send('HEAD', `blobs/${digest}`, {}, `HEAD blob ${digest}`);
    await res.body?.cancel();
    return res.status === 200;
  };
  /** Starts an upload (or mounts `digest` from `from`): the Location to send to, or undefined once mounted. */
  const begin = async (mount?: { digest: string; from: string }): Promise<string | undefined> => {
    const q = mount === undefined ? '' : `?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}`;
    const res = await reg.send('POST', `blobs/uploads/${q}`, {}, 'an upload');
    await res.body?.cancel();
    if (mount !== undefined && res.status === 201) return undefined;
    const location = res.headers.get('location');
    if (res.status !== 202 || location === null) throw new UnavailableError(`the registry answered ${res.status} to an upload on ${reg.repo}`);
    return new URL(location, reg.base).toString();
  };
  const finish = async (res: Response, what: string): Promise<void> => {
    if (res.status === 201) return void (await res.body?.cancel());
    throw new UnavailableError(`the registry answered ${res.status} to ${what}: ${(await errorText(res)).slice(0, 300)}`);
  };
  /** Sends a blob whose digest is known (HEAD, then a mount from where it came, then one PUT). */
  const sendKnown = async (digest: string, key: string, source: string | undefined, body: (sink: (b: AsyncIterable<Buffer>) => Promise<void>) => Promise<void>): Promise<void> => {
    if (await has(digest)) {
      counts.existing++;
      events?.finished(key, 'exists');
      return;
    }
    const from = source === undefined ? undefined : parseReference(source);
    const mountable = from !== undefined && from.domain === ref.domain && from.path !== ref.path;
    const location = await begin(mountable ? { digest, from: from.path } : undefined);
    if (location === undefined) {
      counts.mounted++;
      events?.finished(key, 'mounted');
      return;
    }
    const url = new URL(location);
    url.searchParams.set('digest', digest);
    await body(async (blob) => {
      const stream = ReadableStream.from(counting(blob, (n) => events?.bytes(key, n)));
      const res = await reg.send('PUT', url.toString(), { body: stream, headers: { 'Content-Type': 'application/octet-stream' }, duplex: 'half' }, `the upload of ${digest}`);
      await finish(res, `the upload of ${digest}`);
    });
    counts.uploaded++;
    events?.finished(key, 'pushed');
  };

  // The stored manifest as it came, when every blob it names can be sent as it was: a compressed one
  // kept in the blob area, an uncompressed one from the layer store (its export is byte-exact).
  let exact: Descriptor[] | undefined;
  if (docs.origin === 'received') {
    const m = parseManifest(Buffer.from(docs.manifest), `manifest of ${docs.name}`);
    const ok =
      m.layers.length === docs.layers.length &&
      m.layers.every((l, i) => (COMPRESSED_LAYER_TYPES.has(l.mediaType) ? kept.has(l.digest) : l.digest === docs.layers[i]!.diffId));
    if (ok) exact = m.layers;
  }
  let manifest: string;
  if (exact !== undefined) {
    const unique = [...new Map(exact.map((l, i) => [l.digest, { l, i }])).values()];
    events?.start(unique.map(({ l }) => ({ key: l.digest, size: l.size })));
    await pool(unique, PUSH_CONCURRENCY, async ({ l, i }) => {
      const blob = kept.get(l.digest);
      await sendKnown(l.digest, l.digest, blob?.source, (sink) => (blob !== undefined ? src.readBlob(l.digest, sink) : src.exportLayer(docs.layers[i]!.id, sink)));
    });
    manifest = docs.manifest;
  } else {
    // Gzip on the way: the digest is known only at the end, so the bytes go in a PATCH and the digest
    // with the closing PUT. zlib's gzip is deterministic (no name, mtime 0), so pushing again gives the
    // same blobs, but not the digests a pulled image had (those are kept, and pushed byte-exact above).
    events?.start(docs.layers.map((l) => ({ key: l.diffId, size: undefined })));
    const layers = await pool(docs.layers, PUSH_CONCURRENCY, async (l) => {
      let size = 0;
      let digest = '';
      await src.exportLayer(l.id, async (tar) => {
        const location = (await begin())!;
        const hash = createHash('sha256');
        async function* gzipped(): AsyncGenerator<Buffer> {
          const gz = createGzip();
          const feed = (async () => {
            for await (const c of tar) if (!gz.write(c)) await new Promise((r) => gz.once('drain', r));
            gz.end();
          })();
          feed.catch((err: unknown) => gz.destroy(err instanceof Error ? err : new Error(String(err))));
          for await (const c of gz as AsyncIterable<Buffer>) {
            hash.update(c);
            size += c.length;
            yield c;
          }
          await feed;
        }
        const body = ReadableStream.from(counting(gzipped(), (n) => events?.bytes(l.diffId, n)));
        const patch = await reg.send('PATCH', location, { body, headers: { 'Content-Type': 'application/octet-stream' }, duplex: 'half' }, `the upload of layer ${l.diffId}`);
        await patch.body?.cancel();
        const next = patch.headers.get('location');
        if (patch.status !== 202 || next === null) throw new UnavailableError(`the registry answered ${patch.status} to the upload of layer ${l.diffId}`);
        digest = `sha256:${hash.digest('hex')}`;
        const url = new URL(next, reg.base);
        url.searchParams.set('digest', digest);
        await finish(await reg.send('PUT', url.toString(), { headers: { 'Content-Length': '0' } }, `the end of the upload of ${digest}`), `the upload of ${digest}`);
      });
      counts.uploaded++;
      events?.finished(l.diffId, 'pushed');
      return { mediaType: MEDIA.dockerLayerGzip, size, digest };
    });
    manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.dockerManifest,
      config: { mediaType: MEDIA.dockerConfig, size: Buffer.byteLength(docs.config), digest: sha256(docs.config) },
      layers,
    });
  }
  const configDigest = sha256(docs.config);
  await sendKnown(configDigest, configDigest, undefined, (sink) => sink((async function* () {
    yield Buffer.from(docs.config);
  })()));
  const mediaType = (JSON.parse(manifest) as { mediaType?: unknown }).mediaType;
  const put = await reg.send('PUT', `manifests/${ref.tag}`, { body: manifest, headers: { 'Content-Type': typeof mediaType === 'string' ? mediaType : MEDIA.dockerManifest } }, `the manifest of ${refText}`);
  if (put.status !== 201) throw new UnavailableError(`the registry answered ${put.status} to the manifest of ${refText}: ${(await errorText(put)).slice(0, 300)}`);
  await put.body?.cancel();
  const digest = put.headers.get('docker-content-digest') ?? sha256(manifest);
  return { digest, compressed: exact === undefined, ...counts };
}
