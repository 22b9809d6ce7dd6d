/**
 * A real two-node Docker Swarm over a real GlusterFS volume, built and torn down by the test (issue #14):
 * - network namespaces `tsvolc-{sw,gl,n1,n2}`: a bridge in `sw`, a veth pair from it into each of the
 *   others, addresses on 198.18.77.0/24 (RFC 2544's benchmarking range) inside those namespaces only: no
 *   route out, no NAT, no address on the host, so no packet leaves them;
 * - glusterd (its own working directory, run directory and CLI socket) in `gl`, a one-brick volume on a
 *   local directory (`force`), started;
 * - per node, its own FUSE mount of that volume (`mount -t glusterfs` run in the node's namespace, so the
 *   client talks to glusterd over the veths): bytes written on one node cross GlusterFS to reach the other;
 * - per node, a dockerd in its namespace (`nsenter --net`, which keeps the cgroup mounts `ip netns exec`
 *   loses; its own UTS namespace, so Swarm names the nodes `tsvolc-n1`, `tsvolc-n2`) with its own data-root,
 *   exec-root, socket and pid file beside the host's dockerd, which it never touches;
 * - a Swarm (n1 the manager), the busybox test image and the tsvol managed plugin on each node, built from
 *   this checkout's rootfs, in cluster mode (`TSVOL_SCOPE=global`, `TSVOL_NODE_ID` = the node's name, a
 *   short `TSVOL_LEASE_SECONDS`, `data.source` = one directory on the shared volume through the node's own
 *   mount), or in local mode (each node its own data root on its own subdirectory of the volume).
 * Everything lives under fixed paths (WORK, RUN) and names, so that a run killed half-way is found and
 * removed by the next one's setup as by teardown: processes, mounts, loop devices, namespaces, files. The
 * engine lock (test/helpers/docker.ts) is held from setup to teardown: the cluster never shares the
 * machine's two cores with another dockerd suite.
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { acquireLock } from '../../src/sys/lock.js';
import { DOCKER, DOCKERD, ENGINE_LOCK, ENGINE_WAIT_MS, IMAGE, importTestImage } from './docker.js';
import { requireTools } from './require.js';
import { ROOT } from './server.js';

/** Data roots, the brick, the nodes' GlusterFS mounts, logs, scratch files. Fixed: a crashed run's are found. */
export const WORK = '/var/tmp/tsvolc';
/** Exec roots, API sockets, pid files: short paths (a Unix socket path is at most 107 bytes). */
export const RUN = '/run/tsvolc';
/** Network namespaces are `${PREFIX}-sw`, `-gl`, `-n1`, `-n2`. */
const PREFIX = 'tsvolc';
/** The test-only subnet: RFC 2544's benchmarking range, used only inside the namespaces. */
const SUBNET = '198.18.77';
const GLUSTER_ADDR = `${SUBNET}.10`;
const GLUSTER_VOLUME = 'tsvolc';
const BRICK = path.join(WORK, 'gl', 'brick');
const GLUSTERD_SOCK = path.join(RUN, 'glusterd.socket');
/** The plugin's name on every node. */
export const CLUSTER_PLUGIN = 'tsvol';
/** The lease the suite gives the plugin (TSVOL_LEASE_SECONDS): short, so a dead node's holds expire in a test. */
export const TEST_LEASE_SECONDS = 8;

/** Where containerd (1.6, as Debian ships it) puts a shim's socket: /run/containerd/s/<sha256 of its key>. */
const SHIM_SOCKETS = '/run/containerd/s';

