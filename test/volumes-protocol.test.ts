/**
 * The VolumeDriver protocol on the wire, as dockerd speaks it: every endpoint, exact replies, Get before
 * Create, `Opts: null`, validation tables, and hostile bodies that must never crash the server.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { NotFoundError, TsvolError } from '../src/errors.js';
import { parseOptions } from '../src/volumes/options.js';
import { cleanupDir, isMounted, startTestServer, withServer, type TestServer } from './helpers/server.js';

const MEDIA = 'application/vnd.docker.plugins.v1.2+json';

/**
 * Keys that name something on Object.prototype (#9 §4): as mount IDs, option keys or volume names they must
 * be plain keys. Those that are also valid volume names come first.
 */
const PROTO_VOLUME_NAMES = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf', 'toLocaleString'];
const PROTO_NAMES = [...PROTO_VOLUME_NAMES, '__proto__', '__defineGetter__', '__lookupSetter__', 'propertyIsEnumerable'];

/** A JSON object text with exactly these own keys (JSON.stringify of an object cannot carry `__proto__`). */
function jsonObject(entries: readonly (readonly [string, unknown])[]): string {
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
}

interface MountStatus {
  mounts: number;
  holders: string[];
}

async function mountStatus(s: TestServer, name: string): Promise<MountStatus> {
  return ((await s.ok('/VolumeDriver.Get', { Name: name })).Volume as { Status: MountStatus }).Status;
}

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

