/**
 * The counting proxy of test/helpers/registry.ts, in a process of its own (the tests call docker and
 * tsvol with spawnSync, which would stall a proxy in the test's own event loop). Usage:
 *   node --import tsx registry-proxy.ts LISTEN_PORT UPSTREAM_PORT LOG_FILE
 * Appends one JSON line per request to LOG_FILE once its reply is sent: {method, path, query, range,
 * status}. `POST /__cut?digest=D&after=N&times=K` (answered here, not forwarded) cuts the next K GETs of
 * blob D after N bytes of their body, destroying the connection as a reset would; `POST /__delay?ms=N`
 * holds each blob GET N ms before forwarding it (so that downloads at once overlap visibly). Each log
 * line has the request's start and end (ms).
 */
import fs from 'node:fs';
import http from 'node:http';

const [listen, upstream, log] = process.argv.slice(2);
if (listen === undefined || upstream === undefined || log === undefined) throw new Error('usage: registry-proxy.ts LISTEN_PORT UPSTREAM_PORT LOG_FILE');
const cuts = new Map<string, { after: number; times: number }>();
/** Milliseconds each blob GET waits before it is forwarded (`POST /__delay?ms=N`): makes overlap visible. */
let delay = 0;

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  if (url.pathname === '/__cut') {
    cuts.set(url.searchParams.get('digest') ?? '', { after: Number(url.searchParams.get('after')), times: Number(url.searchParams.get('times')) });
    res.end('ok');
    return;
  }
  if (url.pathname === '/__delay') {
    delay = Number(url.searchParams.get('ms'));
    res.end('ok');
    return;
  }
  let status = 0;
  const start = Date.now();
  res.on('close', () => {
    fs.appendFileSync(log, `${JSON.stringify({ method: req.method, path: url.pathname, query: url.search, range: req.headers.range, status, start, end: Date.now() })}\n`);
  });
  const blobGet = req.method === 'GET' && /\/blobs\/sha256:/.test(url.pathname);
  setTimeout(() => forward(req, res, url, (s) => (status = s)), blobGet ? delay : 0);
});

function forward(req: http.IncomingMessage, res: http.ServerResponse, url: URL, onStatus: (s: number) => void): void {
  let status = 0;
  const up = http.request({ host: '127.0.0.1', port: Number(upstream), method: req.method, path: req.url, headers: req.headers }, (ur) => {
    status = ur.statusCode ?? 0;
    onStatus(status);
    // A cut destroys both sides on purpose: their errors are expected.
    ur.on('error', () => undefined);
    res.on('error', () => undefined);
    res.writeHead(ur.statusCode ?? 502, ur.headers);
    const digest = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname)?.[1];
    const cut = req.method === 'GET' && digest !== undefined ? cuts.get(digest) : undefined;
    if (cut !== undefined && cut.times > 0) {
      cut.times--;
      if (cut.after === 0) {
        // Headers, then the connection goes: no byte of the body.
        res.flushHeaders();
        ur.destroy();
        setImmediate(() => res.socket?.destroy());
        return;
      }
      let sent = 0;
      ur.on('data', (c: Buffer) => {
        if (sent >= cut.after) return;
        const part = c.subarray(0, cut.after - sent);
        sent += part.length;
        if (sent >= cut.after) {
          ur.destroy();
          // Once these bytes are out, the connection goes (mid-body, as a reset).
          res.write(part, () => res.socket?.destroy());
        } else res.write(part);
      });
      ur.on('end', () => res.end());
      return;
    }
    ur.pipe(res);
  });
  up.on('error', () => res.socket?.destroy());
  req.on('error', () => undefined);
  req.pipe(up);
}
process.on('uncaughtException', (err) => {
  process.stderr.write(`registry proxy: ${err.stack ?? String(err)}\n`);
});
server.listen(Number(listen), '127.0.0.1', () => process.stdout.write('listening\n'));
