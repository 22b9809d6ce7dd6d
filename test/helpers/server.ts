/**
 * Test harness: runs the real server (`node dist/main.js`) in a temp directory and speaks to it over its
 * Unix socket the way dockerd does (POST, JSON body, `Accept: application/vnd.docker.plugins.v1.2+json`,
 * no Content-Type). `npm test` builds dist/ first.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireTools } from './require.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MAIN = path.join(ROOT, 'dist', 'main.js');
export const CLI = path.join(ROOT, 'dist', 'cli.js');

/** A reply as seen on the wire. */
export interface Reply {
  status: number;
  contentType: string | undefined;
  raw: string;
  json: Record<string, unknown>;
}

/** Options for a test server. */
export interface ServerOptions {
  /** Reuse this data root (restart tests). */
  dir?: string;
  /** Set TSVOL_MOUNTS (default true). */
  mounts?: boolean;
  bindRoots?: string[];
  env?: Record<string, string>;
  /** A command the server runs under, e.g. `['unshare', '-m', '--propagation', 'private']` (its own mounts). */
  prefix?: string[];
  /** How long to wait for the socket to answer (default 15 s). */
  startMs?: number;
  /** Serve CSI too, on `<dir>/csi.sock` (TSVOL_CSI_SOCKET, #12). */
  csi?: boolean;
}

/** A server under test. */
export interface TestServer {
  readonly dir: string;
  readonly socket: string;
  readonly data: string;
  readonly mounts: string | undefined;
  /** The CSI socket, when started with `csi: true`. */
  readonly csiSocket: string | undefined;
  readonly proc: ChildProcess;
  /** Everything the server wrote to stdout/stderr. */
  output(): string;
  /** POST `body` (an object, or a raw string sent as is) to `/endpoint`. */
  call(endpoint: string, body?: unknown): Promise<Reply>;
  /** Like call, but fails unless the reply is 200 with Err "". */
  ok(endpoint: string, body?: unknown): Promise<Record<string, unknown>>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
  /** SIGTERM and wait for the exit code. */
  stop(): Promise<number | null>;
}

/** POSTs to a Unix socket as dockerd does. */
export function post(socket: string, endpoint: string, body: unknown): Promise<Reply> {
  const payload = typeof body === 'string' ? body : JSON.stringify(body ?? null);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath: socket,
        method: 'POST',
        path: endpoint,
        headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(payload) },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const raw = Buffer.concat(chunks).toString('utf8');
          let json: Record<string, unknown> = {};
          try {
            json = JSON.parse(raw) as Record<string, unknown>;
          } catch {
            json = { __notJson: raw };
          }
          resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'], raw, json });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

function waitForSocket(socket: string, proc: ChildProcess, output: () => string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (proc.exitCode !== null) return reject(new Error(`server exited ${proc.exitCode}: ${output()}`));
      post(socket, '/VolumeDriver.Capabilities', null).then(
        () => resolve(),
        () => (Date.now() > deadline ? reject(new Error(`server did not start: ${output()}`)) : setTimeout(tick, 50)),
      );
    };
    tick();
  });
}

/** A fresh temp directory under /var/tmp (a real disk, not tmpfs). */
export function tempDir(prefix = 'tsvol-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir() === '/tmp' ? '/var/tmp' : os.tmpdir(), prefix));
}

// A server start costs about a second of CPU, and all of a file's tests start theirs at once: thirty
// together took 27 s on a 2-core machine, past waitForSocket's deadline. So a worker starts at most one per
// core at a time, and the deadline measures one start, not a queue (#9 §1).
let startSlots = Math.max(1, os.availableParallelism());
const startQueue: (() => void)[] = [];
async function takeStartSlot(): Promise<void> {
  if (startSlots > 0) startSlots--;
  else await new Promise<void>((resolve) => startQueue.push(resolve));
}
function releaseStartSlot(): void {
  const next = startQueue.shift();
  if (next !== undefined) next();
  else startSlots++;
}

