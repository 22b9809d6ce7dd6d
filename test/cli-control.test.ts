/**
 * One path to the state (#9 §6): the `tsvol` CLI is a client of the running server through
 * TSVOL_DATA/control.sock, found without TSVOL_SOCKET; with no server it holds the server lock for its whole
 * run. The server runs in a mount namespace of its own here, as a managed plugin does: its loop mounts are
 * invisible to the CLI's process, so only the server can read a held sized volume.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { requireTools } from './helpers/require.js';
import { CLI, MAIN, cleanupDir, isMounted, post, requireRoot, tempDir, withServer, type TestServer } from './helpers/server.js';
import { encodeHeader } from '../src/layers/tar/format.js';

requireTools('unshare', 'nsenter', 'mkfs.ext4', 'touch', 'chmod');

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

// `tsvol layer …` and `tsvol container …` are clients too (#10): the same commands, the same output.
// Serial (ava runs them before the others): each starts a server and a dozen CLI processes, and on two
// shared cores the volume tests above, whose commands wait at most 30 s for the lock, must not queue behind them.

/** A tar of regular files and directories (paths ending in /), with fixed owners, modes and times. */
function tarOf(files: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  const head = (p: string, type: 'file' | 'dir', size: number): Buffer =>
    encodeHeader({ path: p, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, size, mtime: 1_700_000_000, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map() });
  for (const [p, body] of Object.entries(files)) {
    if (p.endsWith('/')) {
      parts.push(head(p, 'dir', 0));
      continue;
    }
    const data = Buffer.from(body);
    parts.push(head(p, 'file', data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/**
 * One step of the layer story: a command (with its standard input; `<committed>` in its arguments stands
 * for the layer the last container commit printed), or a write of `write` into container c1.
 */
type Step = { args: string[]; input?: Buffer; sortJson?: boolean } | { write: string };

/** What a command showed the user. */
interface Shown {
  args: string;
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `steps` on the data root `data`, writing into the container with `write`. What must differ between
 * two data roots becomes a placeholder: the data root's path and timestamps. Every other byte, exit code
 * and message is kept (layer IDs too: the tars and the write have fixed contents, modes and times).
 */
function story(data: string, steps: Step[], write: (file: string) => void, env: Record<string, string>): Shown[] {
  const shown: Shown[] = [];
  let committed: string | undefined;
  for (const step of steps) {
    if ('write' in step) {
      write(path.join(data, 'layers', 'containers', 'c1', 'merged', step.write));
      continue;
    }
    const args = step.args.map((a) => (a === '<committed>' && committed !== undefined ? committed : a));
    const r = spawnSync(process.execPath, [CLI, ...args], { env: cliEnv(data, env), input: step.input, maxBuffer: 1 << 26 });
    let stdout = r.stdout.toString('latin1');
    if (args[0] === 'container' && args[1] === 'commit' && r.status === 0) committed = stdout.trim();
    stdout = stdout.split(data).join('<data>').replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/g, '<time>');
    if (step.sortJson === true && r.status === 0) stdout = `${JSON.stringify((JSON.parse(stdout) as string[]).sort())}\n`;
    shown.push({ args: step.args.join(' '), status: r.status, stdout, stderr: r.stderr.toString().split(data).join('<data>') });
  }
  return shown;
}

test.serial('with a server running, every layer and container command is a request to it, and shows exactly what it shows without one', async (t) => {
  if (!requireRoot(t)) return;
  const base = tarOf({ 'etc/': '', 'etc/app.conf': 'from the base\n', 'old.txt': 'old\n' });
  const child = tarOf({ 'etc/': '', 'etc/extra.conf': 'from the child\n' });
  const scratch = tempDir('tsvol-cli-layers-');
  // Both sides on overlay, the server's probe in its own namespace notwithstanding.
  const driver = { TSVOL_LAYER_DRIVER: 'overlay' };
  try {
    const childFile = path.join(scratch, 'child.tar');
    fs.writeFileSync(childFile, child);
    const baseId = `sha256:${createHash('sha256').update(base).digest('hex')}`;
    const steps: Step[] = [
      { args: ['layer', 'import', '-'], input: base },
      { args: ['layer', 'tag', baseId, 'base:1'] },
      { args: ['layer', 'import', childFile, '--parent', 'base:1'] },
      { args: ['layer', 'ls'] },
      { args: ['layer', 'ls', '--json'] },
      { args: ['layer', 'history', 'base:1'] },
      { args: ['layer', 'history', baseId.slice(7, 19), '--json'] },
      { args: ['layer', 'export', 'base:1'] },
      { args: ['layer', 'export', 'nope'] },
      { args: ['layer', 'export', ''] },
      { args: ['layer', 'history', '..'] },
      { args: ['layer', 'import', '-', '--parent', 'nope'], input: base },
      { args: ['layer', 'import', '-'], input: Buffer.from('not a tar at all') },
      { args: ['layer', 'tag', baseId, '.bad'] },
      { args: ['layer', 'rm', baseId] },
      { args: ['container', 'create', 'c1', '--from', 'base:1'] },
      { args: ['container', 'create', 'c1', '--from', 'base:1'] },
      { args: ['container', 'create', 'bad/name', '--from', 'base:1'] },
      { args: ['container', 'create', 'c2', '--from', 'nope'] },
      { write: 'new.txt' },
      { args: ['container', 'diff', 'c1'] },
      { args: ['container', 'diff', 'c1', '--json'] },
      { args: ['container', 'commit', 'c1'] },
      { args: ['container', 'diff', 'c1'] },
      { args: ['container', 'mount', 'c1'] },
      { args: ['layer', 'history', '<committed>'] },
      { args: ['container', 'rm', 'c1'] },
      { args: ['container', 'rm', 'c1'] },
      { args: ['container', 'diff', 'nope'] },
      { args: ['layer', 'rm', 'base:1'] },
      { args: ['layer', 'gc', '--json'], sortJson: true },
      { args: ['layer', 'gc'] },
      { args: ['layer', 'ls', '--json'] },
    ];

    let served: Shown[] = [];
    await withServer(t, { prefix: OWN_NAMESPACE, env: driver }, async (s) => {
      served = story(
        s.data,
        steps,
        (file) => {
          // The container is the server's: mounted in its mount namespace, not in this one.
          const merged = path.dirname(file);
          t.true(mountedIn(s.proc.pid!, merged), 'mounted by the server');
          t.false(mountedIn(process.pid, merged), 'not by the CLI');
          inServerNamespace(s, `printf 'written inside\\n' > ${file} && chmod 644 ${file} && touch -d @1700000000 ${file}`);
        },
        {},
      );
      const ops = (): string[] => controlRequests(s).map((l) => String(l.op));
      const commands = steps.filter((st) => 'args' in st).length;
      await until('the server to log every command', () => ops().length === commands);
      t.deepEqual(
        [...new Set(ops())].sort(),
        ['container.commit', 'container.create', 'container.diff', 'container.mount', 'container.rm', 'layer.export', 'layer.gc', 'layer.history', 'layer.import', 'layer.ls', 'layer.rm', 'layer.tag'],
        'the server served every command',
      );
      t.like(
        controlRequests(s).find((l) => l.op === 'layer.export' && l.layer === 'nope'),
        { status: 404, code: 'TSVOL_NOT_FOUND' },
        'the error keeps its kind on the wire',
      );
    });

    const alone = story(
      path.join(scratch, 'alone'),
      steps,
      (file) => {
        fs.writeFileSync(file, 'written inside\n');
        fs.chmodSync(file, 0o644);
        fs.utimesSync(file, 1_700_000_000, 1_700_000_000);
      },
      driver,
    );
    t.deepEqual(served, alone);
    // The story did what it says (not merely the same wrong thing twice).
    const byArgs = (a: string): Shown[] => alone.filter((x) => x.args === a);
    t.is(byArgs('layer import -')[0]!.stdout, `${baseId}\n`);
    t.is(byArgs('layer export base:1')[0]!.stdout, base.toString('latin1'), 'byte-identical export');
    t.like(byArgs('layer export nope')[0], { status: 1, stdout: '', stderr: 'tsvol: layer "nope" not found; `tsvol layer ls` lists layers\n' });
    t.like(byArgs('layer export ')[0], { status: 1, stderr: 'tsvol: layer "" not found; `tsvol layer ls` lists layers\n' });
    t.regex(byArgs(`layer rm ${baseId}`)[0]!.stderr, /is held by/);
    t.is(byArgs('container create c1 --from base:1')[0]!.stdout, '<data>/layers/containers/c1/merged\n');
    t.regex(byArgs('container create c1 --from base:1')[1]!.stderr, /already exists/);
    t.deepEqual(byArgs('container diff c1').map((x) => x.stdout), ['A /new.txt\n', '']);
    t.regex(byArgs('container commit c1')[0]!.stdout, /^sha256:[0-9a-f]{64}\n$/);
    t.is(byArgs('layer history <committed>')[0]!.stdout.split('\n').length, 4, 'header, the commit, the base');
    t.is(byArgs('layer gc')[0]!.stdout, '');
    t.is(byArgs('layer ls --json').at(-1)!.stdout, '[]\n');
  } finally {
    cleanupDir(scratch);
  }
});

test.serial('with no server, a layer import holds the server lock for its whole run: a container command and a server started meanwhile wait, then find the whole layer', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir();
  const data = path.join(dir, 'data');
  const socket = path.join(dir, 'tsvol.sock');
  const children: ChildProcess[] = [];
  /** A child's output so far and its exit code (after its output: `close`). */
  const run = (argv: string[], env: NodeJS.ProcessEnv, stdin: 'pipe' | 'ignore') => {
    const child = spawn(argv[0]!, argv.slice(1), { env, stdio: [stdin, 'pipe', 'pipe'] });
    children.push(child);
    const out = { stdout: '', stderr: '' };
    child.stdout!.on('data', (c: Buffer) => (out.stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (out.stderr += c.toString()));
    return { child, out, closed: new Promise<number | null>((r) => child.once('close', r)) };
  };
  try {
    const files = 400;
    const entries: Record<string, string> = {};
    for (let i = 0; i < files; i++) entries[`f${i}`] = `file ${i}\n`;
    const tar = tarOf(entries);
    const layerId = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
    const half = 200 * 1024;

    // The import reads standard input, which this test feeds: half now, the rest once the others wait.
    const importer = run([process.execPath, CLI, 'layer', 'import', '-'], cliEnv(data), 'pipe');
    importer.child.stdin!.write(tar.subarray(0, half));
    const staging = (): string[] => (fs.existsSync(path.join(data, 'layers', 'tmp')) ? fs.readdirSync(path.join(data, 'layers', 'tmp')) : []);
    await until('the import to start unpacking', () => staging().length > 0, 30_000);
    t.is(fs.readFileSync(path.join(data, 'server.lock'), 'utf8'), `${importer.child.pid} tsvol server\n`, 'the import holds the server lock');

    const env: NodeJS.ProcessEnv = { ...process.env, TSVOL_SOCKET: socket, TSVOL_DATA: data, TSVOL_LOG_LEVEL: 'info' };
    delete env.TSVOL_MOUNTS;
    const server = run([process.execPath, MAIN], env, 'ignore');
    await until('the server to say it waits', () => server.out.stdout.includes('waiting for another process holding the data root'), 30_000);
    // A container command without a server waits too, rather than working beside the import.
    const creator = run([process.execPath, CLI, 'container', 'create', 'c1', '--from', layerId], cliEnv(data), 'ignore');
    await new Promise((r) => setTimeout(r, 2000));
    t.false(server.out.stdout.includes('tsvol listening'), 'the server has not started');
    t.is(creator.child.exitCode, null, 'the container command is still waiting');
    t.true(staging().length > 0, "the import's stage is intact");

    importer.child.stdin!.end(tar.subarray(half));
    t.is(await importer.closed, 0, importer.out.stderr);
    t.is(importer.out.stdout, `${layerId}\n`);
    t.is(await creator.closed, 0, creator.out.stderr);
    const merged = path.join(data, 'layers', 'containers', 'c1', 'merged');
    t.is(creator.out.stdout, `${merged}\n`);
    t.is(fs.readdirSync(merged).length, files, 'the container sits on the whole layer');
    await until('the server to start', () => server.out.stdout.includes('tsvol listening'), 60_000);

    // Now the server answers: the next command is its request.
    const ls = cli(data, ['layer', 'ls', '--json']);
    t.is(ls.status, 0, ls.stderr);
    t.deepEqual((JSON.parse(ls.stdout.toString()) as { id: string }[]).map((l) => l.id), [layerId]);
    await until('the server to log the request', () => server.out.stdout.includes('"op":"layer.ls"'));
    const rm = cli(data, ['container', 'rm', 'c1']);
    t.is(rm.status, 0, rm.stderr);
    t.false(isMounted(merged));
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    cleanupDir(dir);
  }
});
