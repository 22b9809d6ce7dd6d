/**
 * What a request leaves in dockerd's log (#13): a managed plugin's stdout is copied line by line into
 * dockerd's own log, so at the default `info` level only mutations, failures (a "not found" Get only while
 * dockerd restores its volumes) and slow reads are written; at `debug` every request has its line (op,
 * volume, mount id, ms, status, code).
 */
import test from 'ava';
import { RESTORE_WINDOW_MS, SLOW_REQUEST_MS, requestLevel } from '../src/http/app.js';
import { withServer, type TestServer } from './helpers/server.js';

/**
 * Makes the requests of a `docker volume create` + `inspect` + `rm`, and one failed read; returns the
 * request lines they logged (not the start-up probe's).
 */
async function dockerLikeCalls(s: TestServer): Promise<Record<string, unknown>[]> {
  // The start-up probe's line (a Capabilities) may still be in the pipe: let it arrive first.
  await new Promise((r) => setTimeout(r, 200));
  const before = s.output().length;
  await s.call('/VolumeDriver.Get', { Name: 'quiet' }); // dockerd's probe before Create: not found
  await s.ok('/VolumeDriver.Create', { Name: 'quiet', Opts: null });
  await s.ok('/VolumeDriver.Capabilities', null);
  await s.ok('/VolumeDriver.Get', { Name: 'quiet' });
  await s.ok('/VolumeDriver.Path', { Name: 'quiet' });
  await s.ok('/VolumeDriver.List', null);
  await s.ok('/VolumeDriver.Remove', { Name: 'quiet' });
  await s.call('/VolumeDriver.Path', { Name: '../bad' });
  // pino writes synchronously, but the pipe to this process is read asynchronously.
  await new Promise((r) => setTimeout(r, 100));
  return s
    .output()
    .slice(before)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === 'request');
}

test('at info, dockerd gets a line for each mutation and each failure, none for successful reads', async (t) => {
  await withServer(t, { env: { TSVOL_LOG_LEVEL: 'info' } }, async (s) => {
    const lines = await dockerLikeCalls(s);
    // The server has just started: its "not found" Get is inside dockerd's restore window.
    t.deepEqual(
      lines.map((l) => [l.op, l.status, l.code]),
      [
        ['get', 404, 'TSVOL_NOT_FOUND'],
        ['create', 200, undefined],
        ['remove', 200, undefined],
        ['path', lines.at(-1)?.status, lines.at(-1)?.code],
      ],
    );
    t.true(Number(lines.at(-1)?.status) >= 400, 'the failed Path is logged as a failure');
    t.like(lines[1], { volume: 'quiet', level: 30 });
    t.is(typeof lines[1]?.ms, 'number');
  });
});

test('at debug, every request has its line with op, volume, ms and status', async (t) => {
  await withServer(t, { env: { TSVOL_LOG_LEVEL: 'debug' } }, async (s) => {
    const lines = await dockerLikeCalls(s);
    t.deepEqual(
      lines.map((l) => l.op),
      ['get', 'create', 'capabilities', 'get', 'path', 'list', 'remove', 'path'],
    );
    t.like(lines[3], { op: 'get', volume: 'quiet', status: 200, level: 20 });
    t.like(lines[4], { op: 'path', volume: 'quiet', status: 200, level: 20 });
    t.like(lines[6], { op: 'remove', volume: 'quiet', status: 200, level: 30 });
  });
});

test('requestLevel: mutations and failures at info, reads only when slow; a "not found" Get only in the restore window', (t) => {
  const later = RESTORE_WINDOW_MS * 10;
  for (const op of ['activate', 'capabilities', 'get', 'path', 'list']) {
    t.is(requestLevel(op, undefined, 3, 5), 'debug', op);
    t.is(requestLevel(op, undefined, SLOW_REQUEST_MS, later), 'info', `${op} slow`);
    t.is(requestLevel(op, 'TSVOL_INTERNAL', 3, later), 'info', op);
  }
  for (const op of ['create', 'remove', 'mount', 'unmount', 'export']) {
    t.is(requestLevel(op, undefined, 3, later), 'info', op);
    t.is(requestLevel(op, 'TSVOL_IN_USE', 3, later), 'info', op);
  }
  for (const op of ['path', 'mount', 'remove']) t.is(requestLevel(op, 'TSVOL_NOT_FOUND', 3, later), 'info', op);
  t.is(requestLevel('get', 'TSVOL_NOT_FOUND', 3, 0), 'info', 'dockerd restoring: the volume it will forget');
  t.is(requestLevel('get', 'TSVOL_NOT_FOUND', 3, RESTORE_WINDOW_MS - 1), 'info');
  t.is(requestLevel('get', 'TSVOL_NOT_FOUND', 3, RESTORE_WINDOW_MS), 'debug', "later: dockerd's probe before a Create");
});
