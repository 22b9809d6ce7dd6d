/**
 * Through Docker (issues #4, #13), all in one run so that every figure shares the machine's state:
 * - `docker volume create`, `inspect` and `rm` through the Engine API (HTTP on /var/run/docker.sock, c=8,
 *   N volumes, best of interleaved rounds) for Docker's local driver, an in-memory managed plugin built on
 *   tsvol's own rootfs (bench/memory-plugin/: the floor of any managed plugin through dockerd), the same
 *   plugin doing the least durable work (the durable floor: the volume's two directories and an
 *   fdatasynced, group-committed journal line per Create and Remove) and the tsvol managed plugin, at its
 *   default log level and optionally at others (one plugin instance per level);
 * - container start: `docker run --rm --network none -v VOL:/d IMAGE sh -c :`, p50 of interleaved runs,
 *   tsvol vs local;
 * - a compose-like start: 20 containers at once, each with its own new volume, tsvol vs local.
 * Uses the end-to-end fixture (it starts dockerd and builds the plugin rootfs if needed, and stops what it
 * started). `npm run bench -- docker` runs only this bench. Knobs (environment):
 *   TSVOL_BENCH_DOCKER_N              volumes per round (800)
 *   TSVOL_BENCH_DOCKER_ROUNDS         interleaved throughput rounds (3)
 *   TSVOL_BENCH_DOCKER_RUNS           single container starts per driver (40; 0: no container phases)
 *   TSVOL_BENCH_DOCKER_COMPOSE_ROUNDS rounds of 20 containers at once (3)
 *   TSVOL_BENCH_DOCKER_LEVELS         more tsvol log levels side by side, one plugin each (`warn,debug`)
 *   TSVOL_BENCH_DOCKER_LEGACY=1       also tsvol as a legacy plugin (`node dist/main.js` on
 *                                     /run/docker/plugins/tsvol-legacy.sock, log to a file)
 *   TSVOL_BENCH_LEGACY_LEVEL, _LOG     its log level (info) and log file (in the work dir, deleted)
 *   TSVOL_BENCH_CPU_PROF=DIR          run that legacy plugin under `node --cpu-prof` (profiles in DIR on
 *                                     exit; bench/profile-summary.ts reads them)
 *   TSVOL_BENCH_DOCKER_CHUNK          also measure in small chunks (50): each operation's N volumes in
 *                                     chunks of this many, the drivers taking turns chunk by chunk, so a
 *                                     burst of load elsewhere hits every driver alike (0: not measured)
 *   TSVOL_BENCH_CPU_PROF_MANAGED=DIR  one more tsvol managed plugin (`tsvol-prof`), at info, under
 *                                     `node --cpu-prof`: its profiles land in DIR when it is disabled
 *   TSVOL_BENCH_DOCKER_BEFORE=DIR[:DIR…] one more tsvol managed plugin per DIR, another built checkout
 *                                     (`tsvol-b-<basename of DIR>`): this rootfs with /opt/tsvol/dist
 *                                     replaced by DIR/dist, measured in the same rounds (before/after from
 *                                     one run)
 *   TSVOL_BENCH_DOCKER_CPU=1          also CPU time per operation, read from /proc before and after each
 *                                     timed phase: dockerd's, and each plugin's process (all its threads)
 *   TSVOL_BENCH_DOCKER_THREADS=1      with _CPU, also each plugin's CPU per operation split by thread (main,
 *                                     then the others by thread id: V8's platform threads, the libuv pool,
 *                                     worker threads, in the order the process started them)
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DOCKER, IMAGE, PLUGIN, docker, removePlugin, setupDocker } from '../test/helpers/docker.js';
import { CONCURRENCY, closeEngineApi, engineCall, rate } from './engine-api.js';
import { cpuSeconds, oldestProcess, threadCpuSeconds } from './proc.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(HERE, '..');
const envInt = (name: string, dflt: number): number => {
  const raw = process.env[name];
  const v = Number(raw);
  return raw !== undefined && raw !== '' && Number.isInteger(v) && v >= 0 ? v : dflt;
};
const N = envInt('TSVOL_BENCH_DOCKER_N', 800);
const ROUNDS = envInt('TSVOL_BENCH_DOCKER_ROUNDS', 3);
const RUNS = envInt('TSVOL_BENCH_DOCKER_RUNS', 40);
/** Containers started at once in the compose-like phase. */
const COMPOSE = 20;
const COMPOSE_ROUNDS = envInt('TSVOL_BENCH_DOCKER_COMPOSE_ROUNDS', 3);
const CHUNK = envInt('TSVOL_BENCH_DOCKER_CHUNK', 50);
const LEVELS = (process.env.TSVOL_BENCH_DOCKER_LEVELS ?? '').split(',').filter((l) => l !== '' && l !== 'info');
const LEGACY = process.env.TSVOL_BENCH_DOCKER_LEGACY === '1' || process.env.TSVOL_BENCH_CPU_PROF !== undefined;
const MEMORY_PLUGIN = 'tsvol-memory';
/** The in-memory plugin plus the least durable work (bench/memory-plugin/server.mjs TSVOL_FLOOR_DURABLE). */
const DURABLE_PLUGIN = 'tsvol-durable-floor';
const PROF_PLUGIN = 'tsvol-prof';
const PROF_MANAGED = process.env.TSVOL_BENCH_CPU_PROF_MANAGED;
const LEGACY_PLUGIN = 'tsvol-legacy';
/** Other built checkouts, each measured as one more plugin (TSVOL_BENCH_DOCKER_BEFORE). */
const BEFORE = (process.env.TSVOL_BENCH_DOCKER_BEFORE ?? '')
  .split(':')
  .filter((d) => d !== '')
  .map((d) => ({ dir: path.resolve(d), driver: `tsvol-b-${path.basename(d).replace(/[^a-z0-9]/gi, '').toLowerCase()}` }));
