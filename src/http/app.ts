/**
 * The Express app and its Unix-socket listener. The only place that turns errors into `{"Err": ...}`
 * replies: a bad body, an unknown endpoint or a failed call never produces a stack trace or kills the
 * server. One log line per request at debug (op, volume, mount id, ms, status, code); at info only the
 * lines dockerd's log needs (see requestLevel).
 */
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import { ConflictError, TsvolError, describeError, errnoCode, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { Route } from './protocol.js';

/** The media type Docker's plugin protocol uses in replies. */
export const PLUGIN_MEDIA_TYPE = 'application/vnd.docker.plugins.v1.2+json';
/** Largest request body accepted; real requests are a few hundred bytes. */
export const MAX_BODY_BYTES = 1 << 20;

/** The HTTP status of each error kind (the VolumeDriver and control APIs alike). */
export const STATUS: Readonly<Record<ErrorCode, number>> = {
  TSVOL_INVALID_ARGUMENT: 400,
  TSVOL_NOT_FOUND: 404,
  TSVOL_CONFLICT: 409,
  TSVOL_IN_USE: 409,
  TSVOL_OUT_OF_RANGE: 400,
  TSVOL_UNAVAILABLE: 503,
  TSVOL_INTERNAL: 500,
};

function reply(res: http.ServerResponse, status: number, body: Record<string, unknown> | string): void {
  const json = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': PLUGIN_MEDIA_TYPE, 'Content-Length': Buffer.byteLength(json) });
  res.end(json);
}

class BadRequest extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Reads the body whatever its Content-Type (dockerd sends none), up to MAX_BODY_BYTES. */
function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new BadRequest(413, `request body exceeds ${MAX_BODY_BYTES} bytes`));
        req.removeAllListeners('data');
        req.resume();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function decode(route: Route, raw: Buffer): unknown {
  let value: unknown = null;
  if (raw.length > 0) {
    try {
      value = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new BadRequest(400, `${route.path}: body is not valid JSON (${describeError(err)})`);
    }
  }
  const parsed = route.schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
    throw new BadRequest(400, `${route.path}: invalid request: ${where}${issue?.message ?? 'bad body'}`);
  }
  return parsed.data;
}

/** A successful read slower than this is logged at info as a slow request (dockerd waits on it). */
export const SLOW_REQUEST_MS = 1000;

/**
 * The protocol's reads: dockerd sends them far more often than anything else (a `docker volume rm` is six
 * Capabilities and two Gets around one Remove; an inspect is a Get) and they change nothing. #13
 */
const READ_OPS: ReadonlySet<string> = new Set(['activate', 'capabilities', 'get', 'path', 'list']);

/**
 * The level of a request's line. A managed plugin's stdout is copied line by line into dockerd's log, and
 * each line costs both processes CPU (one bench/docker.ts run, warn vs info: ~0.3 ms in the plugin and
 * ~0.3 ms in dockerd per line), so `info` (the default) keeps what an operator reads it for:
 * - every mutation (create, remove, mount, unmount, and any op this file does not know): the durable record
 *   of who changed what (dockerd logs none of them, and `docker events` keeps only recent events, in
 *   memory);
 * - every failure (a "not found" Get goes through NotFoundLines first: dockerd's probe before a Create is
 *   not a failure);
 * - a read slower than SLOW_REQUEST_MS.
 * Successful reads only at `debug`. README, Logging.
 */
export function requestLevel(op: string, code: string | undefined, ms: number): 'info' | 'debug' {
  if (code === undefined) return !READ_OPS.has(op) || ms >= SLOW_REQUEST_MS ? 'info' : 'debug';
  return 'info';
}

/** How long a "not found" Get's line waits for the Create that makes it dockerd's probe. */
export const PROBE_WINDOW_MS = 5000;
/** Most "not found" lines waiting at once; past it the oldest is written at once (memory stays bounded). */
export const PROBE_PENDING_MAX = 4096;

/**
 * The info lines of Gets answered "not found", held back until it is known whether each was dockerd's
 * probe. dockerd asks Get before every Create (DOCKER-FACTS), so most "not found" answers are followed by
 * a Create of that name within milliseconds: that line is dropped (the Create has its own, and the Get's
 * stays at debug). A "not found" no Create follows within PROBE_WINDOW_MS is written: at dockerd's start
 * it is how dockerd comes to forget a volume for good (moby's volume/service/restore.go drops from its
 * database, silently at info, every volume the driver says it does not have), and otherwise it answers a
 * user's `docker volume inspect` of a name nobody has. Names live in a Map (request keys), at most
 * PROBE_PENDING_MAX of them; flush(true) writes them all (shutdown).
 */
export class NotFoundLines {
  private readonly pending = new Map<string, { readonly at: number; readonly write: () => void }>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly windowMs = PROBE_WINDOW_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Holds back `write`, the line of a "not found" Get of `name` (a second Get of the name joins the first). */
  defer(name: string, write: () => void): void {
    if (this.pending.has(name)) return;
    this.pending.set(name, { at: this.now(), write });
    if (this.pending.size > PROBE_PENDING_MAX) this.writeFirst(1);
    this.timer ??= setInterval(() => this.flush(false), Math.min(1000, this.windowMs)).unref();
  }

  /** A Create of `name` arrived: its Gets were dockerd's probe. */
  created(name: string): void {
    this.pending.delete(name);
  }