test('the "not found" of dockerd\'s probe Get is built without a stack trace, and other errors keep theirs (#13)', (t) => {
  const limit = Error.stackTraceLimit;
  const err = new NotFoundError('volume "web-data" not found');
  t.true(err instanceof TsvolError);
  t.is(err.code, 'TSVOL_NOT_FOUND');
  t.is(err.name, 'NotFoundError');
  t.is(err.message, 'volume "web-data" not found');
  t.notRegex(err.stack ?? '', /\n\s+at /, 'no frames captured');
  t.is(Error.stackTraceLimit, limit, 'the limit is restored');
  t.regex(new TsvolError('TSVOL_INTERNAL', 'boom').stack ?? '', /\n\s+at /, 'a fault keeps its stack');
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

/**
 * One server for the two refusal tables below: a refused Create must leave the server empty, which every
 * one of them checks, so they can share it (a server start costs about a second of CPU; twenty of them
 * were half of this file's time). Nothing else uses it.
 */
let refusalServer: Promise<TestServer> | undefined;
async function withRefusalServer(fn: (s: TestServer) => Promise<void>): Promise<void> {
  refusalServer ??= startTestServer();
  await fn(await refusalServer);
}
test.after.always(async () => {
  if (refusalServer === undefined) return;
  const s = await refusalServer;
  await s.kill();
  cleanupDir(s.dir);
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
    await withRefusalServer(async (s) => {
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
    await withRefusalServer(async (s) => {
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
    const protoName = fc.constantFrom(...PROTO_NAMES);
    // Option maps as raw JSON, so that `__proto__` is a real key (#9 §4).
    const optsText = fc
      .array(fc.tuple(fc.oneof(protoName, fc.constantFrom('uid', 'mode', 'layer', 'from'), fc.string()), fc.oneof(fc.string(), protoName, fc.anything())), { maxLength: 4 })
      .map(jsonObject);
    const body = fc.oneof(
      fc.string(),
      fc.json(),
      fc.record({ Name: fc.oneof(fc.string(), fc.integer(), fc.constant(null), protoName), Opts: fc.anything(), ID: fc.oneof(fc.anything(), protoName) }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
      fc
        .tuple(fc.oneof(protoName, fc.string()), fc.oneof(optsText, fc.constant('null')), fc.oneof(protoName, fc.string()))
        .map(([name, opts, id]) => `{"Name":${JSON.stringify(name)},"Opts":${opts},"ID":${JSON.stringify(id)}}`),
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

test('at debug, one JSON log line per request with op, volume, ms and status', async (t) => {
  await withServer(t, { env: { TSVOL_LOG_LEVEL: 'debug' } }, async (s) => {
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

// #9 §4: mount IDs, option keys and names that name Object.prototype members are ordinary keys.

test('a mount ID named after Object.prototype holds the volume: Remove is refused and the data kept', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    for (const id of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) {
      const name = `held-${id.replace(/_/g, 'u').toLowerCase()}`;
      await s.ok('/VolumeDriver.Create', { Name: name, Opts: null });
      fs.writeFileSync(path.join(s.data, 'volumes', name, '_data', 'precious'), id);
      const m = await s.ok('/VolumeDriver.Mount', { Name: name, ID: id });
      t.true(isMounted(m.Mountpoint as string), id);
      t.like(await mountStatus(s, name), { mounts: 1, holders: [id] }, id);
      const r = await s.call('/VolumeDriver.Remove', { Name: name });
      t.is(r.status, 409, id);
      t.regex(String(r.json.Err), new RegExp(`volume "${name}" is in use: 1 active mount`), id);
      t.is(fs.readFileSync(path.join(m.Mountpoint as string, 'precious'), 'utf8'), id, `${id}: data kept`);
    }
  });
});

test('Unmount with a prototype-named ID releases exactly one hold', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'proto', Opts: null });
    const ids = ['constructor', '__proto__', 'toString'];
    for (const id of ids) {
      await s.ok('/VolumeDriver.Mount', { Name: 'proto', ID: id });
      await s.ok('/VolumeDriver.Mount', { Name: 'proto', ID: id }); // docker cp re-uses the ID
    }
    t.is((await mountStatus(s, 'proto')).mounts, 6);
    let left = 6;
    for (const id of ids) {
      for (let i = 0; i < 2; i++) {
        await s.ok('/VolumeDriver.Unmount', { Name: 'proto', ID: id });
        left--;
        const st = await mountStatus(s, 'proto');
        t.is(st.mounts, left, `after Unmount ${id} #${i + 1}`);
        t.is(st.holders.includes(id), i === 0, `${id} still holds after its first Unmount only`);
        t.is((await s.call('/VolumeDriver.Remove', { Name: 'proto' })).status, left > 0 ? 409 : 200);
      }
    }
    t.false(isMounted(path.join(s.mounts!, 'proto')));
  });
});

test('a restarted server keeps holds of prototype-named IDs, and loads holds stored in the old object form', async (t) => {
  if (process.getuid?.() !== 0) {
    if (process.env.CI === 'true') throw new Error('needs root (mounts)');
    return void t.log('SKIPPED LOUDLY: not root');
  }
  let s = await startTestServer();
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'kept', Opts: null });
    for (const id of ['constructor', '__proto__', 'toString']) await s.ok('/VolumeDriver.Mount', { Name: 'kept', ID: id });
    await s.ok('/VolumeDriver.Create', { Name: 'legacy', Opts: null });
    fs.writeFileSync(path.join(s.data, 'volumes', 'legacy', '_data', 'f'), 'legacy data');
    await s.kill();
    // A record as the old code wrote it: holds an object, and garbage counts for prototype names (its
    // `(holds[id] ?? 0) + 1` read Object.prototype). Each such ID held the volume at least once.
    const db = new Database(path.join(s.data, 'tsvol.db'));
    const { holds: _new, ...rec } = JSON.parse(db.prepare("SELECT record FROM volumes WHERE name = 'legacy'").pluck().get() as string) as Record<string, unknown>;
    const oldHolds = jsonObject([['constructor', 'function Object() { [native code] }1'], ['__proto__', '[object Object]1'], ['c1', 2]]);
    const legacy = `${JSON.stringify(rec).slice(0, -1)},"holds":${oldHolds}}`;
    db.prepare("UPDATE volumes SET record = ? WHERE name = 'legacy'").run(legacy);
    db.close();
    s = await startTestServer({ dir: s.dir });
    const kept = await mountStatus(s, 'kept');
    t.is(kept.mounts, 3);
    t.deepEqual([...kept.holders].sort(), ['__proto__', 'constructor', 'toString']);
    t.is((await s.call('/VolumeDriver.Remove', { Name: 'kept' })).status, 409);
    const old = await mountStatus(s, 'legacy');
    t.is(old.mounts, 4);
    t.deepEqual([...old.holders].sort(), ['__proto__', 'c1', 'constructor']);
    t.is((await s.call('/VolumeDriver.Remove', { Name: 'legacy' })).status, 409);
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'legacy', '_data', 'f'), 'utf8'), 'legacy data');
    for (const id of ['constructor', '__proto__', 'toString']) {
      t.is((await s.call('/VolumeDriver.Remove', { Name: 'kept' })).status, 409, `before Unmount ${id}`);
      await s.ok('/VolumeDriver.Unmount', { Name: 'kept', ID: id });
    }
    t.false(isMounted(path.join(s.mounts!, 'kept')));
    await s.ok('/VolumeDriver.Remove', { Name: 'kept' });
    // The migrated record is written back in the new form on its next change.
    await s.ok('/VolumeDriver.Unmount', { Name: 'legacy', ID: 'c1' });
    t.is((await mountStatus(s, 'legacy')).mounts, 3);
  } finally {
    await s.kill();
    cleanupDir(s.dir);
  }
});

test('Create refuses option keys named after Object.prototype, `__proto__` included', async (t) => {
  await withServer(t, {}, async (s) => {
    const cases: [string, RegExp][] = [
      [jsonObject([['__proto__', 'x']]), /invalid option: "__proto__"/],
      [jsonObject([['__proto__', { layer: 'evil' }]]), /Opts.__proto__: option values must be strings/],
      [jsonObject([['constructor', 'x']]), /invalid option: "constructor"/],
      [jsonObject([['toString', 'x'], ['uid', '1']]), /invalid option: "toString"/],
    ];
    for (const [opts, err] of cases) {
      const r = await s.call('/VolumeDriver.Create', `{"Name":"pv","Opts":${opts}}`);
      t.is(r.status, 400, opts);
      t.regex(String(r.json.Err), err, opts);
      t.is((await s.call('/VolumeDriver.Get', { Name: 'pv' })).status, 404, opts);
    }
    t.deepEqual(volumeDirs(s), []);
  });
});

