/**
 * The VolumeDriver protocol on the wire, as dockerd speaks it: every endpoint, exact replies, Get before
 * Create, `Opts: null`, validation tables, and hostile bodies that must never crash the server.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import fc from 'fast-check';
import { withServer, type TestServer } from './helpers/server.js';

const MEDIA = 'application/vnd.docker.plugins.v1.2+json';

function volumeDirs(s: TestServer): string[] {
  const dir = path.join(s.data, 'volumes');
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
}

test('Activate and Capabilities answer without activation, with the plugin media type', async (t) => {
  await withServer(t, {}, async (s) => {
    const act = await s.call('/Plugin.Activate', null);
    t.is(act.status, 200);
    t.is(act.contentType, MEDIA);
    t.is(act.raw, '{"Implements":["VolumeDriver"]}');
    // A managed plugin is never activated: the first call may be anything.
    const caps = await s.call('/VolumeDriver.Capabilities', '');
    t.is(caps.status, 200);
    t.is(caps.raw, '{"Capabilities":{"Scope":"local"}}');
  });
});

test('docker volume create: Get fails, then Create with Opts null, then Get shows the volume', async (t) => {
  await withServer(t, {}, async (s) => {
    const get = await s.call('/VolumeDriver.Get', { Name: 'web-data' });
    t.is(get.status, 404);
    t.is(get.raw, '{"Err":"volume \\"web-data\\" not found"}');
    const create = await s.call('/VolumeDriver.Create', { Name: 'web-data', Opts: null });
    t.is(create.status, 200);
    t.is(create.contentType, MEDIA);
    t.is(create.raw, '{"Err":""}');
    const after = await s.call('/VolumeDriver.Get', { Name: 'web-data' });
    t.is(after.status, 200);
    const vol = after.json.Volume as Record<string, unknown>;
    t.is(vol.Name, 'web-data');
    t.is(vol.Mountpoint, path.join(s.mounts!, 'web-data'));
    t.regex(vol.CreatedAt as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    t.like(vol.Status as object, { kind: 'named', mounts: 0, holders: [], path: path.join(s.data, 'volumes', 'web-data', '_data') });
    t.is(after.json.Err, '');
    t.true(fs.statSync(path.join(s.data, 'volumes', 'web-data', '_data')).isDirectory());
  });
});

test('Create of an existing volume succeeds and keeps its data', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'db', Opts: {} });
    fs.writeFileSync(path.join(s.data, 'volumes', 'db', '_data', 'row'), 'x');
    await s.ok('/VolumeDriver.Create', { Name: 'db', Opts: null });
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'db', '_data', 'row'), 'utf8'), 'x');
  });
});

test('List, Path and Remove', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'a1', Opts: null });
    await s.ok('/VolumeDriver.Create', { Name: 'b2', Opts: null });
    const list = await s.ok('/VolumeDriver.List', null);
    t.deepEqual(
      (list.Volumes as { Name: string }[]).map((v) => v.Name).sort(),
      ['a1', 'b2'],
    );
    t.deepEqual(await s.ok('/VolumeDriver.Path', { Name: 'a1' }), { Mountpoint: path.join(s.mounts!, 'a1'), Err: '' });
    await s.ok('/VolumeDriver.Remove', { Name: 'a1' });
    const gone = await s.call('/VolumeDriver.Path', { Name: 'a1' });
    t.is(gone.json.Err, 'volume "a1" not found');
    await s.call('/VolumeDriver.Capabilities', null);
    // Deletion happens in the background right after the commit.
    for (let i = 0; i < 50 && fs.existsSync(path.join(s.data, 'volumes', 'a1')); i++) await new Promise((r) => setTimeout(r, 20));
    t.deepEqual(volumeDirs(s), ['b2']);
    const remove = await s.call('/VolumeDriver.Remove', { Name: 'a1' });
    t.is(remove.status, 404);
    t.is(remove.json.Err, 'volume "a1" not found');
  });
});

const badNames: [string, unknown][] = [
  ['empty', ''],
  ['one character', 'a'],
  ['parent traversal', '../etc'],
  ['slash', 'a/b'],
  ['leading dot', '.hidden'],
  ['leading dash', '-rf'],
  ['space', 'a b'],
  ['NUL byte', 'a\u0000b'],
  ['non-ASCII', 'données'],
  ['256 bytes', 'a'.repeat(256)],
];

for (const [label, name] of badNames) {
  test(`Create refuses a hostile name (${label}) and creates nothing`, async (t) => {
    await withServer(t, {}, async (s) => {
      const r = await s.call('/VolumeDriver.Create', { Name: name, Opts: null });
      t.is(r.status, 400);
      t.regex(String(r.json.Err), /invalid volume name/);
      t.deepEqual(volumeDirs(s), []);
      t.deepEqual((await s.ok('/VolumeDriver.List', null)).Volumes, []);
      t.false(fs.existsSync(path.join(s.dir, 'etc')));
    });
  });
}

test('a 255-byte name is accepted', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'n'.repeat(255), Opts: null });
    t.deepEqual(volumeDirs(s), ['n'.repeat(255)]);
  });
});

const badOptions: [Record<string, string>, RegExp][] = [
  [{ foo: 'bar' }, /invalid option: "foo"/],
  [{ uid: 'root' }, /invalid option uid="root"/],
  [{ gid: '-1' }, /invalid option gid="-1"/],
  [{ mode: '999' }, /invalid option mode="999"/],
  [{ type: 'nfs', device: ':/export' }, /invalid option type="nfs"/],
  [{ device: '/srv' }, /device needs type=bind/],
  [{ type: 'none', o: 'addr=1.2.3.4', device: '/srv' }, /invalid option o="addr=1.2.3.4"/],
  [{ type: 'bind' }, /needs device=/],
  [{ type: 'bind', device: 'relative/dir' }, /must be an absolute path/],
  [{ type: 'bind', device: '/srv', uid: '1' }, /invalid option uid/],
];

for (const [opts, message] of badOptions) {
  test(`Create refuses options ${JSON.stringify(opts)} naming the problem, creating nothing`, async (t) => {
    await withServer(t, {}, async (s) => {
      const r = await s.call('/VolumeDriver.Create', { Name: 'vol', Opts: opts });
      t.is(r.status, 400);
      t.regex(String(r.json.Err), message);
      t.deepEqual(volumeDirs(s), []);
      t.is((await s.call('/VolumeDriver.Get', { Name: 'vol' })).status, 404);
    });
  });
}

test('uid, gid and mode apply to the new volume directory', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'owned', Opts: { uid: '1000', gid: '1001', mode: '0750' } });
    const st = fs.statSync(path.join(s.data, 'volumes', 'owned', '_data'));
    t.is(st.uid, 1000);
    t.is(st.gid, 1001);
    t.is(st.mode & 0o7777, 0o750);
    const dflt = await s.ok('/VolumeDriver.Create', { Name: 'plain', Opts: null });
    t.deepEqual(dflt, { Err: '' });
    t.is(fs.statSync(path.join(s.data, 'volumes', 'plain', '_data')).mode & 0o7777, 0o755);
  });
});

test('bad bodies get an Err, never a stack trace, and the server lives on', async (t) => {
  await withServer(t, {}, async (s) => {
    const cases: [string, string, number, RegExp][] = [
      ['/VolumeDriver.Create', '{"Name":', 400, /body is not valid JSON/],
      ['/VolumeDriver.Create', '{"Name":"a1"} trailing', 400, /body is not valid JSON/],
      ['/VolumeDriver.Create', '{"Name":42}', 400, /Name: Name must be a string/],
      ['/VolumeDriver.Create', '{"Name":"a1","Opts":{"uid":7}}', 400, /Opts.uid: option values must be strings/],
      ['/VolumeDriver.Create', '{"Name":"a1","Opts":[1]}', 400, /Opts/],
      ['/VolumeDriver.Mount', '{"Name":"a1","ID":{}}', 400, /ID: ID must be a string/],
      ['/VolumeDriver.Get', 'null', 400, /invalid request/],
      ['/VolumeDriver.Remove', '[]', 400, /invalid request/],
      ['/VolumeDriver.Nope', '{}', 404, /unknown endpoint POST \/VolumeDriver.Nope/],
    ];
    for (const [endpoint, body, status, err] of cases) {
      const r = await s.call(endpoint, body);
      t.is(r.status, status, `${endpoint} ${body}`);
      t.regex(String(r.json.Err), err, `${endpoint} ${body}`);
      t.notRegex(r.raw, /at .*\.js:\d+/);
    }
    const big = await s.call('/VolumeDriver.Create', JSON.stringify({ Name: 'big', Opts: { x: 'y'.repeat(2 << 20) } }));
    t.is(big.status, 413);
    t.regex(String(big.json.Err), /exceeds/);
    t.deepEqual(volumeDirs(s), []);
    t.is((await s.call('/Plugin.Activate', null)).status, 200);
  });
});

test('fuzzed bodies on every endpoint always get a JSON reply with a string Err or a result', async (t) => {
  await withServer(t, {}, async (s) => {
    const endpoints = ['Create', 'Remove', 'Mount', 'Unmount', 'Path', 'Get', 'List', 'Capabilities'].map((e) => `/VolumeDriver.${e}`);
    const body = fc.oneof(
      fc.string(),
      fc.json(),
      fc.record({ Name: fc.oneof(fc.string(), fc.integer(), fc.constant(null)), Opts: fc.anything(), ID: fc.anything() }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...endpoints), body, async (endpoint, payload) => {
        const r = await s.call(endpoint, payload);
        if (r.status >= 500) return false;
        if ('__notJson' in r.json) return false;
        return r.status === 200 || typeof r.json.Err === 'string';
      }),
      { numRuns: 300 },
    );
    t.is((await s.call('/VolumeDriver.Capabilities', null)).status, 200);
    t.is(s.proc.exitCode, null);
    // Whatever the fuzzer created must still be consistent: every listed volume has its directory.
    for (const v of (await s.ok('/VolumeDriver.List', null)).Volumes as { Name: string }[]) {
      t.true(fs.existsSync(path.join(s.data, "volumes", v.Name, "_data")), v.Name);
    }
  });
});

test('one JSON log line per request with op, volume, ms and status', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.call('/VolumeDriver.Create', { Name: 'logged', Opts: null });
    await s.call('/VolumeDriver.Get', { Name: 'missing' });
    await new Promise((r) => setTimeout(r, 100));
    const lines = s.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const create = lines.find((l) => l.op === 'create');
    t.like(create, { msg: 'request', volume: 'logged', status: 200 });
    t.is(typeof create?.ms, 'number');
    t.like(lines.find((l) => l.op === 'get'), { volume: 'missing', status: 404, code: 'TSVOL_NOT_FOUND' });
  });
});
