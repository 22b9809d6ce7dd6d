/**
 * The control API on the wire, and its client for the CLI (#9 §6). The server (src/http/control.ts) listens
 * on TSVOL_DATA/control.sock, mode 0600; the CLI reaches the running server there, whatever TSVOL_SOCKET
 * says and wherever dockerd put the VolumeDriver socket (a managed plugin's is /run/docker/plugins/<id>/).
 * Loads node:http only: the CLI never pays for the server's modules.
 *
 *   GET  /v1/volumes                            200 VolumeInfo[]
 *   GET  /v1/volumes/{name}                     200 VolumeInfo, usage measured now
 *   GET  /v1/volumes/{name}/export[?gzip=1]     200 tar (or gzip) stream; Tsvol-Notice header when in use;
 *                                               trailer Tsvol-Result: ok, or error with Tsvol-Err
 *   POST /v1/volumes/{name}/import   body: tar  200 {name, files, bytes}
 *   POST /v1/volumes/{name}/commit[?tag=T]      200 {layer}
 *   POST /v1/volumes/{name}/clone?from=SRC      200 {name}
 *   POST /v1/volumes/{name}/resize?required=N&limit=M  200 {capacity}: bytes, grown online (#12)
 *   GET  /v1/df                                 200 DiskUsage
 *
 *   GET  /v1/layers                             200 LayerRecord[]
 *   GET  /v1/layers/history?ref=R               200 LayerRecord[], top first
 *   POST /v1/layers/import[?parent=R] body: tar 200 LayerRecord
 *   GET  /v1/layers/export?ref=R                200 tar stream, trailers as for a volume's export
 *   POST /v1/layers/tag?ref=R&name=N            200 {}
 *   POST /v1/layers/rm?ref=R                    200 {untagged, deleted}
 *   POST /v1/layers/gc                          200 {removed}
 *   POST /v1/containers/create?name=N&from=R    200 {merged}
 *   POST /v1/containers/mount?name=N            200 {merged}
 *   GET  /v1/containers/diff?name=N             200 Change[]
 *   POST /v1/containers/commit?name=N           200 LayerRecord
 *   POST /v1/containers/rm?name=N               200 {}
 *
 *   POST /v1/images/load            body: tar   200 LoadedImage[]
 *   GET  /v1/images/save?refs=JSON              200 tar stream (docker save 20.10 layout), trailers as above
 *   GET  /v1/images                             200 ImageSummary[]
 *   GET  /v1/images/inspect?ref=R               200 ImageDetails
 *   GET  /v1/images/history?ref=R               200 ImageHistoryRow[], newest first
 *   POST /v1/images/tag?ref=R&name=N            200 {}
 *   POST /v1/images/rm?ref=R                    200 {untagged}
 *   GET  /v1/images/top?ref=R                   200 {top}: the top layer's ChainID
 *   GET  /v1/images/documents?ref=R             200 ImageDocuments (manifest and config bytes, chain, kept blobs), for a push
 *   POST /v1/images/pull     body: pull stream  200 LoadedImage[] (src/images/pull-stream.ts)
 *   POST /v1/images/stored   body: StoredQuery  200 StoredAnswer: which layers and blobs the store has
 *   GET  /v1/images/blob?digest=D               200 a kept blob's bytes, trailers as for an export
 *
 * A layer's or container's name travels in the query, not the path: every string the user typed (an empty
 * one, `..`, a name with `/`) reaches the operation as typed and gets the operation's own answer, never
 * the router's.
 *
 * Errors are `{"Err": message, "code": "TSVOL_…"}` with the VolumeDriver app's status codes (src/http/app.ts),
 * and the client throws them with that code and message, as the operation would have in-process.
 * A stream that fails after its headers went out ends with the error in its trailers (an export), or the
 * connection closes: a client never takes a cut-short tar for a whole one.
 */
import http from 'node:http';
import net from 'node:net';
import { InternalError, TsvolError, UnavailableError, describeError, errnoCode, type ErrorCode } from '../errors.js';
import type { ImageDetails, ImageDocuments, ImageHistoryRow, ImageOps, ImageSummary, LoadedImage, StoredAnswer } from '../images/image-ops.js';
import type { Change, CollectedLayers, LayerOps, LayerRecord, RemovedLayers } from '../layers/layer-ops.js';
import type { VolumeInfo } from '../volumes/volume-service.js';
import type { DiskUsage, ExportOptions, ImportSummary, VolumeOps } from '../volumes/volume-ops.js';