const CPU = process.env.TSVOL_BENCH_DOCKER_CPU === '1';
const THREADS = CPU && process.env.TSVOL_BENCH_DOCKER_THREADS === '1';

function api(method: string, urlPath: string, body?: unknown): Promise<number> {
  return engineCall('/var/run/docker.sock', method, urlPath, body);
}

/** A volume driver under test: its label in the tables and the name dockerd knows it by. */
interface Driver {
  readonly label: string;
  readonly driver: string;
}

/** How many fds process `pid` has open (0 if it is gone). */
function openFds(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0; // gone
  }
}

/** The pids of managed plugin `name`: its processes' cgroup path names the plugin's id. */
function pluginPids(name: string): number[] {
  const id = docker('plugin', 'inspect', '-f', '{{.Id}}', name);
  const pids: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let cgroup: string;
    try {
      cgroup = fs.readFileSync(`/proc/${e}/cgroup`, 'utf8');
    } catch {
      continue; // the process exited meanwhile: not one of the plugin's
    }
    if (cgroup.includes(id)) pids.push(Number(e));
  }
  return pids;
}

/** Per driver and operation: CPU seconds of dockerd and of the plugin's processes, summed over rounds, and the ops. */
const cpuUse = new Map<string, { dockerd: number[]; plugin: number[]; ops: number[]; fds: number[] }>();
/** Per driver and operation (TSVOL_BENCH_DOCKER_THREADS): CPU seconds per plugin thread, summed over rounds. */
const threadUse = new Map<string, Map<string, number>[]>();