/** Starts a server; resolves once its socket answers. */
export async function startTestServer(opts: ServerOptions = {}): Promise<TestServer> {
  const dir = opts.dir ?? tempDir();
  const socket = path.join(dir, 'tsvol.sock');
  const data = path.join(dir, 'data');
  const mounts = opts.mounts === false ? undefined : path.join(dir, 'mnt');
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    TSVOL_SOCKET: socket,
    TSVOL_DATA: data,
    TSVOL_BIND_ROOTS: (opts.bindRoots ?? []).join(':'),
    TSVOL_LOG_LEVEL: 'info',
    ...opts.env,
  };
  if (mounts !== undefined) env.TSVOL_MOUNTS = mounts;
  else delete env.TSVOL_MOUNTS;
  // A test's own TSVOL_MOUNTS (a path through a symlink, say) wins over the default.
  if (opts.env?.TSVOL_MOUNTS !== undefined) env.TSVOL_MOUNTS = opts.env.TSVOL_MOUNTS;
  const csiSocket = opts.csi === true ? path.join(dir, 'csi.sock') : undefined;
  if (csiSocket !== undefined) env.TSVOL_CSI_SOCKET = csiSocket;
  await takeStartSlot();
  const argv = [...(opts.prefix ?? []), process.execPath, MAIN];
  const proc = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const output = (): string => out;
  try {
    await waitForSocket(socket, proc, output, opts.startMs);
  } catch (err) {
    // A server too slow to answer would outlive the test (and its worker): end it before failing.
    proc.kill('SIGKILL');
    await exited;
    throw err;
  } finally {
    releaseStartSlot();
  }
  const server: TestServer = {
    dir,
    socket,
    data,
    mounts,
    csiSocket,
    proc,
    output,
    call: (endpoint, body) => post(socket, endpoint, body),
    async ok(endpoint, body) {
      const r = await post(socket, endpoint, body);
      if (r.status !== 200 || r.json.Err !== '' && r.json.Err !== undefined) {
        throw new Error(`${endpoint} ${JSON.stringify(body)} → ${r.status} ${r.raw}`);
      }
      return r.json;
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
  return server;
}

/** Unmounts everything under `dir` (deepest first) and deletes it. For test teardown. */
export function cleanupDir(dir: string): void {
  requireTools('umount'); // without it, rmSync below would delete through the mounts
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const points = text
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const p of points) {
    // Teardown only: a lazy unmount never blocks on a busy mount; rmSync below reports what is left.
    spawnSync('umount', ['-l', p], { stdio: 'ignore' });
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

/** True if `p` is a mountpoint now. */
export function isMounted(p: string): boolean {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === p);
}

/**
 * Makes directory `dir` a shared mount (a bind onto itself) and `peer` its peer (a bind of it), as a managed
 * plugin's propagatedMount is with the host's view of it, or kubelet's directory between a node plugin and
 * the host: what is mounted below one then appears below the other. Both directories are made; the caller
 * unmounts them (`umount -R`, or cleanupDir of a directory holding them).
 */
export function sharedWithPeer(dir: string, peer: string): void {
  fs.mkdirSync(dir);
  fs.mkdirSync(peer);
  for (const args of [['--bind', dir, dir], ['--make-shared', dir], ['--bind', dir, peer]]) {
    const r = spawnSync('mount', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mount ${args.join(' ')}: ${r.stderr}`);
  }
}

/** Fails under CI=true, else skips loudly: for tests that need root. */
export function requireRoot(t: { log: (m: string) => void }): boolean {
  if (process.getuid?.() === 0) return true;
  if (process.env.CI === 'true') throw new Error('these tests need root (mounts); CI runs as root');
  t.log('SKIPPED LOUDLY: not root, cannot mount');
  return false;
}

/**
 * Runs `fn` against a fresh server and always kills it and removes its directory (unmounting first).
 * With `root: true`, needs root (see requireRoot).
 */
export async function withServer(
  t: { log: (m: string) => void },
  opts: ServerOptions & { root?: boolean },
  fn: (s: TestServer) => Promise<void>,
): Promise<void> {
  if (opts.root === true && !requireRoot(t)) return;
  const s = await startTestServer(opts);
  try {
    await fn(s);
  } finally {
    await s.kill();
    cleanupDir(s.dir);
  }
}