  /** Writes the lines whose window has passed (all of them with `all`). */
  flush(all: boolean): void {
    const now = this.now();
    this.writeFirst(Infinity, all ? undefined : (at) => now - at < this.windowMs);
    if (this.pending.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Lines waiting. */
  get size(): number {
    return this.pending.size;
  }

  /**
   * Writes up to `count` lines in arrival order (a Map keeps insertion order), stopping at the first whose
   * arrival time `keep` says to keep waiting.
   */
  private writeFirst(count: number, keep?: (at: number) => boolean): void {
    for (const [name, p] of this.pending) {
      if (count-- <= 0 || keep?.(p.at)) break;
      this.pending.delete(name);
      p.write();
    }
  }
}

/** Serves one protocol call: decode → call → encode, one log line, errors as `{Err}`. */
async function serveRoute(route: Route, req: http.IncomingMessage, res: http.ServerResponse, log: Logger, inflight: { count: number }, notFound: NotFoundLines): Promise<void> {
  const started = process.hrtime.bigint();
  inflight.count++;
  let status = 200;
  let code: string | undefined;
  let body: unknown;
  try {
    body = decode(route, await readBody(req));
    reply(res, 200, await route.handle(body));
  } catch (err) {
    if (err instanceof BadRequest) {
      status = err.status;
      code = 'TSVOL_INVALID_ARGUMENT';
    } else if (err instanceof TsvolError) {
      status = STATUS[err.code];
      code = err.code;
    } else {
      status = 500;
      code = 'TSVOL_INTERNAL';
    }
    reply(res, status, { Err: describeError(err) });
    if (status >= 500) log.error({ op: route.op, code, err: describeError(err), stack: err instanceof Error ? err.stack : undefined }, 'request failed');
  } finally {
    inflight.count--;
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const b = (body ?? {}) as { Name?: string; ID?: string };
    if (route.op === 'create' && typeof b.Name === 'string') notFound.created(b.Name);
    const level = requestLevel(route.op, code, ms);
    // The level check first: a line nobody reads costs nothing to build (every call on the hot path).
    if (log.isLevelEnabled(level)) {
      const fields = { op: route.op, volume: b.Name, id: b.ID, ms, status, code };
      const msg = code === undefined && READ_OPS.has(route.op) && level === 'info' ? 'slow request' : 'request';
      if (route.op === 'get' && code === 'TSVOL_NOT_FOUND' && typeof b.Name === 'string' && !log.isLevelEnabled('debug')) {
        // Written later unless a Create of the name shows it was dockerd's probe (at debug: now, as any).
        notFound.defer(b.Name, () => log[level]({ ...fields, deferred: true }, msg));
      } else {
        log[level](fields, msg);
      }
    }
  }
}

/**
 * Builds the request listener: the Express app serving `routes`, behind a Map lookup that sends the
 * protocol's own POSTs straight to their handler. Express's router costs more than the whole of a Get or
 * Path (measured: 10.5k vs 24k calls/s at c=8 on this machine), so the hot path skips it; everything else
 * (unknown endpoints, other methods, errors) is Express's. `inflight` counts requests being handled.
 */
export function createRequestListener(
  routes: readonly Route[],
  log: Logger,
  inflight: { count: number },
  notFound: NotFoundLines = new NotFoundLines(),
): http.RequestListener {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  const byPath = new Map(routes.map((r) => [r.path, r]));
  for (const route of routes) {
    app.post(route.path, (req: Request, res: Response) => serveRoute(route, req, res, log, inflight, notFound));
  }
  app.use((req: Request, res: Response) => {
    reply(res, 404, { Err: `unknown endpoint ${req.method} ${req.path}: tsvol speaks Docker's VolumeDriver protocol` });
  });
  // Express 5 error handler (4 arguments): anything thrown outside a route.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    log.error({ err: describeError(err) }, 'unhandled request error');
    if (!res.headersSent) reply(res, 500, { Err: `internal error: ${describeError(err)}` });
  });
  return (req, res) => {
    const route = req.method === 'POST' && req.url !== undefined ? byPath.get(req.url) : undefined;
    if (route !== undefined) void serveRoute(route, req, res, log, inflight, notFound);
    else app(req, res);
  };
}

/** True if something is accepting connections on `socket`. */
function socketAlive(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/**
 * Listens on the Unix socket `socket`, created with `mode` (no instant with a wider one: the umask is set
 * around the bind). A socket file left by a dead server is replaced; a live one is refused, so two servers
 * never share a socket.
 */
export async function listenOnSocket(listener: http.RequestListener, socket: string, mode = 0o660): Promise<http.Server> {
  fs.mkdirSync(path.dirname(socket), { recursive: true });
  if (fs.existsSync(socket)) {
    if (await socketAlive(socket)) {
      throw new ConflictError(`socket ${socket} is in use by another server; stop it or set TSVOL_SOCKET`);
    }
    try {
      fs.unlinkSync(socket);
    } catch (err) {
      // ENOENT: someone removed it in between, which is what we wanted.
      if (errnoCode(err) !== 'ENOENT') throw err;
    }
  }
  const server = http.createServer(listener);
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // The bind happens synchronously inside listen(); the umask is process-wide, so it is restored at once.
    const umask = process.umask(0o777 & ~mode);
    try {
      server.listen(socket, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
  fs.chmodSync(socket, mode);
  return server;
}
