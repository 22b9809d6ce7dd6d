/**
 * The control API's server side (#9 §6, #10): the routes the CLI calls on TSVOL_DATA/control.sock, served
 * by the same process as the VolumeDriver socket, so one process owns the state. The wire is described in
 * src/http/control-client.ts; each route is decode → call src/volumes/volume-ops.ts or
 * src/layers/layer-ops.ts → encode, and the same operations run in the CLI only while it holds the server
 * lock. Errors are `{Err, code}` with the VolumeDriver app's status codes. One log line per request: api,
 * op, volume / layer / container, ms, status, code.
 */
import type http from 'node:http';
import { pipeline } from 'node:stream/promises';
import express, { type NextFunction, type Request, type Response } from 'express';
import { InvalidArgumentError, TsvolError, describeError } from '../errors.js';
import type { Logger } from '../log.js';
import { STATUS } from './app.js';
import { CODE_TRAILER, ERROR_TRAILER, NOTICE_HEADER, RESULT_TRAILER, type ControlOps } from './control-client.js';

/** The control API's listener, and a way to wait for its requests to finish (shutdown, before the store closes). */
export interface ControlApi {
  readonly listener: http.RequestListener;
  /** Resolves when no request is being handled (each one releases its holds before it settles). */
  settled(): Promise<void>;
}

/** How long an answered upload's client may go on sending before the connection is closed on it. */
const DRAIN_MS = 30_000;

/**
 * Sends a JSON reply. When the request's body has not all arrived (an upload refused before its end, or
 * bytes after a tar's end-of-archive), the reply goes out at once but the connection stays open until the
 * body ends (read and dropped): closing it would make the client's next write fail (EPIPE), and the client
 * could lose the reply that says why. A client that answers the reply by ending its upload (ours does) closes
 * at once; one that does not is cut off after DRAIN_MS.
 */
function replyJson(res: http.ServerResponse, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json) });
  const req = res.req;
  if (req.complete || req.destroyed) {
    res.end(json);
    return;
  }
  res.write(json);
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    res.end();
  };
  const timer = setTimeout(() => {
    end();
    req.destroy();
  }, DRAIN_MS);
  req.once('end', end);
  req.once('close', end);
  req.resume();
}

/**
 * A request's body for an operation that reads it. Stopping early (a refused archive) leaves the request
 * open, unlike iterating the request itself, which destroys it and with it the connection the reply needs.
 */
function bodyOf(req: Request): AsyncIterable<Buffer> {
  return { [Symbol.asyncIterator]: () => req.iterator({ destroyOnReturn: false }) as AsyncIterator<Buffer> };
}

/** The query parameters the API reads (constant keys: a request's own keys are never looked up). */
type QueryKey = 'gzip' | 'tag' | 'from' | 'ref' | 'name' | 'parent' | 'refs' | 'digest' | 'required' | 'limit';

/** An optional query parameter given at most once. */
function queryParam(req: Request, key: QueryKey): string | undefined {
  const v = (req.query as Record<string, unknown>)[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new InvalidArgumentError(`query parameter ${key} must be given once, as a string`);
  return v;
}

/** A query parameter the route needs (the CLI always sends it: missing means another client's mistake). */
function requiredParam(req: Request, key: QueryKey): string {
  const v = queryParam(req, key);
  if (v === undefined) throw new InvalidArgumentError(`${req.path} needs ?${key}=`);
  return v;
}

/** A query parameter the route needs that is a number of bytes (decimal digits only). */
function bytesParam(req: Request, key: QueryKey): number {
  const v = requiredParam(req, key);
  const n = Number(v);
  if (!/^\d{1,16}$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`?${key}= must be a number of bytes, not ${JSON.stringify(v)}`);
  return n;
}

/** The most bytes of a JSON request body (a pull's stored-layers query: a few KiB per hundred layers). */
const MAX_JSON_BODY = 1 << 20;

/** A request's body as JSON (at most MAX_JSON_BODY bytes). */
async function readJsonBody(req: Request): Promise<unknown> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_JSON_BODY) throw new InvalidArgumentError(`request body over ${MAX_JSON_BODY} bytes`);
    chunks.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(`request body is not JSON: ${describeError(err)}`);
  }
}

/** What a request is about, for its log line: a volume (path), a layer (?ref=) or a container (?name=). */
function subject(req: Request): Record<string, string | undefined> {
  if (req.params.name !== undefined) return { volume: String(req.params.name) };
  const q = req.query as Record<string, unknown>;
  const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  if (req.path.startsWith('/v1/containers/')) return { container: str(q.name) };
  if (req.path.startsWith('/v1/layers/')) return { layer: str(q.ref) };
  if (req.path.startsWith('/v1/images/')) return { image: str(q.ref) ?? str(q.refs) };
  return {};
}

/**
 * Sends `stream` as a 200 reply with `headers`, then the trailer `ok`. Rejects when the client goes away,
 * which ends the producer (and releases what it holds); an error of the producer rejects too, and serve()
 * puts it in the trailers.
 */