/** Response header: the notice for a volume in use (URI-encoded). */
export const NOTICE_HEADER = 'Tsvol-Notice';
/** Trailer of a streamed reply: `ok` when the whole stream was sent. */
export const RESULT_TRAILER = 'Tsvol-Result';
/** Trailer of a streamed reply that failed: the error (URI-encoded). */
export const ERROR_TRAILER = 'Tsvol-Err';
/** Trailer of a streamed reply that failed: the error's code (`TSVOL_…`). */
export const CODE_TRAILER = 'Tsvol-Code';

/** A query string from parameters (given ones only), each URI-encoded. */
function query(params: { readonly [K in 'ref' | 'name' | 'from' | 'parent' | 'refs' | 'digest']?: string | undefined }): string {
  const parts = Object.entries(params)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`);
  return parts.length === 0 ? '' : `?${parts.join('&')}`;
}

/** The API's paths (names are URI-encoded here and decoded by the router). */
export const CONTROL_PATHS = {
  volumes: '/v1/volumes',
  volume: (name: string) => `/v1/volumes/${encodeURIComponent(name)}`,
  export: (name: string, gzip: boolean) => `/v1/volumes/${encodeURIComponent(name)}/export${gzip ? '?gzip=1' : ''}`,
  import: (name: string) => `/v1/volumes/${encodeURIComponent(name)}/import`,
  commit: (name: string, tag?: string) => `/v1/volumes/${encodeURIComponent(name)}/commit${tag === undefined ? '' : `?tag=${encodeURIComponent(tag)}`}`,
  clone: (from: string, name: string) => `/v1/volumes/${encodeURIComponent(name)}/clone?from=${encodeURIComponent(from)}`,
  resize: (name: string, required: number, limit: number) => `/v1/volumes/${encodeURIComponent(name)}/resize?required=${required}&limit=${limit}`,
  df: '/v1/df',
  layers: '/v1/layers',
  layerHistory: (ref: string) => `/v1/layers/history${query({ ref })}`,
  layerImport: (parent: string | undefined) => `/v1/layers/import${query({ parent })}`,
  layerExport: (ref: string) => `/v1/layers/export${query({ ref })}`,
  layerTag: (ref: string, name: string) => `/v1/layers/tag${query({ ref, name })}`,
  layerRm: (ref: string) => `/v1/layers/rm${query({ ref })}`,
  layerGc: '/v1/layers/gc',
  containerCreate: (name: string, from: string) => `/v1/containers/create${query({ name, from })}`,
  container: (verb: 'mount' | 'diff' | 'commit' | 'rm', name: string) => `/v1/containers/${verb}${query({ name })}`,
  images: '/v1/images',
  imageLoad: '/v1/images/load',
  imageSave: (refs: readonly string[]) => `/v1/images/save${query({ refs: JSON.stringify(refs) })}`,
  imageInspect: (ref: string) => `/v1/images/inspect${query({ ref })}`,
  imageHistory: (ref: string) => `/v1/images/history${query({ ref })}`,
  imageTag: (ref: string, name: string) => `/v1/images/tag${query({ ref, name })}`,
  imageRm: (ref: string) => `/v1/images/rm${query({ ref })}`,
  imageTop: (ref: string) => `/v1/images/top${query({ ref })}`,
  imageDocuments: (ref: string) => `/v1/images/documents${query({ ref })}`,
  imagePull: '/v1/images/pull',
  imageStored: '/v1/images/stored',
  imageBlob: (digest: string) => `/v1/images/blob${query({ digest })}`,
} as const;

const CODES = new Set<ErrorCode>(['TSVOL_INVALID_ARGUMENT', 'TSVOL_NOT_FOUND', 'TSVOL_CONFLICT', 'TSVOL_IN_USE', 'TSVOL_OUT_OF_RANGE', 'TSVOL_UNAVAILABLE', 'TSVOL_INTERNAL']);

/** The error a `{Err, code}` reply carries, with its kind. */
function replyError(status: number, raw: string): TsvolError {
  let body: { Err?: unknown; code?: unknown } = {};
  try {
    body = JSON.parse(raw) as typeof body;
  } catch (err) {
    return new InternalError(`the tsvol server answered ${status} without a JSON error (${describeError(err)}): ${raw.slice(0, 200)}`);
  }
  const message = typeof body.Err === 'string' ? body.Err : `the tsvol server answered ${status}`;
  const code = typeof body.code === 'string' && CODES.has(body.code as ErrorCode) ? (body.code as ErrorCode) : 'TSVOL_INTERNAL';
  return new TsvolError(code, message);
}

/** A connection the server closed under us: say so, and where to look. */
function connectionLost(err: unknown): unknown {
  const code = errnoCode(err);
  if (code === 'ECONNRESET' || code === 'EPIPE' || describeError(err) === 'aborted') {
    return new UnavailableError(`the tsvol server closed the connection (${code ?? 'aborted'}); see its log`, { cause: err });
  }
  return err;
}

async function readText(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * True if a server accepts connections on `socket`; false if none listens there (no file, or a file left
 * by a server that is gone). Anything else (EACCES: not root) is an error naming the socket.
 */
export function controlReachable(socket: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', (err) => {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ECONNREFUSED') resolve(false);
      else reject(new UnavailableError(`cannot reach the tsvol server at ${socket}: ${code ?? describeError(err)}${code === 'EACCES' ? '; run tsvol as root' : ''}`, { cause: err }));
    });
  });
}

/**
 * The operations the control API carries: what the server serves (src/http/control.ts), what this client
 * offers, and what the CLI runs itself over src/state.ts when no server runs.
 */
export interface ControlOps {
  readonly volumes: VolumeOps;
  readonly layers: LayerOps;
  readonly images: ImageOps;
}

/** The control API's client on `socket`. */
export function createControlClient(socket: string): ControlOps {
  function send(method: string, path: string, headers: http.OutgoingHttpHeaders = {}): http.ClientRequest {
    return http.request({ socketPath: socket, method, path, headers, agent: false });
  }

  /** Parses a JSON reply, or throws the error a non-2xx reply carries. */
  function decode<T>(res: http.IncomingMessage, raw: string, what: string): T {
    if ((res.statusCode ?? 0) >= 300) throw replyError(res.statusCode ?? 0, raw);
    try {
      return JSON.parse(raw) as T;
    } catch (err) {
      throw new InternalError(`the tsvol server's reply to ${what} is not JSON: ${describeError(err)}`);
    }
  }

  /** A request without a body whose reply is JSON; a non-2xx reply throws its error. */
  function call<T>(method: string, path: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const req = send(method, path);
      req.once('response', (res) => {
        readText(res).then((raw) => {
          try {
            resolve(decode<T>(res, raw, `${method} ${path}`));
          } catch (err) {
            reject(err);
          }
        }, (err: unknown) => reject(connectionLost(err)));
      });
      req.once('error', (err) => reject(connectionLost(err)));
      req.end();
    });
  }

  /**
   * A request whose body is `input` (a tar) and whose reply is JSON. The server may answer before the upload
   * ends (a refused name, parent or archive): sending stops then and the request is ended, which the server
   * waits for before it closes (src/http/control.ts replyJson), so the answer is read, never an EPIPE.
   */
  function upload<T>(path: string, input: AsyncIterable<Buffer>, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      let answered = false;
      let wake: (() => void) | undefined;
      const req = send('POST', path, { 'Content-Type': 'application/x-tar' });
      req.once('response', (res) => {
        answered = true;
        wake?.();
        readText(res).then(
          (raw) => {
            req.destroy();
            try {
              resolve(decode<T>(res, raw, what));
            } catch (err) {
              reject(err);
            }
          },
          (err: unknown) => reject(connectionLost(err)),
        );
      });
      req.on('error', (err) => {
        if (!answered) reject(connectionLost(err));
      });
      req.on('drain', () => wake?.());
      req.on('close', () => wake?.());
      (async () => {
        for await (const chunk of input) {
          if (answered || req.destroyed) break;
          if (!req.write(chunk)) {
            await new Promise<void>((r) => {
              wake = r;
            });
            wake = undefined;
          }
        }
        if (!req.destroyed) req.end();
      })().catch((err: unknown) => {
        // The input failed (an unreadable file): that is the error, and the upload is abandoned.
        req.destroy();
        if (!answered) reject(connectionLost(err));
      });
    });
  }

  /** Sends a GET whose reply is a stream; a non-2xx reply throws its error before any of the stream. */
  async function download(path: string): Promise<http.IncomingMessage> {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = send('GET', path);
      req.once('response', resolve);
      req.once('error', (err) => reject(connectionLost(err)));
      req.end();
    });
    if ((res.statusCode ?? 0) >= 300) throw replyError(res.statusCode ?? 0, await readText(res));
    return res;
  }

  /**
   * The body of a streamed reply, failing unless its trailer says the whole stream was sent. An error the
   * server put in the trailers is thrown with its code and message, as the operation threw it.
   */
  async function* checked(res: http.IncomingMessage, what: string): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of res) yield chunk as Buffer;
    } catch (err) {
      throw new UnavailableError(`${what} was cut short: ${describeError(connectionLost(err))}`, { cause: err });
    } finally {
      // The consumer stopped early (an output error): closing the connection tells the server to stop.
      if (!res.complete) res.destroy();
    }
    if (res.trailers[RESULT_TRAILER.toLowerCase()] !== 'ok') {
      const e = res.trailers[ERROR_TRAILER.toLowerCase()];
      if (e === undefined) throw new InternalError(`${what} failed: the stream ended without its result; see the server log`);
      const code = res.trailers[CODE_TRAILER.toLowerCase()];
      throw new TsvolError(code !== undefined && CODES.has(code as ErrorCode) ? (code as ErrorCode) : 'TSVOL_INTERNAL', decodeURIComponent(e));
    }
  }

  const volumes: VolumeOps = {
    ls: () => call<VolumeInfo[]>('GET', CONTROL_PATHS.volumes),
    inspect: (name) => call<VolumeInfo>('GET', CONTROL_PATHS.volume(name)),
    async commit(name, opts) {
      return (await call<{ layer: string }>('POST', CONTROL_PATHS.commit(name, opts.tag))).layer;
    },
    async clone(from, name) {
      await call<{ name: string }>('POST', CONTROL_PATHS.clone(from, name));
    },
    async resize(name, range) {
      return (await call<{ capacity: number }>('POST', CONTROL_PATHS.resize(name, range.required, range.limit))).capacity;
    },
    df: () => call<DiskUsage>('GET', CONTROL_PATHS.df),
    async export(name: string, opts: ExportOptions, sink) {
      const res = await download(CONTROL_PATHS.export(name, opts.gzip === true));
      const notice = res.headers[NOTICE_HEADER.toLowerCase()];
      await sink(checked(res, `export of volume "${name}"`), typeof notice === 'string' ? decodeURIComponent(notice) : undefined);
    },
    import: (name, input) => upload<ImportSummary>(CONTROL_PATHS.import(name), input, `the import of "${name}"`),
  };

  const layers: LayerOps = {
    importLayer: (input, parent) => upload<LayerRecord>(CONTROL_PATHS.layerImport(parent), input, 'the layer import'),
    async exportLayer(ref, sink) {
      await sink(checked(await download(CONTROL_PATHS.layerExport(ref)), `export of layer "${ref}"`));
    },
    listLayers: () => call<LayerRecord[]>('GET', CONTROL_PATHS.layers),
    history: (ref) => call<LayerRecord[]>('GET', CONTROL_PATHS.layerHistory(ref)),
    async tag(ref, name) {
      await call<Record<string, never>>('POST', CONTROL_PATHS.layerTag(ref, name));
    },
    removeLayer: (ref) => call<RemovedLayers>('POST', CONTROL_PATHS.layerRm(ref)),
    gc: () => call<CollectedLayers>('POST', CONTROL_PATHS.layerGc),
    async createContainer(name, from) {
      return (await call<{ merged: string }>('POST', CONTROL_PATHS.containerCreate(name, from))).merged;
    },
    async mountContainer(name) {
      return (await call<{ merged: string }>('POST', CONTROL_PATHS.container('mount', name))).merged;
    },
    diffContainer: (name) => call<Change[]>('GET', CONTROL_PATHS.container('diff', name)),
    commitContainer: (name) => call<LayerRecord>('POST', CONTROL_PATHS.container('commit', name)),
    async removeContainer(name) {
      await call<Record<string, never>>('POST', CONTROL_PATHS.container('rm', name));
    },
  };

  const images: ImageOps = {
    load: (input) => upload<LoadedImage[]>(CONTROL_PATHS.imageLoad, input, 'the image load'),
    async save(refs, sink) {
      await sink(checked(await download(CONTROL_PATHS.imageSave(refs)), `save of ${refs.join(', ')}`));
    },
    list: () => call<ImageSummary[]>('GET', CONTROL_PATHS.images),
    inspect: (ref) => call<ImageDetails>('GET', CONTROL_PATHS.imageInspect(ref)),
    history: (ref) => call<ImageHistoryRow[]>('GET', CONTROL_PATHS.imageHistory(ref)),
    async tag(ref, name) {
      await call<Record<string, never>>('POST', CONTROL_PATHS.imageTag(ref, name));
    },
    remove: (ref) => call<{ untagged: string[] }>('POST', CONTROL_PATHS.imageRm(ref)),
    async topLayer(ref) {
      return (await call<{ top: string }>('GET', CONTROL_PATHS.imageTop(ref))).top;
    },
    documents: (ref) => call<ImageDocuments>('GET', CONTROL_PATHS.imageDocuments(ref)),
    pull: (input) => upload<LoadedImage[]>(CONTROL_PATHS.imagePull, input, 'the image pull'),
    stored: (q) => upload<StoredAnswer>(CONTROL_PATHS.imageStored, (async function* () {
      yield Buffer.from(JSON.stringify(q));
    })(), 'the stored-layers query'),
    async readBlob(digest, sink) {
      await sink(checked(await download(CONTROL_PATHS.imageBlob(digest)), `blob ${digest}`));
    },
  };

  return { volumes, layers, images };
}