/** One Swarm node: a dockerd in its own network namespace with its own mount of the shared volume. */
export interface ClusterNode {
  /** `n1`, `n2`. */
  readonly name: string;
  /** Its Swarm node name, hostname and TSVOL_NODE_ID: `tsvolc-n1`. */
  readonly id: string;
  /** Its address on the test subnet (Swarm advertises it). */
  readonly addr: string;
  /** Its network namespace's name (`ip netns`). */
  readonly netns: string;
  /** Its dockerd's API socket, as `docker -H` takes it. */
  readonly host: string;
  /** Its own FUSE mount of the GlusterFS volume. */
  readonly mount: string;
  /** The directory bound at its plugin's TSVOL_DATA (`data.source`). */
  readonly dataSource: string;
  /** Its dockerd's log, where the plugin's output goes too. */
  readonly log: string;
  readonly dataRoot: string;
  readonly execRoot: string;
  /** `docker -H <its socket> args…`: trimmed stdout; throws with stderr. */
  docker(...args: string[]): string;
  /** The same, expecting failure: returns stderr; throws if it succeeded. */
  dockerFails(...args: string[]): string;
  /** The same without waiting (parallel setup, a write running while something else happens). */
  dockerAsync(...args: string[]): Promise<string>;
  /** The last `lines` lines of its dockerd log, for assertion messages. */
  logTail(lines?: number): string;
}

/** The cluster a test runs on. */
export interface Cluster {
  readonly nodes: readonly [ClusterNode, ClusterNode];
  /** The Swarm manager (n1); n2 is a worker, so it can die without taking the Swarm with it. */
  readonly manager: ClusterNode;
  readonly scope: 'global' | 'local';
  readonly leaseSeconds: number;
  /** Milliseconds each setup step took, in order. */
  readonly setupTimings: readonly (readonly [string, number])[];
  /** Scratch space for the tests. */
  readonly workDir: string;
  /** The node named `id` (`tsvolc-n2`) or `name` (`n2`). */
  node(idOrName: string): ClusterNode;
  /**
   * Creates plugin `name` on `node` from a copy of the project's plugin directory (a distinct rootfs, so
   * a node can hold two), with `settings` (`KEY=VALUE` for docker plugin set); enables it unless
   * `enable: false`.
   */
  createPlugin(node: ClusterNode, name: string, settings: readonly string[], opts?: { enable?: boolean }): void;
  /** The plugin settings each node's `tsvol` got (data.source, TSVOL_SCOPE, TSVOL_NODE_ID, TSVOL_LEASE_SECONDS). */
  pluginSettings(node: ClusterNode): string[];
  /**
   * SIGKILLs everything of `node` at once, as a power cut would: its dockerd, containerd, every shim and
   * what runs under them (the plugin, the tasks). Its GlusterFS mount is left alone. Returns the pids.
   */
  killNode(node: ClusterNode): Promise<number[]>;
  /** Starts `node`'s dockerd again (after killNode): waits for it, its enabled plugins and Swarm's Ready. */
  startNode(node: ClusterNode): Promise<void>;
  teardown(): Promise<void>;
}

/** How the cluster's plugin runs. */
export interface ClusterOptions {
  /** `global`: cluster mode on one shared data root. `local`: each node its own data root (the harness alone). */
  readonly scope: 'global' | 'local';
  /** TSVOL_LEASE_SECONDS (global scope); default TEST_LEASE_SECONDS. */
  readonly leaseSeconds?: number;
}

/** Runs `program args…`; trimmed stdout, or throws naming the command and its stderr. */
function run(program: string, args: readonly string[], opts: { input?: string | Buffer; timeout?: number } = {}): string {
  const r = spawnSync(program, args, { encoding: 'utf8', timeout: opts.timeout ?? 180_000, input: opts.input, maxBuffer: 64 << 20 });
  if (r.error !== undefined) throw new Error(`${program} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout).trim()}`);
  return r.stdout.trim();
}

