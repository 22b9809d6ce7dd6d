/**
 * One path to the state (#9 §6): the `tsvol` CLI is a client of the running server through
 * TSVOL_DATA/control.sock, found without TSVOL_SOCKET; with no server it holds the server lock for its whole
 * run. The server runs in a mount namespace of its own here, as a managed plugin does: its loop mounts are
 * invisible to the CLI's process, so only the server can read a held sized volume.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { requireTools } from './helpers/require.js';
import { CLI, MAIN, cleanupDir, post, requireRoot, tempDir, withServer, type TestServer } from './helpers/server.js';
import { encodeHeader } from '../src/layers/tar/format.js';

requireTools('unshare', 'nsenter', 'mkfs.ext4');

/** The server in a private mount namespace (util-linux unshare execs node: the pid is the server's). */
const OWN_NAMESPACE = ['unshare', '-m', '--propagation', 'private'];

/** The CLI's environment: the data root only, never the VolumeDriver socket (unless `extra` sets one). */
function cliEnv(data: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.TSVOL_SOCKET;
  delete env.TSVOL_MOUNTS;
  return { ...env, TSVOL_DATA: data, ...extra };
}

function cli(data: string, args: string[], extra: Record<string, string> = {}): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: cliEnv(data, extra), maxBuffer: 1 << 30 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/**
 * Runs `script` inside the server's mount namespace, as a container of a managed plugin writes (`-r`: with
 * the server's root too, which differs from the namespace's own in a chroot such as scripts/bare-root-check.sh).
 */
function inServerNamespace(s: TestServer, script: string): void {
  const r = spawnSync('nsenter', ['-t', String(s.proc.pid), '-m', '-r', 'sh', '-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nsenter ${script}: ${r.status} ${r.stderr}`);
}

/** True if `p` is a mountpoint in process `pid`'s mount namespace. */
function mountedIn(pid: number, p: string): boolean {
  return fs
    .readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === p);
}

async function status(s: TestServer, name: string): Promise<{ mounts: number; holders: string[] }> {
  return ((await s.ok('/VolumeDriver.Get', { Name: name })).Volume as { Status: { mounts: number; holders: string[] } }).Status;
}

/** The server's log lines for control requests. */
function controlRequests(s: TestServer): Record<string, unknown>[] {
  return s
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.api === 'control' && l.msg === 'request');
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('a held sized volume is exported from the server\'s view: what its user wrote, though the CLI cannot see the mount', async (t) => {
  await withServer(t, { root: true, prefix: OWN_NAMESPACE }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'sized', Opts: { size: '32m' } });
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'sized', ID: 'c1' })).Mountpoint as string;
    inServerNamespace(s, `echo written-by-the-container > ${mp}/proof.txt`);
    // As with the managed plugin: the host sees neither the mountpoint's contents nor the image's.
    t.false(fs.existsSync(path.join(mp, 'proof.txt')));
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes', 'sized', '_data')), []);

    const exp = cli(s.data, ['volume', 'export', 'sized']);
    t.is(exp.status, 0, exp.stderr);
    t.true(exp.stdout.includes(Buffer.from('proof.txt')), 'the file is in the export');
    t.true(exp.stdout.includes(Buffer.from('written-by-the-container\n')));
    t.regex(exp.stderr, /volume "sized" is in use \(1 mount\(s\)\); exporting its contents as they are now/);
    // Found by the control socket alone: no TSVOL_SOCKET, or a wrong one, changes nothing.
    const wrong = cli(s.data, ['volume', 'export', 'sized'], { TSVOL_SOCKET: path.join(s.dir, 'nothing-here.sock') });
    t.is(wrong.status, 0, wrong.stderr);
    t.true(wrong.stdout.includes(Buffer.from('written-by-the-container\n')));
    // The server logs a request once it has ended, which may be just after the CLI exits.
    const exports = () => controlRequests(s).filter((l) => l.op === 'export' && l.volume === 'sized' && l.status === 200);
    await until('the server to log both exports', () => exports().length === 2);
    t.is(exports().length, 2, 'the server served both exports');
    const inspect = JSON.parse(cli(s.data, ['volume', 'inspect', 'sized']).stdout.toString()) as { status: { usage: { files: number } } };
    t.true(inspect.status.usage.files >= 2, 'usage measured on the mounted image');
    t.like(await status(s, 'sized'), { mounts: 1, holders: ['c1'] }, 'the exports\' own holds are gone');
    t.is(fs.statSync(path.join(s.data, 'control.sock')).mode & 0o777, 0o600, 'only root reaches the control API');
    await s.ok('/VolumeDriver.Unmount', { Name: 'sized', ID: 'c1' });
    t.false(mountedIn(s.proc.pid!, path.join(s.data, 'volumes', 'sized', '_data')));
  });
});