async function streamReply(res: Response, stream: AsyncIterable<Buffer>, headers: http.OutgoingHttpHeaders): Promise<void> {
  res.writeHead(200, { ...headers, Trailer: `${RESULT_TRAILER}, ${ERROR_TRAILER}, ${CODE_TRAILER}` });
  await pipeline(stream, res, { end: false });
  res.addTrailers({ [RESULT_TRAILER]: 'ok' });
  res.end();
}

/** The routes of the control API over `ops`. */
export function createControlApi(ops: ControlOps, log: Logger): ControlApi {
  const { volumes, layers, images } = ops;
  const active = new Set<Promise<void>>();
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');

  /**
   * Wraps a handler: errors become `{Err, code}` (or, once a stream has started, its error trailer or a
   * closed connection), and every request is logged once.
   */
  function serve(op: string, handler: (req: Request, res: Response) => Promise<void>) {
    return (req: Request, res: Response): Promise<void> => {
      const started = process.hrtime.bigint();
      const job = (async () => {
        let code: string | undefined;
        let aborted = false;
        try {
          await handler(req, res);
        } catch (err) {
          aborted = res.destroyed || req.destroyed;
          const status = err instanceof TsvolError ? STATUS[err.code] : 500;
          code = err instanceof TsvolError ? err.code : 'TSVOL_INTERNAL';
          if (!res.headersSent) {
            replyJson(res, status, { Err: describeError(err), code });
          } else if (!res.writableEnded && !res.destroyed) {
            res.addTrailers({ [RESULT_TRAILER]: 'error', [ERROR_TRAILER]: encodeURIComponent(describeError(err)), [CODE_TRAILER]: code });
            res.end();
          }
          // A client that went away mid-stream is not a server fault.
          if (status >= 500 && !aborted) log.error({ api: 'control', op, err: describeError(err), stack: err instanceof Error ? err.stack : undefined }, 'request failed');
        } finally {
          log.info(
            { api: 'control', op, ...subject(req), ms: Number(process.hrtime.bigint() - started) / 1e6, status: res.statusCode, code, aborted: aborted || undefined },
            'request',
          );
        }
      })();
      active.add(job);
      return job.finally(() => active.delete(job));
    };
  }

  const name = (req: Request): string => String(req.params.name ?? '');

  app.get(
    '/v1/volumes',
    serve('ls', async (_req, res) => replyJson(res, 200, await volumes.ls())),
  );
  app.get(
    '/v1/volumes/:name',
    serve('inspect', async (req, res) => replyJson(res, 200, await volumes.inspect(name(req)))),
  );
  app.get(
    '/v1/volumes/:name/export',
    serve('export', async (req, res) => {
      const gzip = queryParam(req, 'gzip') === '1';
      // The stream rejects when the client goes away, which ends the export and releases its hold.
      await volumes.export(name(req), { gzip }, (archive, notice) =>
        streamReply(res, archive, {
          'Content-Type': gzip ? 'application/gzip' : 'application/x-tar',
          ...(notice === undefined ? {} : { [NOTICE_HEADER]: encodeURIComponent(notice) }),
        }),
      );
    }),
  );
  app.post(
    '/v1/volumes/:name/import',
    serve('import', async (req, res) => replyJson(res, 200, await volumes.import(name(req), bodyOf(req)))),
  );
  app.post(
    '/v1/volumes/:name/commit',
    serve('commit', async (req, res) => {
      const tag = queryParam(req, 'tag');
      replyJson(res, 200, { layer: await volumes.commit(name(req), tag === undefined ? {} : { tag }) });
    }),
  );
  app.post(
    '/v1/volumes/:name/clone',
    serve('clone', async (req, res) => {
      const from = queryParam(req, 'from');
      if (from === undefined) throw new InvalidArgumentError('clone needs ?from=<source volume>');
      await volumes.clone(from, name(req));
      replyJson(res, 200, { name: name(req) });
    }),
  );
  app.post(
    '/v1/volumes/:name/resize',
    serve('resize', async (req, res) => {
      const capacity = await volumes.resize(name(req), { required: bytesParam(req, 'required'), limit: bytesParam(req, 'limit') });
      replyJson(res, 200, { capacity });
    }),
  );
  app.get(
    '/v1/df',
    serve('df', async (_req, res) => replyJson(res, 200, await volumes.df())),
  );

  app.get(
    '/v1/layers',
    serve('layer.ls', async (_req, res) => replyJson(res, 200, await layers.listLayers())),
  );
  app.get(
    '/v1/layers/history',
    serve('layer.history', async (req, res) => replyJson(res, 200, await layers.history(requiredParam(req, 'ref')))),
  );
  app.post(
    '/v1/layers/import',
    serve('layer.import', async (req, res) => replyJson(res, 200, await layers.importLayer(bodyOf(req), queryParam(req, 'parent')))),
  );
  app.get(
    '/v1/layers/export',
    serve('layer.export', async (req, res) => {
      await layers.exportLayer(requiredParam(req, 'ref'), (tar) => streamReply(res, tar, { 'Content-Type': 'application/x-tar' }));
    }),
  );
  app.post(
    '/v1/layers/tag',
    serve('layer.tag', async (req, res) => {
      await layers.tag(requiredParam(req, 'ref'), requiredParam(req, 'name'));
      replyJson(res, 200, {});
    }),
  );
  app.post(
    '/v1/layers/rm',
    serve('layer.rm', async (req, res) => replyJson(res, 200, await layers.removeLayer(requiredParam(req, 'ref')))),
  );
  app.post(
    '/v1/layers/gc',
    serve('layer.gc', async (_req, res) => replyJson(res, 200, await layers.gc())),
  );
  app.post(
    '/v1/containers/create',
    serve('container.create', async (req, res) => {
      replyJson(res, 200, { merged: await layers.createContainer(requiredParam(req, 'name'), requiredParam(req, 'from')) });
    }),
  );
  app.post(
    '/v1/containers/mount',
    serve('container.mount', async (req, res) => replyJson(res, 200, { merged: await layers.mountContainer(requiredParam(req, 'name')) })),
  );
  app.get(
    '/v1/containers/diff',
    serve('container.diff', async (req, res) => replyJson(res, 200, await layers.diffContainer(requiredParam(req, 'name')))),
  );
  app.post(
    '/v1/containers/commit',
    serve('container.commit', async (req, res) => replyJson(res, 200, await layers.commitContainer(requiredParam(req, 'name')))),
  );
  app.post(
    '/v1/containers/rm',
    serve('container.rm', async (req, res) => {
      await layers.removeContainer(requiredParam(req, 'name'));
      replyJson(res, 200, {});
    }),
  );
  app.get(
    '/v1/images',
    serve('image.ls', async (_req, res) => replyJson(res, 200, await images.list())),
  );
  app.post(
    '/v1/images/load',
    serve('image.load', async (req, res) => replyJson(res, 200, await images.load(bodyOf(req)))),
  );
  app.post(
    '/v1/images/pull',
    serve('image.pull', async (req, res) => replyJson(res, 200, await images.pull(req))),
  );
  app.post(
    '/v1/images/stored',
    serve('image.stored', async (req, res) => {
      const q = (await readJsonBody(req)) as { diffIds?: unknown; blobs?: unknown } | null;
      const list = (v: unknown): string[] => (Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : []);
      replyJson(res, 200, await images.stored({ diffIds: list(q?.diffIds), blobs: list(q?.blobs) }));
    }),
  );
  app.get(
    '/v1/images/blob',
    serve('image.blob', async (req, res) => {
      await images.readBlob(requiredParam(req, 'digest'), (blob) => streamReply(res, blob, { 'Content-Type': 'application/octet-stream' }));
    }),
  );
  app.get(
    '/v1/images/save',
    serve('image.save', async (req, res) => {
      let refs: unknown;
      try {
        refs = JSON.parse(requiredParam(req, 'refs'));
      } catch (err) {
        throw new InvalidArgumentError(`?refs= must be a JSON list of image references: ${describeError(err)}`);
      }
      if (!Array.isArray(refs) || !refs.every((r) => typeof r === 'string')) throw new InvalidArgumentError('?refs= must be a JSON list of image references');
      await images.save(refs as string[], (tar) => streamReply(res, tar, { 'Content-Type': 'application/x-tar' }));
    }),
  );
  app.get(
    '/v1/images/inspect',
    serve('image.inspect', async (req, res) => replyJson(res, 200, await images.inspect(requiredParam(req, 'ref')))),
  );
  app.get(
    '/v1/images/history',
    serve('image.history', async (req, res) => replyJson(res, 200, await images.history(requiredParam(req, 'ref')))),
  );
  app.get(
    '/v1/images/top',
    serve('image.top', async (req, res) => replyJson(res, 200, { top: await images.topLayer(requiredParam(req, 'ref')) })),
  );
  app.get(
    '/v1/images/documents',
    serve('image.documents', async (req, res) => replyJson(res, 200, await images.documents(requiredParam(req, 'ref')))),
  );
  app.post(
    '/v1/images/tag',
    serve('image.tag', async (req, res) => {
      await images.tag(requiredParam(req, 'ref'), requiredParam(req, 'name'));
      replyJson(res, 200, {});
    }),
  );
  app.post(
    '/v1/images/rm',
    serve('image.rm', async (req, res) => replyJson(res, 200, await images.remove(requiredParam(req, 'ref')))),
  );

  app.use((req: Request, res: Response) => {
    replyJson(res, 404, { Err: `unknown endpoint ${req.method} ${req.path} of the tsvol control API`, code: 'TSVOL_NOT_FOUND' });
  });
  // Express 5 error handler (4 arguments): anything thrown outside a route.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    log.error({ api: 'control', err: describeError(err) }, 'unhandled request error');
    if (!res.headersSent) replyJson(res, 500, { Err: `internal error: ${describeError(err)}`, code: 'TSVOL_INTERNAL' });
  });

  return {
    listener: app,
    async settled() {
      while (active.size > 0) await Promise.allSettled([...active]);
    },
  };
}