/** Runs `program args…` for its effect during cleanup: a failure is returned, not thrown. */
function attempt(program: string, args: readonly string[]): SpawnSyncReturns<string> {
  return spawnSync(program, args, { encoding: 'utf8', timeout: 60_000 });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `ok` every 250 ms until it returns true; throws `timed out waiting for <what>` after `ms`. */
export async function waitFor(what: string, ok: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

/** A process as /proc shows it. */
interface Proc {
  readonly pid: number;
  readonly ppid: number;
  readonly args: readonly string[];
}

/** Every process, with its parent and arguments (one that exits while being read is left out). */
function processes(): Proc[] {
  const procs: Proc[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
      procs.push({ pid: Number(entry), ppid, args });
    } catch (err) {
      // ENOENT/ESRCH: it exited between readdir and read.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ESRCH') throw err;
    }
  }
  return procs;
}

/** Pids of the processes whose arguments `match`, and of all their descendants; never this process's line. */
function processTree(match: (args: readonly string[]) => boolean): number[] {
  const procs = processes();
  const children = new Map<number, number[]>();
  for (const p of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid]);
  const mine = new Set<number>();
  for (let pid = process.pid; pid > 1; ) {
    mine.add(pid);
    pid = procs.find((p) => p.pid === pid)?.ppid ?? 0;
  }
  const found = new Set<number>();
  const visit = (pid: number): void => {
    if (found.has(pid) || mine.has(pid)) return;
    found.add(pid);
    for (const c of children.get(pid) ?? []) visit(c);
  };
  for (const p of procs) if (match(p.args)) visit(p.pid);
  return [...found];
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/** SIGKILLs the tree `match` finds, again until nothing of it is left (a shim may start a process meanwhile). */
async function killTree(match: (args: readonly string[]) => boolean): Promise<number[]> {
  const killed = new Set<number>();
  for (let round = 0; round < 40; round++) {
    const pids = processTree(match).filter(alive);
    if (pids.length === 0) return [...killed];
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
        killed.add(pid);
      } catch (err) {
        // ESRCH: it exited by itself meanwhile.
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    }
    await sleep(100);
  }
  throw new Error(`processes survive SIGKILL: ${processTree(match).join(' ')}`);
}

/** True if an argument is `root` or lies below it. */
const mentions = (args: readonly string[], root: string): boolean => args.some((a) => a === root || a.includes(`${root}/`) || a.endsWith(root));

/** Mount points (mountinfo field 5, octal escapes decoded) at or below one of `roots`, deepest first. */
function mountsUnder(roots: readonly string[]): string[] {
  const points = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((mp) => roots.some((r) => mp === r || mp.startsWith(`${r}/`)));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/** Lazily unmounts everything at or below `roots` (stacked mounts too), deepest first. */
function unmountUnder(roots: readonly string[]): void {
  for (let round = 0; round < 10; round++) {
    const points = mountsUnder(roots);
    if (points.length === 0) return;
    for (const mp of points) {
      const r = attempt('umount', ['-l', mp]);
      // "not mounted": a parent's lazy unmount took it along already.
      if (r.status !== 0 && !/not mounted|no mount point/.test(r.stderr)) throw new Error(`umount -l ${mp}: ${r.stderr.trim()}`);
    }
  }
  throw new Error(`mounts under ${roots.join(' ')} survive umount: ${mountsUnder(roots).join(' ')}`);
}

/** Detaches every loop device whose backing file is below WORK (sized volumes of a local-mode plugin). */
function detachLoops(): void {
  for (const dev of fs.readdirSync('/sys/block').filter((d) => d.startsWith('loop'))) {
    const file = `/sys/block/${dev}/loop/backing_file`;
    if (!fs.existsSync(file)) continue;
    const backing = fs.readFileSync(file, 'utf8').trim();
    if (backing.startsWith(`${WORK}/`)) {
      const r = attempt('losetup', ['-d', `/dev/${dev}`]);
      if (r.status !== 0) throw new Error(`losetup -d /dev/${dev} (${backing}): ${r.stderr.trim()}`);
    }
  }
}

/** The namespaces of the cluster. */
const NAMESPACES = ['sw', 'gl', 'n1', 'n2'].map((n) => `${PREFIX}-${n}`);

/**
 * What SIGKILLed containers leave outside our roots, by container: containerd (1.6, as Debian ships it)
 * names a shim's socket /run/containerd/s/<sha256("<containerd address>/<namespace>/<id>")>, and runc's
 * cgroups are directories named by the id in each cgroup hierarchy. Collected from the nodes' task
 * directories before killing; cleared by removeCluster.
 */
const debris = { sockets: new Set<string>(), ids: new Set<string>() };

/** Records the shim sockets and container ids of `nodes`' containerds (see debris). */
function collectDebris(nodes: readonly string[]): void {
  for (const node of nodes) {
    const address = path.join(RUN, node, 'containerd', 'containerd.sock');
    const tasks = path.join(RUN, node, 'containerd', 'daemon', 'io.containerd.runtime.v2.task');
    if (!fs.existsSync(tasks)) continue;
    for (const ns of fs.readdirSync(tasks)) {
      for (const id of fs.readdirSync(path.join(tasks, ns))) {
        debris.sockets.add(path.join(SHIM_SOCKETS, createHash('sha256').update(`${address}/${ns}/${id}`).digest('hex')));
        debris.ids.add(id);
      }
    }
  }
}

/** Directories below `dir` (to `depth` levels) whose name is in `names`, deepest first. */
function findDirs(dir: string, names: ReadonlySet<string>, depth: number): string[] {
  const found: string[] = [];
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    // ENOENT: a cgroup removed meanwhile.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return found;
    throw err;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const sub = path.join(dir, e.name);
    if (depth > 1) found.push(...findDirs(sub, names, depth - 1));
    if (names.has(e.name)) found.push(sub);
  }
  return found;
}

