/**
 * A misbehaving client on the control socket (TSVOL_DATA/control.sock): malformed bodies are a clear 400
 * naming the problem, never an internal error; an upload cut mid-stream leaves no volume, layer or stage;
 * an export whose client stops reading holds the server's memory flat. Raw HTTP over the real socket of
 * the real server.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import test from 'ava';
import { blankHeader, encodeHeader, padding } from '../src/layers/tar/format.js';
import { withServer } from './helpers/server.js';

const file = (p: string, body: Buffer): Buffer => Buffer.concat([encodeHeader(blankHeader(p, 'file', { mode: 0o644, size: body.length })), body, Buffer.alloc(padding(body.length))]);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function call(sock: string, method: string, p: string, body?: Buffer | string): Promise<{ status: number; json: { Err?: string; code?: string } }> {
  return new Promise((resolve, reject) => {
    const r = http.request({ socketPath: sock, method, path: p }, (res) => {
      let b = '';
      res.on('data', (c: Buffer) => (b += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(b) as { Err?: string; code?: string } }));
    });
    r.on('error', reject);
    r.end(body);
  });
}

/** Sends the start of an upload, then drops the connection. */
async function cutUpload(sock: string, p: string, bytes: Buffer): Promise<void> {
  const r = http.request({ socketPath: sock, method: 'POST', path: p });
  r.on('error', () => undefined);
  r.write(bytes);
  await sleep(300);
  r.destroy();
}

const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;

test('a malformed pull stream is a 400 naming the frame, not an internal error', async (t) => {
  await withServer(t, {}, async (s) => {
    const sock = path.join(s.data, 'control.sock');
    const cases: [Buffer, RegExp][] = [
      [Buffer.from('garbage, not frames'), /pull stream refused: malformed frame: type 103/],
      [Buffer.from([9, 0, 0, 0, 0, 0, 0, 0, 0]), /pull stream refused: malformed frame: type 9/],
      [Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 9, 0x7b]), /pull stream refused: it ends inside a frame/],
    ];
    for (const [body, message] of cases) {
      const r = await call(sock, 'POST', '/v1/images/pull', body);
      t.is(r.status, 400, r.json.Err);
      t.is(r.json.code, 'TSVOL_INVALID_ARGUMENT');
      t.regex(r.json.Err ?? '', message);
    }
    t.notRegex(s.output(), /"level":50/, 'nothing logged as a server error');
  });
});

test('uploads cut mid-stream leave nothing; an export nobody reads keeps memory flat', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const sock = path.join(s.data, 'control.sock');
    const tree = Buffer.concat(Array.from({ length: 48 }, (_, i) => file(`f${i}`, randomBytes(1 << 20))));
    await cutUpload(sock, '/v1/volumes/cut/import', tree.subarray(0, 5 << 20));
    await cutUpload(sock, '/v1/layers/import', tree.subarray(0, 5 << 20));
    await cutUpload(sock, '/v1/images/load', file('x/layer.tar', tree).subarray(0, 5 << 20));
    await sleep(700);
    t.is((await call(sock, 'GET', '/v1/volumes/cut')).status, 404);
    t.deepEqual((await call(sock, 'GET', '/v1/layers')).json, []);
    t.deepEqual(fs.readdirSync(path.join(s.data, 'tmp')), [], 'no stage left');

    t.is((await call(sock, 'POST', '/v1/volumes/full/import', Buffer.concat([tree, Buffer.alloc(1024)]))).status, 200);
    const before = rssMb(s.proc.pid!);
    const stalled = http.request({ socketPath: sock, method: 'GET', path: '/v1/volumes/full/export' }, (res) => res.pause());
    stalled.on('error', () => undefined);
    stalled.end();
    let peak = 0;
    for (let i = 0; i < 10; i++) {
      await sleep(150);
      peak = Math.max(peak, rssMb(s.proc.pid!));
    }
    t.log(`grew ${(peak - before).toFixed(1)} MiB`);
    t.true(peak - before < 32, `the server grew ${(peak - before).toFixed(0)} MiB for a 48 MiB export nobody reads`);
    stalled.destroy();
    await sleep(300);
    t.is((await call(sock, 'POST', '/v1/volumes/cut2/import', Buffer.alloc(1024))).status, 200, 'the server goes on serving');
  });
});