/** CPU seconds per thread of the processes `pids` (threadCpuSeconds, keyed `main` or by thread id). */
function threadsOf(pids: readonly number[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const pid of pids) for (const [k, v] of threadCpuSeconds(pid)) out.set(k === 'main' ? `main/${pid}` : k.replace(/^.*#/, ''), v);
  return out;
}
let dockerdPid: number | undefined;

/** `count` calls of `call` at c=8 (rate); with TSVOL_BENCH_DOCKER_CPU, adds the CPU they took to cpuUse. */
async function measured(d: Driver, op: number, count: number, call: (i: number) => Promise<unknown>): Promise<number> {
  if (!CPU) return rate(count, call);
  dockerdPid ??= oldestProcess('dockerd');
  if (dockerdPid === undefined) throw new Error('no dockerd process found');
  const pids = d.driver === 'local' ? [] : d.driver === LEGACY_PLUGIN ? [legacy!.pid!] : pluginPids(d.driver);
  if (d.driver !== 'local' && pids.length === 0) throw new Error(`TSVOL_BENCH_DOCKER_CPU: no process of plugin ${d.driver} found`);
  const cpu = (): [number, number] => [cpuSeconds(dockerdPid!), pids.reduce((a, p) => a + cpuSeconds(p), 0)];
  const th0 = THREADS ? threadsOf(pids) : undefined;
  const before = cpu();
  const r = await rate(count, call);
  const after = cpu();
  if (th0 !== undefined) {
    const per = threadUse.get(d.driver) ?? [new Map<string, number>(), new Map<string, number>(), new Map<string, number>()];
    for (const [k, v] of threadsOf(pids)) per[op]!.set(k, (per[op]!.get(k) ?? 0) + v - (th0.get(k) ?? 0));
    threadUse.set(d.driver, per);
  }
  const u = cpuUse.get(d.driver) ?? { dockerd: [0, 0, 0], plugin: [0, 0, 0], ops: [0, 0, 0], fds: [0, 0, 0] };
  // Open fds at the end of the phase: mostly dockerd's plugin connections still open (it makes a client
  // per driver lookup and leaves its connection idle until the plugin closes it).
  u.fds[op] = Math.max(u.fds[op]!, pids.reduce((a, p) => a + openFds(p), 0));
  u.dockerd[op]! += after[0] - before[0];
  u.plugin[op]! += after[1] - before[1];
  u.ops[op]! += count;
  cpuUse.set(d.driver, u);
  return r;
}

async function throughput(d: Driver, round: string, count: number): Promise<[number, number, number]> {
  const name = (i: number): string => `bench-${d.driver.replace(/\W/g, '')}-${round}-${i}`;
  const create = await measured(d, 0, count, (i) => api('POST', '/volumes/create', { Name: name(i), Driver: d.driver }));
  const inspect = await measured(d, 1, count, (i) => api('GET', `/volumes/${name(i)}`));
  const remove = await measured(d, 2, count, (i) => api('DELETE', `/volumes/${name(i)}`));
  return [create, inspect, remove];
}

/**
 * create, inspect and rm of `count` volumes per driver, each operation in chunks of CHUNK volumes, the
 * drivers taking turns chunk by chunk (the order rotating), so that load elsewhere on the machine falls on
 * every driver alike. Returns each driver's rates: its volumes over the time its own chunks took.
 */
async function chunkedThroughput(drivers: readonly Driver[], count: number): Promise<Map<string, number[]>> {
  const name = (d: Driver, i: number): string => `chunk-${d.driver.replace(/\W/g, '')}-${i}`;
  const ops: ((d: Driver, i: number) => Promise<number>)[] = [
    (d, i) => api('POST', '/volumes/create', { Name: name(d, i), Driver: d.driver }),
    (d, i) => api('GET', `/volumes/${name(d, i)}`),
    (d, i) => api('DELETE', `/volumes/${name(d, i)}`),
  ];
  const secs = new Map(drivers.map((d) => [d.driver, ops.map(() => 0)]));
  for (const [o, op] of ops.entries()) {
    for (let start = 0, turn = 0; start < count; start += CHUNK, turn++) {
      const n = Math.min(CHUNK, count - start);
      for (let k = 0; k < drivers.length; k++) {
        const d = drivers[(k + turn) % drivers.length]!;
        const r = await rate(n, (i) => op(d, start + i));
        secs.get(d.driver)![o]! += n / r;
      }
    }
  }
  return new Map([...secs].map(([d, s]) => [d, s.map((x) => count / x)]));
}

/** Milliseconds `docker args…` takes, start to exit; throws if it fails. */
function timedDocker(args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(DOCKER, args, { encoding: 'utf8', timeout: 120_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`docker ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return ms;
}

/** Starts `docker args…` without waiting; resolves when it exits (rejects if it failed). */
function dockerAsync(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(DOCKER, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`docker ${args.join(' ')} failed (${code}): ${err}`))));
  });
}

function runArgs(mount: string[]): string[] {
  return ['run', '--rm', '--network', 'none', '-l', 'tsvol-e2e', ...mount, IMAGE, 'sh', '-c', ':'];
}

/** Wall time of COMPOSE containers started at once, each with its own new volume of `driver`. */
async function composeUp(driver: string, round: number): Promise<number> {
  const names = Array.from({ length: COMPOSE }, (_, i) => `bench-up-${driver.replace(/\W/g, '')}-${round}-${i}`);
  const t0 = process.hrtime.bigint();
  await Promise.all(names.map((n) => dockerAsync(runArgs(['--mount', `type=volume,src=${n},dst=/d,volume-driver=${driver}`]))));
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  docker('volume', 'rm', ...names);
  return ms;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * Creates and enables managed plugin `name` from a copy of tsvol's plugin directory in `dir`: the rootfs
 * hard-linked (else copied), `extra` (files or directories, source → path in the rootfs) copied into it,
 * and tsvol's config.json changed by `edit`.
 */
function createPluginCopy(
  name: string,
  dir: string,
  dataDir: string,
  edit: (config: Record<string, unknown>) => void,
  extra: ReadonlyMap<string, string> = new Map(),
): void {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const rootfs = path.join(dir, 'rootfs');
  const src = path.join(ROOT, 'plugin', 'rootfs');
  // -l: hard links, when the work dir shares the checkout's filesystem; docker plugin create copies anyway.
  if (spawnSync('cp', ['-al', src, rootfs]).status !== 0) {
    fs.rmSync(rootfs, { recursive: true, force: true });
    const r = spawnSync('cp', ['-a', src, rootfs], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cp -a ${src}: ${r.stderr}`);
  }
  for (const [from, to] of extra) {
    const dest = path.join(rootfs, to);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    // A directory replaces what the rootfs has there (its hard links go, the originals stay).
    fs.rmSync(dest, { recursive: true, force: true });
    fs.cpSync(from, dest, { recursive: true, filter: (f) => !f.endsWith('.map') });
  }
  // dockerd 20.10 refuses a rootfs whose digest it already holds ("content … already exists"): one file
  // naming the copy makes each rootfs distinct.
  fs.writeFileSync(path.join(rootfs, 'etc', 'tsvol-bench-plugin'), `${name}\n`);
  const config = JSON.parse(fs.readFileSync(path.join(ROOT, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit(config);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  removePlugin(name);
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  docker('plugin', 'create', name, dir);
  docker('plugin', 'set', name, `data.source=${dataDir}`);
  docker('plugin', 'enable', name);
  // The copy's rootfs is dockerd's now.
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * The in-memory managed plugin: tsvol's rootfs and config.json with only the entrypoint (and description)
 * changed to bench/memory-plugin/server.mjs, so dockerd treats both plugins alike (same mounts,
 * capabilities, env, socket).
 */
function createMemoryPlugin(workDir: string, durable = false): void {
  const name = durable ? DURABLE_PLUGIN : MEMORY_PLUGIN;
  createPluginCopy(
    name,
    path.join(workDir, `${name}-plugin`),
    path.join(workDir, `${name}-data`),
    (config) => {
      config.description = durable
        ? 'tsvol bench: the in-memory VolumeDriver plus the least durable work (bench/memory-plugin)'
        : 'tsvol bench: an in-memory VolumeDriver on tsvol rootfs (bench/memory-plugin)';
      config.entrypoint = ['/usr/bin/node', '/opt/memory/server.mjs'];
      config.workdir = '/opt/memory';
      // The plugin's data mount is /data (config.json), on the same host filesystem as tsvol's.
      if (durable) (config.env as { name: string; value: string }[]).push({ name: 'TSVOL_FLOOR_DURABLE', value: '/data/floor' });
    },
    new Map([[path.join(HERE, 'memory-plugin', 'server.mjs'), 'opt/memory/server.mjs']]),
  );
}

/** One more instance of the tsvol managed plugin, at log `level`, with its own data directory. */
function createLevelPlugin(level: string, workDir: string): string {
  const name = `${PLUGIN}-${level}`;
  createPluginCopy(name, path.join(workDir, `plugin-${level}`), path.join(workDir, `data-${level}`), (config) => {
    config.description = `tsvol at log level ${level} (bench)`;
    for (const e of config.env as { name: string; value: string }[]) if (e.name === 'TSVOL_LOG_LEVEL') e.value = level;
  });
  return name;
}

/**
 * tsvol as one more managed plugin, at info, its node under --cpu-prof writing into its data directory
 * (the `data` mount, /data in the plugin); returns where its profiles appear on the host once it stops.
 */
function createProfiledPlugin(workDir: string): string {
  const dataDir = path.join(workDir, 'data-prof');
  createPluginCopy(PROF_PLUGIN, path.join(workDir, 'plugin-prof'), dataDir, (config) => {
    config.description = 'tsvol under node --cpu-prof (bench)';
    config.entrypoint = ['/usr/bin/node', '--cpu-prof', '--cpu-prof-dir=/data/cpu-prof', '/opt/tsvol/dist/main.js'];
  });
  return path.join(dataDir, 'cpu-prof');
}

/** Plugin `name`: tsvol from another built checkout (TSVOL_BENCH_DOCKER_BEFORE), this rootfs with its dist/. */
function createBeforePlugin(name: string, workDir: string, checkout: string): void {
  createPluginCopy(
    name,
    path.join(workDir, `plugin-${name}`),
    path.join(workDir, `data-${name}`),
    (config) => {
      config.description = `tsvol built from ${checkout} (bench)`;
    },
    new Map([[path.join(checkout, 'dist'), 'opt/tsvol/dist']]),
  );
}

/** tsvol as a legacy plugin (dockerd finds /run/docker/plugins/NAME.sock), optionally under --cpu-prof. */
async function startLegacy(workDir: string): Promise<ChildProcess> {
  const socket = `/run/docker/plugins/${LEGACY_PLUGIN}.sock`;
  const prof = process.env.TSVOL_BENCH_CPU_PROF;
  const args = prof === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${path.resolve(prof)}`];
  const proc = spawn(process.execPath, [...args, path.join(ROOT, 'dist', 'main.js')], {
    env: {
      ...process.env,
      TSVOL_SOCKET: socket,
      TSVOL_DATA: path.join(workDir, 'legacy-data'),
      TSVOL_MOUNTS: path.join(workDir, 'legacy-mnt'),
      TSVOL_LOG_LEVEL: process.env.TSVOL_BENCH_LEGACY_LEVEL ?? 'info',
    },
    // Its log goes where a managed plugin's would not: a file, so the figure shows the server's own cost.
    stdio: ['ignore', fs.openSync(process.env.TSVOL_BENCH_LEGACY_LOG ?? path.join(workDir, 'legacy.log'), 'a'), 'inherit'],
  });
  const deadline = Date.now() + 30_000;
  while (!fs.existsSync(socket)) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error('the legacy tsvol server did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  return proc;
}

/** Removes every volume of `driver` (a crashed earlier round's too). */
function removeVolumes(driver: string): void {
  for (const name of [driver, `${driver}:latest`]) {
    const vols = spawnSync(DOCKER, ['volume', 'ls', '-q', '--filter', `driver=${name}`], { encoding: 'utf8' }).stdout.trim();
    if (vols) spawnSync(DOCKER, ['volume', 'rm', '-f', ...vols.split('\n')]);
  }
}

/** Container start, one at a time and COMPOSE at once, tsvol managed plugin vs local driver. */
async function containerStarts(): Promise<void> {
  // 2. Container start, one at a time: the same pre-made volume of each driver, runs interleaved.
  const starts = new Map<string, number[]>([['local', []], [PLUGIN, []]]);
  for (const d of starts.keys()) docker('volume', 'create', '-d', d, `bench-run-${d}`);
  for (const d of starts.keys()) timedDocker(runArgs(['-v', `bench-run-${d}:/d`])); // warm-up
  for (let i = 0; i < RUNS; i++) {
    for (const [d, times] of starts) times.push(timedDocker(runArgs(['-v', `bench-run-${d}:/d`])));
  }
  for (const d of starts.keys()) docker('volume', 'rm', `bench-run-${d}`);
  // 3. A compose project coming up: COMPOSE containers at once, each with its own new volume.
  const ups = new Map<string, number[]>([['local', []], [PLUGIN, []]]);
  if (COMPOSE_ROUNDS > 0) for (const d of ups.keys()) await composeUp(d, -1); // warm-up
  for (let r = 0; r < COMPOSE_ROUNDS; r++) for (const [d, times] of ups) times.push(await composeUp(d, r));

  const runL = median(starts.get('local')!);
  const runT = median(starts.get(PLUGIN)!);
  const upL = COMPOSE_ROUNDS > 0 ? median(ups.get('local')!) : 0;
  const upT = COMPOSE_ROUNDS > 0 ? median(ups.get(PLUGIN)!) : 0;
  console.log(`\n## Container start with a volume (\`docker run --rm --network none -v VOL:/d ${IMAGE} sh -c :\`)\n`);
  console.log('| figure | local driver | tsvol managed plugin | ratio | target |\n|---|---:|---:|---:|---:|');
  console.log(`| one container, p50 of ${RUNS} interleaved runs | ${runL.toFixed(0)} ms | ${runT.toFixed(0)} ms | ${(runT / runL).toFixed(2)}× | ≤ 1.10× ${runT / runL <= 1.1 ? 'met' : 'NOT met'} |`);
  if (COMPOSE_ROUNDS > 0) console.log(`| ${COMPOSE} at once, each with its own new volume, median of ${COMPOSE_ROUNDS} | ${upL.toFixed(0)} ms | ${upT.toFixed(0)} ms | ${(upT / upL).toFixed(2)}× | — |`);
}

const env = await setupDocker();
const extraPlugins: string[] = [];
let legacy: ChildProcess | undefined;
try {
  env.createPlugin();
  createMemoryPlugin(env.workDir);
  extraPlugins.push(MEMORY_PLUGIN);
  createMemoryPlugin(env.workDir, true);
  extraPlugins.push(DURABLE_PLUGIN);
  const drivers: Driver[] = [
    { label: 'local driver', driver: 'local' },
    { label: 'in-memory managed plugin', driver: MEMORY_PLUGIN },
    { label: 'durable floor managed plugin', driver: DURABLE_PLUGIN },
    { label: 'tsvol managed plugin (info)', driver: PLUGIN },
  ];
  for (const level of LEVELS) {
    const name = createLevelPlugin(level, env.workDir);
    extraPlugins.push(name);
    drivers.push({ label: `tsvol managed plugin (${level})`, driver: name });
  }
  for (const b of BEFORE) {
    createBeforePlugin(b.driver, env.workDir, b.dir);
    extraPlugins.push(b.driver);
    drivers.push({ label: `tsvol managed plugin (${b.dir})`, driver: b.driver });
  }
  let profDir: string | undefined;
  if (PROF_MANAGED !== undefined) {
    profDir = createProfiledPlugin(env.workDir);
    extraPlugins.push(PROF_PLUGIN);
    drivers.push({ label: 'tsvol managed plugin (info, under --cpu-prof)', driver: PROF_PLUGIN });
  }
  if (LEGACY) {
    legacy = await startLegacy(env.workDir);
    drivers.push({ label: `tsvol legacy plugin (${process.env.TSVOL_BENCH_LEGACY_LEVEL ?? 'info'}, log to a file)`, driver: LEGACY_PLUGIN });
  }

  // 1. Engine API throughput: a warm-up, then ROUNDS interleaved rounds, best of each.
  const best = new Map(drivers.map((d) => [d.driver, [0, 0, 0]]));
  for (const d of drivers) await throughput(d, 'warm', Math.min(N, 200));
  for (let r = 0; r < ROUNDS; r++) {
    // The order rotates every round: no driver always follows the same one (whose leftovers, dockerd's
    // idle plugin connections or a deleter's backlog, it would meet).
    for (let k = 0; k < drivers.length; k++) {
      const d = drivers[(k + r) % drivers.length]!;
      const m = await throughput(d, String(r), N);
      best.set(d.driver, best.get(d.driver)!.map((v, i) => Math.max(v, m[i]!)));
    }
  }
  const rows: string[] = [];
  rows.push(`## Through Docker: Engine API, c=${CONCURRENCY}, ${N} volumes, best of ${ROUNDS} interleaved rounds\n`);
  rows.push('| driver | docker volume create | docker volume inspect | docker volume rm |', '|---|---:|---:|---:|');
  for (const d of drivers) rows.push(`| ${d.label} | ${best.get(d.driver)!.map((v) => `${v.toFixed(0)}/s`).join(' | ')} |`);
  const mem = best.get(MEMORY_PLUGIN)!;
  const local = best.get('local')!;
  for (const d of drivers.slice(2)) {
    const v = best.get(d.driver)!;
    rows.push(`| ${d.label} / in-memory managed | ${v.map((x, i) => `${(x / mem[i]!).toFixed(2)}× ${x / mem[i]! >= 0.9 ? '(≥ 0.9× met)' : '(≥ 0.9× NOT met)'}`).join(' | ')} |`);
  }
  const ts = best.get(PLUGIN)!;
  const floor = best.get(DURABLE_PLUGIN)!;
  rows.push(`| tsvol (info) / durable floor managed | ${ts.map((x, i) => `${(x / floor[i]!).toFixed(2)}×`).join(' | ')} |`);
  rows.push(`| tsvol (info) / local driver | ${ts.map((x, i) => `${(x / local[i]!).toFixed(2)}×`).join(' | ')} |`);
  for (const b of BEFORE) {
    const v = best.get(b.driver)!;
    rows.push(`| tsvol (info) / ${b.driver} | ${ts.map((x, i) => `${(x / v[i]!).toFixed(2)}×`).join(' | ')} |`);
  }
  console.log(rows.join('\n'));
  if (CPU) {
    const out: string[] = [`\n## CPU per operation, µs (summed over every round, warm-up included; /proc/PID/stat, 10 ms ticks)\n`];
    out.push('| driver | create: dockerd / plugin | inspect: dockerd / plugin | rm: dockerd / plugin | plugin fds open after create / inspect / rm (max) |', '|---|---:|---:|---:|---:|');
    for (const d of drivers) {
      const u = cpuUse.get(d.driver);
      if (u === undefined) continue;
      const per = (v: number[], i: number): string => ((v[i]! / u.ops[i]!) * 1e6).toFixed(0);
      out.push(`| ${d.label} | ${[0, 1, 2].map((i) => `${per(u.dockerd, i)} / ${d.driver === 'local' ? '—' : per(u.plugin, i)}`).join(' | ')} | ${u.fds.join(' / ')} |`);
    }
    console.log(out.join('\n'));
  }
  if (THREADS) {
    const out: string[] = ['\n## Plugin CPU per operation by thread, µs (main first, then by thread id; threads under 5 µs left out)\n'];
    for (const d of drivers) {
      const per = threadUse.get(d.driver);
      const u = cpuUse.get(d.driver);
      if (per === undefined || u === undefined) continue;
      const cells = per.map((m, i) =>
        [...m]
          .sort(([a], [b]) => (a.startsWith('main') ? -1 : b.startsWith('main') ? 1 : Number(a) - Number(b)))
          .map(([k, v]) => [k.startsWith('main') ? 'main' : k, (v / u.ops[i]!) * 1e6] as const)
          .filter(([, us]) => us >= 5)
          .map(([k, us]) => `${k} ${us.toFixed(0)}`)
          .join(', '),
      );
      out.push(`- ${d.label}: create ${cells[0]}; inspect ${cells[1]}; rm ${cells[2]}`);
    }
    console.log(out.join('\n'));
  }
  if (CHUNK > 0) {
    const chunked = await chunkedThroughput(drivers, N);
    const out: string[] = [];
    out.push(`\n## The same, in chunks of ${CHUNK} volumes, the drivers taking turns chunk by chunk (${N} volumes each)\n`);
    out.push('| driver | docker volume create | docker volume inspect | docker volume rm |', '|---|---:|---:|---:|');
    for (const d of drivers) out.push(`| ${d.label} | ${chunked.get(d.driver)!.map((v) => `${v.toFixed(0)}/s`).join(' | ')} |`);
    const cm = chunked.get(MEMORY_PLUGIN)!;
    for (const d of drivers.slice(2)) {
      const v = chunked.get(d.driver)!;
      out.push(`| ${d.label} / in-memory managed | ${v.map((x, i) => `${(x / cm[i]!).toFixed(2)}× ${x / cm[i]! >= 0.9 ? '(≥ 0.9× met)' : '(≥ 0.9× NOT met)'}`).join(' | ')} |`);
    }
    const [cx, cf] = [chunked.get(PLUGIN)!, chunked.get(DURABLE_PLUGIN)!];
    out.push(`| tsvol (info) / durable floor managed | ${cx.map((v, i) => `${(v / cf[i]!).toFixed(2)}×`).join(' | ')} |`);
    for (const b of BEFORE) {
      const [x, y] = [chunked.get(PLUGIN)!, chunked.get(b.driver)!];
      out.push(`| tsvol (info) / ${b.driver} | ${x.map((v, i) => `${(v / y[i]!).toFixed(2)}×`).join(' | ')} |`);
    }
    console.log(out.join('\n'));
  }

  if (RUNS > 0) await containerStarts();
  if (profDir !== undefined) {
    // Disabling stops it with SIGTERM: it drains and exits, and node writes the profile then.
    removeVolumes(PROF_PLUGIN);
    docker('plugin', 'disable', PROF_PLUGIN);
    fs.mkdirSync(PROF_MANAGED!, { recursive: true });
    for (const f of fs.existsSync(profDir) ? fs.readdirSync(profDir) : []) fs.copyFileSync(path.join(profDir, f), path.join(PROF_MANAGED!, f));
    console.log(`\nprofiles of ${PROF_PLUGIN}: ${PROF_MANAGED}`);
  }
} finally {
  closeEngineApi();
  for (const d of [...extraPlugins, LEGACY_PLUGIN]) removeVolumes(d);
  for (const p of extraPlugins) removePlugin(p);
  if (legacy !== undefined && legacy.exitCode === null) {
    const exited = new Promise((r) => legacy!.once('exit', r));
    legacy.kill('SIGTERM');
    await exited;
  }
  await env.teardown();
}