/** cgroup2's statfs magic: one unified hierarchy at /sys/fs/cgroup. */
const CGROUP2_SUPER_MAGIC = 0x63677270;

/** Removes the debris of SIGKILLed containers: shim sockets and the (now empty) cgroups named by their ids. */
async function clearDebris(): Promise<void> {
  for (const socket of debris.sockets) fs.rmSync(socket, { force: true });
  debris.sockets.clear();
  if (debris.ids.size === 0) return;
  // Containers sit in /docker/<id>; plugins below dockerd's own cgroup (which may be deeper).
  const hierarchies =
    fs.statfsSync('/sys/fs/cgroup').type === CGROUP2_SUPER_MAGIC
      ? ['/sys/fs/cgroup']
      : fs.readdirSync('/sys/fs/cgroup').map((c) => path.join('/sys/fs/cgroup', c)).filter((h) => !fs.lstatSync(h).isSymbolicLink());
  let busy = hierarchies.flatMap((h) => findDirs(h, debris.ids, 4));
  // A cgroup v1 directory stays EBUSY for a moment after its last task was reaped.
  for (let round = 0; round < 40 && busy.length > 0; round++) {
    if (round > 0) await sleep(250);
    busy = busy.filter((dir) => {
      try {
        fs.rmdirSync(dir);
        return false;
      } catch (err) {
        // ENOENT: runc removed it meanwhile; EBUSY: try again.
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return false;
        if (code === 'EBUSY') return true;
        throw err;
      }
    });
  }
  if (busy.length > 0) console.warn(`cluster teardown: cgroups still busy after 10 s, left behind: ${busy.join(' ')}`);
  debris.ids.clear();
}

/** The brick's log file glusterd names after the brick's path (outside our roots). */
const BRICK_LOG = `/var/log/glusterfs/bricks/${BRICK.slice(1).replaceAll('/', '-')}.log`;

/**
 * Removes every trace of a cluster, this run's or a crashed one's: every process of the nodes and of
 * GlusterFS killed, their shim sockets and cgroups removed, everything below WORK and RUN unmounted, loop
 * devices detached, namespaces deleted, files removed. Idempotent.
 */
export async function removeCluster(): Promise<void> {
  // Straight to SIGKILL: a graceful dockerd stop waits out every task's stop grace period, and nothing of
  // the cluster is kept. What that leaves outside our roots is cleared below.
  collectDebris(['n1', 'n2']);
  // The brick's socket (`-S /var/run/gluster/<hash>.socket`), which a SIGKILLed glusterfsd leaves.
  for (const p of processes()) {
    const i = p.args.indexOf('-S');
    if (mentions(p.args, BRICK) && i >= 0 && p.args[i + 1] !== undefined) debris.sockets.add(p.args[i + 1]!);
  }
  await killTree((args) => mentions(args, WORK) || mentions(args, RUN));
  await clearDebris();
  unmountUnder([WORK, RUN]);
  detachLoops();
  for (const ns of NAMESPACES) {
    if (!fs.existsSync(`/run/netns/${ns}`)) continue;
    const r = attempt('ip', ['netns', 'del', ns]);
    if (r.status !== 0) throw new Error(`ip netns del ${ns}: ${r.stderr.trim()}`);
  }
  fs.rmSync(BRICK_LOG, { force: true });
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.rmSync(RUN, { recursive: true, force: true });
}

