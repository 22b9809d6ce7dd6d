/**
 * What a request leaves in dockerd's log (#13): a managed plugin's stdout is copied line by line into
 * dockerd's own log, so at the default `info` level only mutations, failures and slow reads are written, and
 * a "not found" Get only when no Create of the name follows (dockerd's probe before each Create is not a
 * failure); at `debug` every request has its line (op, volume, mount id, ms, status, code).
 */
import test from 'ava';
import { NotFoundLines, PROBE_PENDING_MAX, SLOW_REQUEST_MS, requestLevel } from '../src/http/app.js';
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

test('at info, dockerd gets a line for each mutation and each failure, none for successful reads or its probe', async (t) => {
  await withServer(t, { env: { TSVOL_LOG_LEVEL: 'info' } }, async (s) => {
    const lines = await dockerLikeCalls(s);
    // The Get answered "not found" was dockerd's probe: the Create of its name followed.
    t.deepEqual(
      lines.map((l) => [l.op, l.status, l.code]),
      [
        ['create', 200, undefined],
        ['remove', 200, undefined],
        ['path', lines.at(-1)?.status, lines.at(-1)?.code],
      ],
    );
    t.true(Number(lines.at(-1)?.status) >= 400, 'the failed Path is logged as a failure');
    t.like(lines[0], { volume: 'quiet', level: 30 });
    t.is(typeof lines[0]?.ms, 'number');
  });
});

test('at info, a "not found" Get no Create follows is written (dockerd forgetting a volume at its start), at the latest on shutdown', async (t) => {
  await withServer(t, { env: { TSVOL_LOG_LEVEL: 'info' } }, async (s) => {
    await new Promise((r) => setTimeout(r, 200));
    const before = s.output().length;
    await s.call('/VolumeDriver.Get', { Name: 'forgotten' });
    await s.call('/VolumeDriver.Get', { Name: 'probed' });
    await s.ok('/VolumeDriver.Create', { Name: 'probed', Opts: null });
    await new Promise((r) => setTimeout(r, 100));
    const notFound = (): Record<string, unknown>[] =>
      s
        .output()
        .slice(before)
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.msg === 'request' && l.code === 'TSVOL_NOT_FOUND');
    t.deepEqual(notFound(), [], 'held back while a Create may still come');
    t.is(await s.stop(), 0);
    t.deepEqual(
      notFound().map((l) => [l.op, l.volume, l.status, l.level, l.deferred]),
      [['get', 'forgotten', 404, 30, true]],
      'written at shutdown; the probe of "probed" never',
    );
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

test('requestLevel: mutations and failures at info, reads only when slow', (t) => {
  for (const op of ['activate', 'capabilities', 'get', 'path', 'list']) {
    t.is(requestLevel(op, undefined, 3), 'debug', op);
    t.is(requestLevel(op, undefined, SLOW_REQUEST_MS), 'info', `${op} slow`);
    t.is(requestLevel(op, 'TSVOL_INTERNAL', 3), 'info', op);
    t.is(requestLevel(op, 'TSVOL_NOT_FOUND', 3), 'info', op);
  }
  for (const op of ['create', 'remove', 'mount', 'unmount', 'export']) {
    t.is(requestLevel(op, undefined, 3), 'info', op);
    t.is(requestLevel(op, 'TSVOL_IN_USE', 3), 'info', op);
  }
});

test('NotFoundLines: a line waits its window, a Create drops it, a second Get joins the first, memory is bounded', (t) => {
  let now = 0;
  const written: string[] = [];
  const lines = new NotFoundLines(5000, () => now);
  t.teardown(() => lines.flush(true));
  lines.defer('a', () => written.push('a'));
  now = 10;
  lines.defer('b', () => written.push('b'));
  lines.defer('b', () => written.push('b again'));
  lines.created('a');
  now = 5009;
  lines.flush(false);
  t.deepEqual(written, [], 'b is still inside its window');
  now = 5010;
  lines.flush(false);
  t.deepEqual(written, ['b'], 'a was a probe; b is written once');
  t.is(lines.size, 0);
  for (let i = 0; i <= PROBE_PENDING_MAX; i++) lines.defer(`n${i}`, () => written.push(`n${i}`));
  t.is(lines.size, PROBE_PENDING_MAX, 'never more than PROBE_PENDING_MAX waiting');
  t.deepEqual(written.slice(1), ['n0'], 'the oldest is written at once');
  lines.flush(true);
  t.is(written.length, PROBE_PENDING_MAX + 2);
});
