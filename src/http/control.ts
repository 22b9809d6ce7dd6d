/**
 * The control API's server side (#9 §6): the routes the CLI calls on TSVOL_DATA/control.sock, served by the
 * same process as the VolumeDriver socket, so one process owns the state. The wire is described in
 * src/http/control-client.ts; each route is decode → call src/volumes/volume-ops.ts → encode, and the
 * same operations run in the CLI only while it holds the server lock. Errors are `{Err, code}` with the
 * VolumeDriver app's status codes. One log line per request: api, op, volume, ms, status, code.
 */
import type http from 'node:http';
import { pipeline } from 'node:stream/promises';
import express, { type NextFunction, type Request, type Response } from 'express';
import { InvalidArgumentError, TsvolError, describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { VolumeOps } from '../volumes/volume-ops.js';
import { STATUS } from './app.js';
import { ERROR_TRAILER, NOTICE_HEADER, RESULT_TRAILER } from './control-client.js';

/** The control API's listener, and a way to wait for its requests to finish (shutdown, before the store closes). */
export interface ControlApi {
  readonly listener: http.RequestListener;
  /** Resolves when no request is being handled (each one releases its holds before it settles). */
  settled(): Promise<void>;
}

function replyJson(res: http.ServerResponse, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json) });
  res.end(json);
}

/** An optional query parameter given at most once. */
function queryParam(req: Request, key: string): string | undefined {
  const v = (req.query as Record<string, unknown>)[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new InvalidArgumentError(`query parameter ${key} must be given once, as a string`);
  return v;
}

/** The routes of the control API over `ops`. */
export function createControlApi(ops: VolumeOps, log: Logger): ControlApi {
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
            res.addTrailers({ [RESULT_TRAILER]: 'error', [ERROR_TRAILER]: encodeURIComponent(describeError(err)) });
            res.end();
          }
          // A client that went away mid-stream is not a server fault.
          if (status >= 500 && !aborted) log.error({ api: 'control', op, err: describeError(err), stack: err instanceof Error ? err.stack : undefined }, 'request failed');
        } finally {
          log.info(
            { api: 'control', op, volume: req.params.name === undefined ? undefined : String(req.params.name), ms: Number(process.hrtime.bigint() - started) / 1e6, status: res.statusCode, code, aborted: aborted || undefined },
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
    serve('ls', async (_req, res) => replyJson(res, 200, await ops.ls())),
  );
  app.get(
    '/v1/volumes/:name',
    serve('inspect', async (req, res) => replyJson(res, 200, await ops.inspect(name(req)))),
  );
  app.get(
    '/v1/volumes/:name/export',
    serve('export', async (req, res) => {
      const gzip = queryParam(req, 'gzip') === '1';
      await ops.export(name(req), { gzip }, async (archive, notice) => {
        res.writeHead(200, {
          'Content-Type': gzip ? 'application/gzip' : 'application/x-tar',
          Trailer: `${RESULT_TRAILER}, ${ERROR_TRAILER}`,
          ...(notice === undefined ? {} : { [NOTICE_HEADER]: encodeURIComponent(notice) }),
        });
        // Rejects when the client goes away, which ends the export and releases its hold.
        await pipeline(archive, res, { end: false });
        res.addTrailers({ [RESULT_TRAILER]: 'ok' });
        res.end();
      });
    }),
  );
  app.post(
    '/v1/volumes/:name/import',
    serve('import', async (req, res) => replyJson(res, 200, await ops.import(name(req), req))),
  );
  app.post(
    '/v1/volumes/:name/commit',
    serve('commit', async (req, res) => {
      const tag = queryParam(req, 'tag');
      replyJson(res, 200, { layer: await ops.commit(name(req), tag === undefined ? {} : { tag }) });
    }),
  );
  app.post(
    '/v1/volumes/:name/clone',
    serve('clone', async (req, res) => {
      const from = queryParam(req, 'from');
      if (from === undefined) throw new InvalidArgumentError('clone needs ?from=<source volume>');
      await ops.clone(from, name(req));
      replyJson(res, 200, { name: name(req) });
    }),
  );
  app.get(
    '/v1/df',
    serve('df', async (_req, res) => replyJson(res, 200, await ops.df())),
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