/** The network: a bridge in `sw`, a veth from it into `gl`, `n1`, `n2`, addresses .10, .11, .12. */
function buildNetwork(): void {
  for (const ns of NAMESPACES) {
    run('ip', ['netns', 'add', ns]);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  }
  const sw = `${PREFIX}-sw`;
  run('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge']);
  run('ip', ['-n', sw, 'link', 'set', 'br0', 'up']);
  for (const [i, n] of ['gl', 'n1', 'n2'].entries()) {
    const ns = `${PREFIX}-${n}`;
    run('ip', ['-n', sw, 'link', 'add', `v-${n}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    run('ip', ['-n', sw, 'link', 'set', `v-${n}`, 'master', 'br0', 'up']);
    run('ip', ['-n', ns, 'addr', 'add', `${SUBNET}.${10 + i}/24`, 'dev', 'eth0']);
    run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  }
}

/** `gluster` against our glusterd (its CLI socket), logging under WORK. */
function gluster(...args: string[]): string {
  return run('gluster', [`--glusterd-sock=${GLUSTERD_SOCK}`, `--log-file=${path.join(WORK, 'gl', 'cli.log')}`, '--mode=script', ...args]);
}

/** glusterd in `gl` with its own state, and the volume on one brick, started. */
async function startGluster(): Promise<void> {
  const dir = path.join(WORK, 'gl');
  fs.mkdirSync(path.join(dir, 'work'), { recursive: true });
  fs.mkdirSync(path.join(RUN, 'gluster'), { recursive: true });
  fs.mkdirSync(BRICK, { recursive: true });
  const vol = path.join(dir, 'glusterd.vol');
  // Debian's /etc/glusterfs/glusterd.vol with our own working directory, run directory and CLI socket:
  // /var/lib/glusterd and /var/run/glusterd.socket stay untouched.
  fs.writeFileSync(
    vol,
    [
      'volume management',
      '    type mgmt/glusterd',
      `    option working-directory ${path.join(dir, 'work')}`,
      `    option run-directory ${path.join(RUN, 'gluster')}`,
      `    option glusterd-sockfile ${GLUSTERD_SOCK}`,
      '    option transport-type socket',
      '    option transport.socket.listen-port 24007',
      '    option ping-timeout 0',
      '    option event-threads 1',
      'end-volume',
      '',
    ].join('\n'),
  );
  const log = fs.openSync(path.join(dir, 'glusterd.out'), 'a');
  const proc = spawn(
    'nsenter',
    [`--net=/run/netns/${PREFIX}-gl`, 'glusterd', '-N', '-f', vol, '-p', path.join(RUN, 'glusterd.pid'), '-l', path.join(dir, 'glusterd.log')],
    { detached: true, stdio: ['ignore', log, log] },
  );
  proc.unref();
  fs.closeSync(log);
  await waitFor('glusterd', () => {
    if (proc.exitCode !== null) throw new Error(`glusterd exited ${proc.exitCode}; see ${dir}/glusterd.log`);
    return spawnSync('gluster', [`--glusterd-sock=${GLUSTERD_SOCK}`, `--log-file=${path.join(dir, 'cli.log')}`, '--mode=script', 'volume', 'list']).status === 0;
  }, 30_000);
  // `force`: a brick on the root filesystem is refused otherwise.
  gluster('volume', 'create', GLUSTER_VOLUME, `${GLUSTER_ADDR}:${BRICK}`, 'force');
  gluster('volume', 'start', GLUSTER_VOLUME);
}

/** FUSE magic in statfs's f_type: what `stat -f` calls "fuseblk"/"fuse". */
const FUSE_SUPER_MAGIC = 0x65735546;

/** Mounts the volume at `node.mount` from inside the node's namespace (its client talks over the veth). */
async function mountShared(node: ClusterNode): Promise<void> {
  fs.mkdirSync(node.mount, { recursive: true });
  const opts = `log-file=${path.join(WORK, node.name, 'glusterfs.log')}`;
  // The brick may take a moment to accept clients after `volume start`.
  let last = '';
  await waitFor(`the GlusterFS mount of ${node.id}`, () => {
    const r = attempt('nsenter', [`--net=/run/netns/${node.netns}`, 'mount', '-t', 'glusterfs', '-o', opts, `${GLUSTER_ADDR}:/${GLUSTER_VOLUME}`, node.mount]);
    last = r.stderr;
    return r.status === 0;
  }, 30_000).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}: ${last}`);
  });
  const fsType = fs.statfsSync(node.mount).type;
  if (fsType !== FUSE_SUPER_MAGIC) throw new Error(`${node.mount} is not a FUSE mount (statfs type 0x${fsType.toString(16)})`);
}