test('an export through the server holds an idle loop-backed volume for the stream only, also when the client is killed mid-stream', async (t) => {
  await withServer(t, { root: true, prefix: OWN_NAMESPACE }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'big', Opts: { size: '64m' } });
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'big', ID: 'c1' })).Mountpoint as string;
    inServerNamespace(s, `dd if=/dev/urandom of=${mp}/blob bs=1M count=40 2>/dev/null && echo tail-marker > ${mp}/z.txt`);
    await s.ok('/VolumeDriver.Unmount', { Name: 'big', ID: 'c1' });
    const data = path.join(s.data, 'volumes', 'big', '_data');
    t.false(mountedIn(s.proc.pid!, data));

    const whole = cli(s.data, ['volume', 'export', 'big']);
    t.is(whole.status, 0, whole.stderr);
    t.true(whole.stdout.length > 40 << 20);
    t.true(whole.stdout.includes(Buffer.from('tail-marker\n')));
    t.is(whole.stderr, '', 'an idle volume is not "in use"');
    t.like(await status(s, 'big'), { mounts: 0, holders: [] });
    t.false(mountedIn(s.proc.pid!, data), 'the image is unmounted after the export');

    // A client that never reads: the server's stream stalls with the hold taken; then the client dies.
    const child: ChildProcess = spawn(process.execPath, [CLI, 'volume', 'export', 'big'], { env: cliEnv(s.data), stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      await until('the export to hold the volume', async () => (await status(s, 'big')).mounts === 1);
      const held = await status(s, 'big');
      t.regex(held.holders[0] ?? '', /^tsvol-cli-exporting-/);
      t.true(mountedIn(s.proc.pid!, data));
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    await until('the hold to be released', async () => (await status(s, 'big')).mounts === 0);
    t.like(await status(s, 'big'), { mounts: 0, holders: [] });
    await until('the image to be unmounted', () => !mountedIn(s.proc.pid!, data));
    await until('the server to log the cut-off export', () => controlRequests(s).some((l) => l.op === 'export' && l.aborted === true));
    await s.ok('/VolumeDriver.Remove', { Name: 'big' });
  });
});

test('with no server, a CLI import holds the server lock for its whole run: a server started meanwhile waits, then lists the whole volume', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir();
  const data = path.join(dir, 'data');
  const socket = path.join(dir, 'tsvol.sock');
  const children: ChildProcess[] = [];
  try {
    const files = 400;
    const blocks: Buffer[] = [];
    for (let i = 0; i < files; i++) {
      const body = Buffer.alloc(512, 0);
      body.write(`file ${i}\n`);
      blocks.push(encodeHeader({ path: `f${i}`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: `file ${i}\n`.length, mtime: 0, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map() }), body);
    }
    const tar = Buffer.concat([...blocks, Buffer.alloc(1024)]);
    const half = 200 * 1024;

    // The import reads standard input, which this test feeds: half now, the rest once the server has waited.
    const importer = spawn(process.execPath, [CLI, 'volume', 'import', 'slow', '-'], { env: cliEnv(data), stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(importer);
    let importOut = '';
    importer.stdout.on('data', (c: Buffer) => (importOut += c.toString()));
    importer.stderr.on('data', (c: Buffer) => (importOut += c.toString()));
    const imported = new Promise<number | null>((r) => importer.once('close', r)); // close: after its output
    importer.stdin.write(tar.subarray(0, half));
    const staging = (): string[] => (fs.existsSync(path.join(data, 'tmp')) ? fs.readdirSync(path.join(data, 'tmp')) : []);
    await until('the import to start unpacking', () => staging().length > 0, 30_000);

    let out = '';
    const env: NodeJS.ProcessEnv = { ...process.env, TSVOL_SOCKET: socket, TSVOL_DATA: data, TSVOL_LOG_LEVEL: 'info' };
    delete env.TSVOL_MOUNTS;
    const server = spawn(process.execPath, [MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(server);
    server.stdout.on('data', (c: Buffer) => (out += c.toString()));
    server.stderr.on('data', (c: Buffer) => (out += c.toString()));
    await until('the server to say it waits', () => out.includes('waiting for another process holding the data root'), 30_000);
    // Another command without a server waits too, rather than working beside the import.
    const lister = spawn(process.execPath, [CLI, 'volume', 'ls', '--json'], { env: cliEnv(data), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(lister);
    let listed = '';
    lister.stdout.on('data', (c: Buffer) => (listed += c.toString()));
    const listerExited = new Promise<number | null>((r) => lister.once('close', r));
    await new Promise((r) => setTimeout(r, 2000));
    t.false(out.includes('tsvol listening'), 'the server has not started');
    t.false(fs.existsSync(socket));
    t.is(lister.exitCode, null, 'the second command is still waiting');
    t.true(staging().length > 0, 'the import\'s staging directory is intact');

    importer.stdin.end(tar.subarray(half));
    t.is(await imported, 0, importOut);
    t.is(importOut.trim(), 'slow');
    await until('the server to start', () => out.includes('tsvol listening'), 60_000);
    t.is(await listerExited, 0);
    t.true((JSON.parse(listed) as { name: string }[]).some((v) => v.name === 'slow'), listed);
    const list = await post(socket, '/VolumeDriver.List', null);
    t.deepEqual((list.json.Volumes as { Name: string }[]).map((v) => v.Name), ['slow']);
    const vdata = path.join(data, 'volumes', 'slow', '_data');
    t.is(fs.readdirSync(vdata).length, files, 'the whole volume');
    t.is(fs.readFileSync(path.join(vdata, `f${files - 1}`), 'utf8'), `file ${files - 1}\n`);
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    cleanupDir(dir);
  }
});
