/**
 * A registry is not trusted (#9, #11). It cannot make tsvol hold more than a bound: a manifest, a config or
 * a token reply that is longer than tsvol accepts, whether its length is announced (Content-Length) or it
 * just keeps coming, is refused with a clear error as soon as the limit is passed, and its connection is
 * closed. And it cannot have the user's credentials sent in clear text: a bearer challenge whose realm is
 * not HTTP(S), or is plain HTTP to a host that is not loopback, is refused before anything is sent. The
 * registry here is a real HTTP server on 127.0.0.1 (a hostile one: the real docker-registry never sends
 * such replies), counting what it managed to send.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { resolvePull } from '../src/images/registry.js';
import { MAX_JSON } from '../src/images/spool.js';

/** What the hostile registry sends for a path: a body of `total` bytes, announced or not. */
interface Reply {
  readonly status?: number;
  readonly headers?: Record<string, string>;
  /** Bytes of body to send, in 1 MiB writes, unless the client goes away first. */
  readonly total: number;
  /** Send Content-Length: `total` (else chunked, no length). */
  readonly announce?: boolean;
}

/** Starts a registry answering `route(path)`; `sent` counts each path's body bytes written. */
async function hostile(route: (path: string, port: number) => Reply | undefined): Promise<{ port: number; sent: Map<string, number>; close: () => Promise<void> }> {
  const sent = new Map<string, number>();
  const server = http.createServer((req, res) => {
    const p = new URL(req.url ?? '/', 'http://x').pathname;
    const r = route(p, (server.address() as AddressInfo).port);
    if (r === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(r.status ?? 200, { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', ...(r.announce ? { 'Content-Length': String(r.total) } : {}), ...r.headers });
    const chunk = Buffer.alloc(1 << 20, 0x20); // spaces: valid JSON whitespace, were it ever parsed
    let left = r.total;
    const pump = (): void => {
      while (left > 0 && !res.destroyed) {
        const n = Math.min(left, chunk.length);
        left -= n;
        sent.set(p, (sent.get(p) ?? 0) + n);
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void res.once('drain', pump);
      }
      if (!res.destroyed) res.end();
    };
    res.on('close', () => (left = 0));
    pump();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    sent,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

const BIG = 256 << 20;

test('a manifest that keeps coming (no Content-Length) is refused once past the limit, and its connection closed', async (t) => {
  const reg = await hostile((p) => (p === '/v2/app/manifests/big' ? { total: BIG } : undefined));
  try {
    const err = await t.throwsAsync(resolvePull(`127.0.0.1:${reg.port}/app:big`));
    t.is((err as { code?: string }).code, 'TSVOL_INVALID_ARGUMENT');
    t.is(err.message, `manifests big refused: the registry sent more than ${MAX_JSON} bytes, at most ${MAX_JSON} are accepted`);
    // The server wrote what the socket buffers took before the close: far less than it meant to send.
    const sent = reg.sent.get('/v2/app/manifests/big') ?? 0;
    t.true(sent < 4 * MAX_JSON, `the registry got to send ${sent} of ${BIG} bytes`);
  } finally {
    await reg.close();
  }
});

test('a manifest announcing more than the limit (Content-Length) is refused before its body is read', async (t) => {
  const reg = await hostile((p) => (p === '/v2/app/manifests/huge' ? { total: BIG, announce: true } : undefined));
  try {
    const err = await t.throwsAsync(resolvePull(`127.0.0.1:${reg.port}/app:huge`));
    t.is(err.message, `manifests huge refused: the registry sent ${BIG} bytes, at most ${MAX_JSON} are accepted`);
    const sent = reg.sent.get('/v2/app/manifests/huge') ?? 0;
    t.true(sent < 4 * MAX_JSON, `the registry got to send ${sent} of ${BIG} bytes`);
  } finally {
    await reg.close();
  }
});

test("a token service whose reply keeps coming is refused, and the pull fails with the registry's name", async (t) => {
  const reg = await hostile((p, port) => {
    if (p === '/v2/app/manifests/t') return { status: 401, total: 0, headers: { 'WWW-Authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="hostile"` } };
    if (p === '/token') return { total: BIG };
    return undefined;
  });
  try {
    const err = await t.throwsAsync(resolvePull(`127.0.0.1:${reg.port}/app:t`));
    t.is((err as { code?: string }).code, 'TSVOL_INVALID_ARGUMENT');
    t.regex(err.message, /^the token service's reply for app refused: the registry sent more than 1048576 bytes/);
    const sent = reg.sent.get('/token') ?? 0;
    t.true(sent < 16 << 20, `the token service got to send ${sent} of ${BIG} bytes`);
  } finally {
    await reg.close();
  }
});

test('a document within the limit is read whole: a small manifest that is not JSON gets its own refusal, not a size one', async (t) => {
  const reg = await hostile((p) => (p === '/v2/app/manifests/small' ? { total: 1000, announce: true } : undefined));
  try {
    const err = await t.throwsAsync(resolvePull(`127.0.0.1:${reg.port}/app:small`));
    t.is((err as { code?: string }).code, 'TSVOL_INVALID_ARGUMENT');
    t.regex(err.message, new RegExp(`^manifest of 127\\.0\\.0\\.1:${reg.port}/app:small refused: not JSON`));
    t.is(reg.sent.get('/v2/app/manifests/small'), 1000);
  } finally {
    await reg.close();
  }
});

/** Points DOCKER_CONFIG (read at each authentication) at a config holding credentials for `domain`. */
function withCredentials(domain: string): () => void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvol-dockercfg-'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { [domain]: { auth: Buffer.from('user:secret').toString('base64') } } }));
  const before = process.env.DOCKER_CONFIG;
  process.env.DOCKER_CONFIG = dir;
  return () => {
    if (before === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = before;
    fs.rmSync(dir, { recursive: true, force: true });
  };
}

test.serial('a challenge sending the credentials over plain HTTP to a host that is not loopback is refused before anything is sent; to a loopback token service they go', async (t) => {
  const seen: (string | undefined)[] = [];
  let realm = '';
  const server = http.createServer((req, res) => {
    const p = new URL(req.url ?? '/', 'http://x').pathname;
    if (p === '/token') {
      seen.push(req.headers.authorization);
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ token: 't0k' }));
    } else if (req.headers.authorization === 'Bearer t0k') res.writeHead(404).end();
    else res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${realm}",service="hostile"` }).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const restore = withCredentials(`127.0.0.1:${port}`);
  try {
    // 0.0.0.0 is not a loopback name, yet a connection there would reach only this host: nothing leaves.
    realm = `http://0.0.0.0:${port}/token`;
    const err = await t.throwsAsync(resolvePull(`127.0.0.1:${port}/app:t`));
    t.is((err as { code?: string }).code, 'TSVOL_INVALID_ARGUMENT');
    t.is(err.message, `the registry http://127.0.0.1:${port} asks for your 127.0.0.1:${port} credentials at http://0.0.0.0:${port}, over plain HTTP; tsvol sends them only over HTTPS (or to a loopback address)`);
    t.deepEqual(seen, [], 'the token service was never asked');

    realm = 'file:///etc/passwd';
    const file = await t.throwsAsync(resolvePull(`127.0.0.1:${port}/app:t`));
    t.is(file.message, `the registry http://127.0.0.1:${port}'s challenge names a realm that is not HTTP(S): "file:///etc/passwd"`);

    // A loopback token service gets them, and the token opens the registry (whose manifest is missing).
    realm = `http://127.0.0.1:${port}/token`;
    const missing = await t.throwsAsync(resolvePull(`127.0.0.1:${port}/app:t`));
    t.is((missing as { code?: string }).code, 'TSVOL_NOT_FOUND');
    t.deepEqual(seen, [`Basic ${Buffer.from('user:secret').toString('base64')}`]);
  } finally {
    restore();
    await new Promise((r) => server.close(r));
  }
});