/** A docker CLI bound to one node's dockerd. */
function nodeDocker(host: string): Pick<ClusterNode, 'docker' | 'dockerFails' | 'dockerAsync'> {
  return {
    docker: (...args) => run(DOCKER, ['-H', host, ...args]),
    dockerFails(...args) {
      const r = spawnSync(DOCKER, ['-H', host, ...args], { encoding: 'utf8', timeout: 180_000 });
      if (r.status === 0) throw new Error(`docker ${args.join(' ')} unexpectedly succeeded: ${r.stdout}`);
      return r.stderr.trim();
    },
    dockerAsync: (...args) =>
      new Promise((resolve, reject) => {
        const p = spawn(DOCKER, ['-H', host, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        p.stdout.on('data', (c: Buffer) => (out += c.toString()));
        p.stderr.on('data', (c: Buffer) => (err += c.toString()));
        p.on('error', reject);
        p.on('close', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`docker ${args.join(' ')} failed (${code}): ${err.trim()}`))));
      }),
  };
}

function makeNode(name: string, index: number, scope: 'global' | 'local'): ClusterNode {
  const host = `unix://${RUN}/${name}.sock`;
  const mount = path.join(WORK, name, 'gluster');
  const log = path.join(WORK, name, 'dockerd.log');
  return {
    name,
    id: `${PREFIX}-${name}`,
    addr: `${SUBNET}.${11 + index}`,
    netns: `${PREFIX}-${name}`,
    host,
    mount,
    // Cluster mode: one directory of the shared volume, reached through this node's own mount. Local
    // mode: a directory of its own on that volume.
    dataSource: path.join(mount, scope === 'global' ? 'tsvol' : `local-${name}`),
    log,
    dataRoot: path.join(WORK, name, 'docker'),
    execRoot: path.join(RUN, name),
    logTail(lines = 40) {
      return fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').slice(-lines).join('\n') : '(no log)';
    },
    ...nodeDocker(host),
  };
}

/**
 * With TSVOL_CLUSTER_LOGS=DIR, copies the cluster's logs there before teardown removes them: each node's
 * dockerd log (the plugin's output is in it) and GlusterFS client log, glusterd's and the brick's log.
 */
function saveLogs(): void {
  const dir = process.env.TSVOL_CLUSTER_LOGS;
  if (dir === undefined || dir === '') return;
  fs.mkdirSync(dir, { recursive: true });
  const logs: [string, string][] = [
    [path.join(WORK, 'gl', 'glusterd.log'), 'glusterd.log'],
    [BRICK_LOG, 'brick.log'],
    ...['n1', 'n2'].flatMap((n): [string, string][] => [
      [path.join(WORK, n, 'dockerd.log'), `${n}-dockerd.log`],
      [path.join(WORK, n, 'glusterfs.log'), `${n}-glusterfs.log`],
    ]),
  ];
  for (const [from, to] of logs) if (fs.existsSync(from)) fs.copyFileSync(from, path.join(dir, to));
}

/** Starts `node`'s dockerd in its namespaces and waits until it answers. */
async function startDockerd(node: ClusterNode): Promise<void> {
  fs.mkdirSync(node.dataRoot, { recursive: true });
  fs.mkdirSync(node.execRoot, { recursive: true });
  const log = fs.openSync(node.log, 'a');
  const args = [
    '--data-root', node.dataRoot,
    '--exec-root', node.execRoot,
    '-H', node.host,
    '--pidfile', path.join(RUN, `${node.name}.pid`),
    '--bridge=none', '--iptables=false', '--ip-forward=false',
    // Containers stop within 2 s at teardown (sh as PID 1 ignores SIGTERM).
    '--shutdown-timeout', '2',
  ];
  // unshare: its own hostname (Swarm's node name); nsenter --net: its network namespace with the host's
  // mounts and cgroups. Both exec, so the pid we get is dockerd's.
  const proc = spawn('unshare', ['--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', node.id, 'nsenter', `--net=/run/netns/${node.netns}`, DOCKERD, ...args], {
    detached: true,
    stdio: ['ignore', log, log],
  });
  proc.unref();
  fs.closeSync(log);
  await waitFor(`dockerd of ${node.id}`, () => {
    if (proc.exitCode !== null) throw new Error(`dockerd of ${node.id} exited ${proc.exitCode}:\n${node.logTail()}`);
    return spawnSync(DOCKER, ['-H', node.host, 'info', '--format', '{{.ServerVersion}}'], { timeout: 20_000 }).status === 0;
  }, 60_000);
}