test('parseOptions reads only the options given, never an inherited property', (t) => {
  const polluted = Object.prototype as Record<string, unknown>;
  polluted.layer = 'sha256:evil';
  polluted.device = '/etc';
  try {
    t.deepEqual(parseOptions(new Map()), { kind: 'named' });
    t.deepEqual(parseOptions(new Map([['mode', '0700']])), { kind: 'named', mode: 0o700 });
  } finally {
    delete polluted.layer;
    delete polluted.device;
  }
});

const badIds: [string, string][] = [
  ['a space', 'a b'],
  ['a newline', 'c1\n'],
  ['a control character', 'c\u0001'],
  ['non-ASCII', 'idé'],
  ['129 characters', 'a'.repeat(129)],
];

test('Mount and Unmount refuse malformed mount IDs with 400; 64 hex digits, 128 characters and the empty ID are accepted', async (t) => {
  await withServer(t, { mounts: false }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'ids', Opts: null });
    for (const [label, id] of badIds) {
      for (const op of ['Mount', 'Unmount']) {
        const r = await s.call(`/VolumeDriver.${op}`, { Name: 'ids', ID: id });
        t.is(r.status, 400, `${op} ${label}`);
        t.regex(String(r.json.Err), /^invalid mount ID .*: want at most 128 printable ASCII characters without spaces \(dockerd sends 64 hex digits\)$/, `${op} ${label}`);
      }
    }
    t.is((await mountStatus(s, 'ids')).mounts, 0);
    const good = ['0123456789abcdef'.repeat(4), 'x'.repeat(128), '', 'my-tool-exporting-42']; // csi-, tsvol-cli-: trust-hold-namespaces
    for (const id of good) await s.ok('/VolumeDriver.Mount', { Name: 'ids', ID: id });
    await s.ok('/VolumeDriver.Mount', { Name: 'ids' }); // no ID at all: an older engine, the empty ID
    t.is((await mountStatus(s, 'ids')).mounts, 5);
    for (const id of good) await s.ok('/VolumeDriver.Unmount', { Name: 'ids', ID: id });
    t.is((await mountStatus(s, 'ids')).mounts, 1);
  });
});

test('model fuzz: Create, Mount, Unmount and Remove with prototype names and IDs keep exact hold counts', async (t) => {
  await withServer(t, { mounts: false }, async (s) => {
    const names = fc.constantFrom(...PROTO_VOLUME_NAMES.slice(0, 4), 'plain');
    const ids = fc.constantFrom(...PROTO_NAMES, '', 'c1');
    const op = fc.oneof(
      fc.record({ kind: fc.constant('create' as const), name: names }),
      fc.record({ kind: fc.constantFrom('mount' as const, 'unmount' as const), name: names, id: ids }),
      fc.record({ kind: fc.constant('remove' as const), name: names }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
        /** The model: volume → mount ID → count. */
        const model = new Map<string, Map<string, number>>();
        const total = (name: string): number => [...(model.get(name)?.values() ?? [])].reduce((a, b) => a + b, 0);
        try {
          for (const o of ops) {
            const holds = model.get(o.name);
            if (o.kind === 'create') {
              await s.ok('/VolumeDriver.Create', { Name: o.name, Opts: null });
              if (holds === undefined) model.set(o.name, new Map());
            } else if (o.kind === 'mount') {
              const r = await s.call('/VolumeDriver.Mount', { Name: o.name, ID: o.id });
              if (r.status !== (holds === undefined ? 404 : 200)) return false;
              holds?.set(o.id, (holds.get(o.id) ?? 0) + 1);
            } else if (o.kind === 'unmount') {
              const r = await s.call('/VolumeDriver.Unmount', { Name: o.name, ID: o.id });
              if (r.status !== (holds === undefined ? 404 : 200)) return false;
              const n = holds?.get(o.id);
              if (n !== undefined) {
                if (n > 1) holds!.set(o.id, n - 1);
                else holds!.delete(o.id);
              }
            } else {
              const r = await s.call('/VolumeDriver.Remove', { Name: o.name });
              const want = holds === undefined ? 404 : total(o.name) > 0 ? 409 : 200;
              if (r.status !== want) return false;
              if (want === 200) model.delete(o.name);
            }
            for (const [name, h] of model) {
              const st = await mountStatus(s, name);
              if (st.mounts !== total(name)) return false;
              if (JSON.stringify([...st.holders].sort()) !== JSON.stringify([...h.keys()].sort())) return false;
            }
          }
          return true;
        } finally {
          for (const [name, h] of model) {
            for (const [id, n] of h) for (let i = 0; i < n; i++) await s.call('/VolumeDriver.Unmount', { Name: name, ID: id });
            await s.call('/VolumeDriver.Remove', { Name: name });
          }
        }
      }),
      { numRuns: 40 },
    );
    t.pass();
  });
});
