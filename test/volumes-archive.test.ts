/**
 * `tsvol volume export/import/clone` (#6): byte-exact round trips, hostile archives refused, crash-safe
 * import, and one truth with a running server (what the CLI imports, the socket serves at once).
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { createControlClient } from '../src/http/control-client.js';
import { CLI, startTestServer, withServer, type TestServer } from './helpers/server.js';
import { buildRichTree, snapshotTree } from './helpers/tree.js';
import { encodeHeader, type TarHeader } from '../src/layers/tar/format.js';
import { llistxattr } from '../src/sys/libc.js';
import { FILE_XATTRS, MTIME_NS, hexXattrs, readMeta } from './helpers/meta.js';

function cli(s: TestServer, args: string[], input?: Buffer): { status: number | null; stdout: Buffer; stderr: string } {
  const env = { ...process.env, TSVOL_DATA: s.data, TSVOL_SOCKET: s.socket, ...(s.mounts ? { TSVOL_MOUNTS: s.mounts } : {}) };
  const r = spawnSync(process.execPath, [CLI, ...args], { env, input, maxBuffer: 1 << 30 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

function header(p: string, type: TarHeader['type'], extra: Partial<TarHeader> = {}): Buffer {
  return encodeHeader({ path: p, type, mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map(), ...extra });
}

function tarOf(...blocks: Buffer[]): Buffer {
  return Buffer.concat([...blocks, Buffer.alloc(1024)]);
}

test('export → import round-trips owners, modes, xattrs, hardlinks, symlinks, devices; the server sees the import at once', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'orig', Opts: { uid: '33', mode: '0750' } });
    const orig = path.join(s.data, 'volumes', 'orig', '_data');
    buildRichTree(orig);
    for (const gzip of [false, true]) {
      const file = path.join(s.dir, `orig.tar${gzip ? '.gz' : ''}`);
      const exp = cli(s, ['volume', 'export', 'orig', '-o', file, ...(gzip ? ['--gzip'] : [])]);
      t.is(exp.status, 0, exp.stderr);
      const name = gzip ? 'copy-gz' : 'copy';
      const imp = cli(s, ['volume', 'import', name, file]);
      t.is(imp.status, 0, imp.stderr);
      // tar keeps whole seconds and writes sparse files densely: compare everything else exactly.
      const strip = (snap: Record<string, unknown>) =>
        Object.fromEntries(Object.entries(snap).map(([k, v]) => [k, { ...(v as object), mtimeNs: undefined }]));
      t.deepEqual(strip(snapshotTree(path.join(s.data, 'volumes', name, '_data'))), strip(snapshotTree(orig)));
      // One truth: the running server serves the CLI's volume without a restart.
      const mp = (await s.ok('/VolumeDriver.Mount', { Name: name, ID: 'c1' })).Mountpoint as string;
      t.is(fs.readFileSync(path.join(mp, 'dir/sub/plain.txt'), 'utf8'), 'hello\n');
      await s.ok('/VolumeDriver.Unmount', { Name: name, ID: 'c1' });
    }
    // Export of the import is byte-identical to the original export.
    const a = cli(s, ['volume', 'export', 'orig']).stdout;
    const b = cli(s, ['volume', 'export', 'copy']).stdout;
    t.true(a.equals(b), 'the same tar, byte for byte');
    const again = cli(s, ['volume', 'import', 'copy', path.join(s.dir, 'orig.tar')]);
    t.is(again.status, 1);
    t.regex(again.stderr, /volume "copy" already exists/);
  });
});

test('export of a volume in use says so on stderr; clone through the CLI goes through the server', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'busy', Opts: {} });
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'busy', ID: 'c1' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'f'), 'now');
    const exp = cli(s, ['volume', 'export', 'busy']);
    t.is(exp.status, 0);
    t.regex(exp.stderr, /volume "busy" is in use \(1 mount\(s\)\); exporting its contents as they are now/);
    t.true(exp.stdout.includes(Buffer.from('now')));
    const clone = cli(s, ['volume', 'clone', 'busy', 'busy2']);
    t.is(clone.status, 0, clone.stderr);
    const st = ((await s.ok('/VolumeDriver.Get', { Name: 'busy2' })).Volume as { Status: Record<string, unknown> }).Status;
    t.is(st.from, 'busy');
    const ls = cli(s, ['volume', 'ls', '--json']);
    t.deepEqual((JSON.parse(ls.stdout.toString()) as { name: string }[]).map((v) => v.name).sort(), ['busy', 'busy2']);
  });
});

test('hostile archives are refused and leave no volume behind', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const body = Buffer.alloc(512, 0);
    body.write('pwned');
    const cases: [string, Buffer][] = [
      ['absolute path', tarOf(header('/etc/evil', 'file', { size: 5 }), body)],
      ['dot-dot', tarOf(header('a/../../evil', 'file', { size: 5 }), body)],
      ['through a symlink', tarOf(header('link', 'symlink', { linkname: '/etc' }), header('link/evil', 'file', { size: 5 }), body)],
      ['hardlink outside', tarOf(header('hl', 'hardlink', { linkname: '../../etc/passwd' }))],
      ['truncated', header('cut', 'file', { size: 4096 })],
    ];
    for (const [what, tar] of cases) {
      const r = cli(s, ['volume', 'import', 'evil', '-'], tar);
      t.is(r.status, 1, what);
      t.regex(r.stderr, /import of volume "evil" refused/, what);
      t.is((await s.call('/VolumeDriver.Get', { Name: 'evil' })).json.Err, 'volume "evil" not found', what);
    }
    t.false(fs.existsSync('/etc/evil'));
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes')), []);
    t.deepEqual(fs.readdirSync(path.join(s.data, 'tmp')), []);
  });
});

test('a volume is a plain tree: files named .wh.* and 0/0 character devices round-trip as themselves (#9)', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const body = (text: string): Buffer => Buffer.concat([Buffer.from(text), Buffer.alloc(512 - text.length)]);
    const tar = tarOf(
      header('./', 'dir', { mode: 0o755, mtime: 1_600_000_000 }),
      header('.wh.x', 'file', { size: 5, mtime: 1_600_000_001 }),
      body('kept\n'),
      header('.wh..wh..opq', 'file', { mtime: 1_600_000_002 }),
      header('d/', 'dir', { mode: 0o750, mtime: 1_600_000_003 }),
      header('d/.wh..wh..opq', 'file', { mtime: 1_600_000_004 }),
      header('d/.wh.y', 'file', { mtime: 1_600_000_005 }),
      header('wo', 'char', { mode: 0o600, mtime: 1_600_000_006 }),
      header('x', 'file', { mtime: 1_600_000_007 }),
    );
    const imp = cli(s, ['volume', 'import', 'plain', '-'], tar);
    t.is(imp.status, 0, imp.stderr);
    const data = path.join(s.data, 'volumes', 'plain', '_data');
    t.is(fs.readFileSync(path.join(data, '.wh.x'), 'utf8'), 'kept\n', 'a regular file named .wh.x stays one');
    t.true(fs.lstatSync(path.join(data, 'x')).isFile(), 'and whites nothing out');
    t.true(fs.lstatSync(path.join(data, '.wh..wh..opq')).isFile());
    t.true(fs.lstatSync(path.join(data, 'd', '.wh..wh..opq')).isFile());
    t.true(fs.lstatSync(path.join(data, 'd', '.wh.y')).isFile());
    t.false(llistxattr(path.join(data, 'd')).includes('trusted.overlay.opaque'), 'no opaque marker');
    const wo = fs.lstatSync(path.join(data, 'wo'));
    t.true(wo.isCharacterDevice());
    t.is(wo.rdev, 0);
    const exp = cli(s, ['volume', 'export', 'plain']);
    t.is(exp.status, 0, exp.stderr);
    t.true(exp.stdout.includes(Buffer.from('wo\0')), 'the device is exported under its own name');
    t.false(exp.stdout.includes(Buffer.from('.wh.wo')), 'not as a whiteout');
    const again = cli(s, ['volume', 'import', 'plain2', '-'], exp.stdout);
    t.is(again.status, 0, again.stderr);
    t.deepEqual(snapshotTree(path.join(s.data, 'volumes', 'plain2', '_data')), snapshotTree(data));
    t.true(cli(s, ['volume', 'export', 'plain2']).stdout.equals(exp.stdout), 'the same tar, byte for byte');
  });
});

test('kill -9 during an import leaves no half volume; the next start removes its debris', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'src', Opts: {} });
    const data = path.join(s.data, 'volumes', 'src', '_data');
    for (let i = 0; i < 2000; i++) fs.writeFileSync(path.join(data, `f${i}`), Buffer.alloc(8192, i));
    const file = path.join(s.dir, 'src.tar');
    t.is(cli(s, ['volume', 'export', 'src', '-o', file]).status, 0);
    for (const delay of [250, 400, 550, 700]) {
      const env = { ...process.env, TSVOL_DATA: s.data, TSVOL_SOCKET: s.socket };
      const child = spawn(process.execPath, [CLI, 'volume', 'import', `half${delay}`, file], { env, stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      await exited;
      const r = await s.call('/VolumeDriver.Get', { Name: `half${delay}` });
      t.log(`killed after ${delay} ms: ${r.json.Err === '' ? 'whole' : 'none'}`);
      if (r.json.Err === '') t.is(fs.readdirSync(path.join(s.data, 'volumes', `half${delay}`, '_data')).length, 2000, 'whole');
      else t.false(fs.existsSync(path.join(s.data, 'volumes', `half${delay}`)), 'none');
    }
    await s.kill();
    const s2 = await startTestServer({ dir: s.dir });
    try {
      // Start-up deletes the debris in the background: wait for it (bounded), however loaded the machine.
      const debris = (): string[] => fs.readdirSync(path.join(s.data, 'tmp')).filter((e) => e.startsWith('new-'));
      for (let i = 0; i < 200 && debris().length > 0; i++) await new Promise((r) => setTimeout(r, 50));
      t.deepEqual(debris(), []);
    } finally {
      await s2.kill();
    }
  });
});

test('import gives entries and the root owners, set-id modes, file xattrs and pax mtimes to the nanosecond; never overlay xattrs (#10)', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    const mtime = Number(MTIME_NS) / 1e9;
    const body = Buffer.alloc(512, 0);
    body.write('file body\n');
    const tar = tarOf(
      header('./', 'dir', { mode: 0o2750, uid: 5, gid: 6, mtime, mtimeNs: MTIME_NS + 7n, xattrs: new Map([['user.root', Buffer.from('r')], ['trusted.overlay.opaque', Buffer.from('y')]]) }),
      header('f', 'file', { size: 10, mode: 0o4755, uid: 1000, gid: 1001, mtime, mtimeNs: MTIME_NS, xattrs: new Map(FILE_XATTRS) }),
      body,
    );
    const r = cli(s, ['volume', 'import', 'nsvol', '-'], tar);
    t.is(r.status, 0, r.stderr);
    const data = path.join(s.data, 'volumes', 'nsvol', '_data');
    // XATTRS.fileOnly, as for layers: an archive never sets trusted.overlay.* (#9).
    const fileXattrs = hexXattrs(FILE_XATTRS, ['user.k', 'security.capability']);
    t.deepEqual(readMeta(path.join(data, 'f')), { uid: 1000, gid: 1001, mode: '104755', xattrs: fileXattrs, atimeNs: MTIME_NS, mtimeNs: MTIME_NS });
    t.like(readMeta(data), { uid: 5, gid: 6, mode: '42750', xattrs: { 'user.root': Buffer.from('r').toString('hex') }, mtimeNs: MTIME_NS + 7n });
  });
});

test('an upload refused before its end gets its refusal, never a closed connection (import into a taken name, a hostile entry first)', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'taken' });
    const client = createControlClient(path.join(s.data, 'control.sock'));
    const filler = Buffer.alloc(1 << 20, 7);
    // 16 MiB after the refused part: far more than the sockets buffer, so the server answers mid-upload.
    async function* upload(first: Buffer): AsyncGenerator<Buffer> {
      yield first;
      for (let i = 0; i < 16; i += 1) yield filler;
    }
    const evil = Buffer.concat([header('/etc/evil', 'file', { size: 16 << 20 })]);
    for (let i = 0; i < 15; i += 1) {
      await t.throwsAsync(client.volumes.import('taken', upload(Buffer.alloc(0))), { message: /volume "taken" already exists/ }, `taken, round ${i}`);
      await t.throwsAsync(client.volumes.import('evil', upload(evil)), { message: /import of volume "evil" refused/ }, `hostile, round ${i}`);
    }
    const viaCli = cli(s, ['volume', 'import', 'taken', '-'], Buffer.concat([...Array.from({ length: 16 }, () => filler)]));
    t.is(viaCli.status, 1);
    t.regex(viaCli.stderr, /volume "taken" already exists/);
    // The server lives on and the refused names changed nothing.
    t.is((await s.call('/VolumeDriver.Get', { Name: 'evil' })).json.Err, 'volume "evil" not found');
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes')).sort(), ['taken']);
  });
});