/** Makes a plugin directory for `name` in WORK: the project's rootfs hard-linked, a file naming the copy. */
function pluginDir(name: string, node: ClusterNode): string {
  const dir = path.join(WORK, 'plugins', `${node.name}-${name}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const src = path.join(ROOT, 'plugin', 'rootfs');
  // -l: hard links (WORK shares the checkout's filesystem here); plain copies elsewhere.
  if (attempt('cp', ['-al', src, path.join(dir, 'rootfs')]).status !== 0) {
    fs.rmSync(path.join(dir, 'rootfs'), { recursive: true, force: true });
    run('cp', ['-a', src, path.join(dir, 'rootfs')]);
  }
  // dockerd 20.10 refuses a second plugin whose rootfs digest it already holds: one file tells them apart.
  fs.writeFileSync(path.join(dir, 'rootfs', 'etc', 'tsvol-plugin-copy'), `${name}\n`);
  fs.copyFileSync(path.join(ROOT, 'config.json'), path.join(dir, 'config.json'));
  return dir;
}

/**
 * Builds the cluster (after removing a crashed run's): installs the e2e and cluster groups of
 * scripts/deps.txt if missing, takes the engine lock, and returns when both nodes are Ready in the Swarm
 * with the plugin enabled and the test image loaded.
 */
export async function setupCluster(opts: ClusterOptions): Promise<Cluster> {
  if (process.getuid?.() !== 0) throw new Error('the cluster suite needs root: network namespaces, dockerd, FUSE mounts');
  run(path.join(ROOT, 'scripts', 'install-deps.sh'), ['e2e', 'cluster'], { timeout: 1_500_000 });
  requireTools('ip', 'glusterd', 'gluster', 'mount.glusterfs', 'nsenter', 'unshare', 'hostname', 'dockerd', 'docker', 'mount', 'umount', 'losetup', 'cp');
  if (!fs.existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing: the GlusterFS client needs FUSE (modprobe fuse)');
  if (!fs.existsSync(path.join(ROOT, 'dist', 'main.js'))) throw new Error('dist/ is missing: run npm run build first');
  const releaseEngine = await acquireLock(ENGINE_LOCK, 'the cluster suite (test/helpers/swarm.ts)', ENGINE_WAIT_MS);
  const leaseSeconds = opts.leaseSeconds ?? TEST_LEASE_SECONDS;
  const nodes = [makeNode('n1', 0, opts.scope), makeNode('n2', 1, opts.scope)] as const;
  const settings = (node: ClusterNode): string[] =>
    opts.scope === 'global'
      ? [`data.source=${node.dataSource}`, 'TSVOL_SCOPE=global', `TSVOL_NODE_ID=${node.id}`, `TSVOL_LEASE_SECONDS=${leaseSeconds}`]
      : [`data.source=${node.dataSource}`];
  const createPlugin = (node: ClusterNode, name: string, set: readonly string[], o: { enable?: boolean } = {}): void => {
    const dir = pluginDir(name, node);
    node.docker('plugin', 'create', name, dir);
    fs.rmSync(dir, { recursive: true, force: true }); // dockerd holds its own copy now
    if (set.length > 0) node.docker('plugin', 'set', name, ...set);
    if (o.enable !== false) node.docker('plugin', 'enable', name);
  };
  const createPluginAsync = async (node: ClusterNode, name: string, set: readonly string[]): Promise<void> => {
    const dir = pluginDir(name, node);
    await node.dockerAsync('plugin', 'create', name, dir);
    fs.rmSync(dir, { recursive: true, force: true });
    if (set.length > 0) await node.dockerAsync('plugin', 'set', name, ...set);
    await node.dockerAsync('plugin', 'enable', name);
  };
  const timings: [string, number][] = [];
  let t0 = Date.now();
  const step = (what: string): void => {
    timings.push([what, Date.now() - t0]);
    t0 = Date.now();
  };
  let done = false;
  try {
    await removeCluster();
    step('remove a previous run');
    fs.mkdirSync(WORK, { recursive: true, mode: 0o700 });
    fs.mkdirSync(RUN, { recursive: true, mode: 0o700 });
    run(path.join(ROOT, 'plugin', 'build-rootfs.sh'), [path.join(ROOT, 'plugin', 'rootfs')]);
    step('plugin rootfs');
    buildNetwork();
    step('network');
    await startGluster();
    step('glusterd and volume');
    for (const node of nodes) await mountShared(node);
    step('FUSE mounts');
    // The data roots, made through n1's mount; root-only as the plugin keeps them (#9 §5).
    for (const node of nodes) fs.mkdirSync(node.dataSource, { recursive: true, mode: 0o700 });
    await Promise.all(nodes.map((n) => startDockerd(n)));
    step('dockerds');
    for (const node of nodes) {
      const dir = path.join(WORK, node.name, 'image');
      fs.mkdirSync(dir, { recursive: true });
      importTestImage(dir, IMAGE, node.host);
    }
    step('images');
    // Both nodes at once: docker plugin create copies the 100 MB rootfs into dockerd's store.
    await Promise.all(nodes.map((n) => createPluginAsync(n, CLUSTER_PLUGIN, settings(n))));
    step('plugins');
    const [n1, n2] = nodes;
    // A short heartbeat: a killed node is marked down in seconds, not the default 5 s × grace.
    n1.docker('swarm', 'init', '--advertise-addr', n1.addr, '--listen-addr', `${n1.addr}:2377`, '--dispatcher-heartbeat', '2s');
    const token = n1.docker('swarm', 'join-token', '-q', 'worker');
    n2.docker('swarm', 'join', '--token', token, '--advertise-addr', n2.addr, '--listen-addr', `${n2.addr}:2377`, `${n1.addr}:2377`);
    await waitFor('both Swarm nodes Ready', () => n1.docker('node', 'ls', '--format', '{{.Hostname}} {{.Status}}').split('\n').filter((l) => l.endsWith(' Ready')).length === 2, 60_000);
    step('swarm');
    done = true;
  } finally {
    if (!done) {
      await removeCluster();
      await releaseEngine();
    }
  }
  const workDir = path.join(WORK, 'scratch');
  fs.mkdirSync(workDir, { recursive: true });
  return {
    nodes,
    manager: nodes[0],
    scope: opts.scope,
    leaseSeconds,
    setupTimings: timings,
    workDir,
    node(idOrName) {
      const n = nodes.find((x) => x.id === idOrName || x.name === idOrName);
      if (n === undefined) throw new Error(`no cluster node ${idOrName}`);
      return n;
    },
    createPlugin,
    pluginSettings: settings,
    killNode(node) {
      // Its dockerd (by its exec root), its containerd (config under it), every shim (its containerd's
      // address under it) and all their children: plugin, tasks. Not the GlusterFS client (its mount point
      // is below WORK, not the node's exec or data root).
      collectDebris([node.name]);
      return killTree((args) => mentions(args, node.execRoot) || mentions(args, node.dataRoot));
    },
    async startNode(node) {
      await startDockerd(node);
      await waitFor(`${node.id}'s plugin enabled`, () => node.docker('plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}').includes(`${CLUSTER_PLUGIN}:latest true`), 60_000);
      await waitFor(`${node.id} Ready in the Swarm`, () => n1Ready(nodes[0], node.id), 60_000);
    },
    async teardown() {
      try {
        saveLogs();
        await removeCluster();
      } finally {
        await releaseEngine();
      }
    },
  };
}

function n1Ready(manager: ClusterNode, id: string): boolean {
  return manager.docker('node', 'ls', '--format', '{{.Hostname}} {{.Status}}').split('\n').includes(`${id} Ready`);
}
