/**
 * Cluster mode through Docker (issue #14), on the two-node Swarm over GlusterFS of test/helpers/swarm.ts
 * (built and removed here; it holds the engine lock), all in one run so that every figure shares the
 * machine's state. On node n1:
 * - `docker volume create`, `inspect` and `rm` through the Engine API (n1's socket, c=8, N volumes, best
 *   of interleaved rounds) for tsvol in cluster mode (TSVOL_SCOPE=global, data root on GlusterFS), tsvol in
 *   local mode with its data root on local disk, the same on the GlusterFS mount, and Docker's local driver;
 * - container start with a volume (Mount and Unmount): `docker run --rm --network none -v VOL:/d IMAGE sh -c :`,
 *   p50 of interleaved runs, the same drivers;
 * - a drained task coming back with its data: a 1-replica service with a tsvol volume holding 64 MiB,
 *   `docker node update --availability drain` of its node, until the task on the other node has read its
 *   file; against the same service without a volume (Swarm's own rescheduling time); interleaved rounds;
 * - the data path: 1 GiB written with `dd … conv=fsync` in a container into a tsvol cluster volume vs into
 *   a directory of the same GlusterFS mount bound into the container; interleaved rounds, best of.
 * `npm run bench -- cluster` runs only this bench. Knobs (environment):
 *   TSVOL_BENCH_CLUSTER_N       volumes per throughput round (200)
 *   TSVOL_BENCH_CLUSTER_ROUNDS  interleaved throughput rounds (3)
 *   TSVOL_BENCH_CLUSTER_RUNS    container starts per driver (20)
 *   TSVOL_BENCH_CLUSTER_DRAINS  drain rounds per service (3)
 *   TSVOL_BENCH_CLUSTER_WRITES  1 GiB write rounds per target, in ABBA order (4)
 *   TSVOL_BENCH_CLUSTER_MIB     size of that write in MiB (1024)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DOCKER, IMAGE } from '../test/helpers/docker.js';
import { CLUSTER_PLUGIN, RUN, WORK, setupCluster, waitFor, type Cluster, type ClusterNode } from '../test/helpers/swarm.js';
import { CONCURRENCY, closeEngineApi, engineCall, rate } from './engine-api.js';

const envInt = (name: string, dflt: number): number => {
  const raw = process.env[name];
  const v = Number(raw);
  return raw !== undefined && raw !== '' && Number.isInteger(v) && v >= 0 ? v : dflt;
};
const N = envInt('TSVOL_BENCH_CLUSTER_N', 200);
const ROUNDS = envInt('TSVOL_BENCH_CLUSTER_ROUNDS', 3);
const RUNS = envInt('TSVOL_BENCH_CLUSTER_RUNS', 20);
const DRAINS = envInt('TSVOL_BENCH_CLUSTER_DRAINS', 3);
const WRITES = envInt('TSVOL_BENCH_CLUSTER_WRITES', 4);
const MIB = envInt('TSVOL_BENCH_CLUSTER_MIB', 1024);

const LOCAL_DISK = 'tsvol-local';
const LOCAL_GLUSTER = 'tsvol-local-gfs';

/** One Engine API call on `node`'s socket; rejects on a status ≥ 300. */
function api(node: ClusterNode, method: string, urlPath: string, body?: unknown): Promise<number> {
  return engineCall(node.host.replace(/^unix:\/\//, ''), method, urlPath, body);
}

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** A volume driver under test on n1: its label and the name dockerd knows it by. */
interface Driver {
  readonly label: string;
  readonly driver: string;
}

async function throughput(node: ClusterNode, d: Driver, round: string, count: number): Promise<[number, number, number]> {
  const name = (i: number): string => `b-${d.driver.replace(/\W/g, '')}-${round}-${i}`;
  const create = await rate(count, (i) => api(node, 'POST', '/volumes/create', { Name: name(i), Driver: d.driver }));
  const inspect = await rate(count, (i) => api(node, 'GET', `/volumes/${name(i)}`));
  const remove = await rate(count, (i) => api(node, 'DELETE', `/volumes/${name(i)}`));
  return [create, inspect, remove];
}

/** Milliseconds `docker -H node args…` takes; throws if it fails. */
function timed(node: ClusterNode, args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(DOCKER, ['-H', node.host, ...args], { encoding: 'utf8', timeout: 600_000 });
  const took = ms(t0);
  if (r.status !== 0) throw new Error(`docker ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return took;
}

/** The nodes a service's tasks run on now. */
function runningOn(c: Cluster, service: string): string[] {
  return c.manager
    .docker('service', 'ps', '--filter', 'desired-state=running', '--format', '{{.Node}}|{{.CurrentState}}', service)
    .split('\n')
    .filter((l) => l.includes('|Running'))
    .map((l) => l.split('|')[0]!);
}

/** `sh -c script` in `service`'s task container on `node`: true if it exited 0. */
function execOk(node: ClusterNode, service: string, script: string): boolean {
  const ids = spawnSync(DOCKER, ['-H', node.host, 'ps', '-q', '--filter', `label=com.docker.swarm.service.name=${service}`], { encoding: 'utf8' }).stdout.trim();
  if (ids === '' || ids.includes('\n')) return false;
  return spawnSync(DOCKER, ['-H', node.host, 'exec', ids, 'sh', '-c', script]).status === 0;
}

/** Polls every 50 ms (the drain figure's resolution is the poll's, not waitFor's 250 ms). */
async function poll(what: string, ok: () => boolean, limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Drains the node `service`'s task runs on and returns the milliseconds until a task on the other node
 * passes `ready` (read its data); then makes the node active again.
 */
async function drainOnce(c: Cluster, service: string, ready: string): Promise<number> {
  const [from] = runningOn(c, service);
  if (from === undefined) throw new Error(`${service} has no running task`);
  const t0 = process.hrtime.bigint();
  c.manager.docker('node', 'update', '--availability', 'drain', from);
  let to: ClusterNode | undefined;
  await poll(`${service} back on the other node`, () => {
    const on = runningOn(c, service);
    to = on.length === 1 && on[0] !== from ? c.node(on[0]!) : undefined;
    return to !== undefined && execOk(to, service, ready);
  }, 180_000);
  const took = ms(t0);
  c.manager.docker('node', 'update', '--availability', 'active', from);
  return took;
}

/**
 * Throughput of `MIB` MiB written with dd conv=fsync in a container on `node` with `mount` at /d, in MB/s,
 * timed inside the container (/proc/uptime, 10 ms steps) so that the container's start is not counted.
 */
function writeRate(node: ClusterNode, mount: string[]): number {
  const out = node.docker('run', '--rm', '--network', 'none', ...mount, IMAGE, 'sh', '-c',
    `read a _ < /proc/uptime; dd if=/dev/zero of=/d/big bs=1M count=${MIB} conv=fsync 2>/dev/null || exit 1; read b _ < /proc/uptime; rm /d/big; echo $a $b`);
  const [a, b] = out.split(' ').map(Number);
  if (a === undefined || b === undefined || !(b > a)) throw new Error(`bad timing from the write: ${out}`);
  return (MIB * 1.048576) / (b - a);
}

const cluster = await setupCluster({ scope: 'global' });
try {
  const n1 = cluster.nodes[0];
  console.log(`## Cluster mode through Docker (two dockerd nodes, Swarm, GlusterFS 10 over FUSE; node n1)\n`);
  console.log(`Setup: ${cluster.setupTimings.map(([s, t]) => `${s} ${(t / 1000).toFixed(1)} s`).join(', ')}.\n`);
  // Local mode beside it on the same node: on local disk, and on n1's GlusterFS mount.
  const localDisk = path.join(WORK, 'n1', 'local-disk');
  const localGluster = path.join(n1.mount, 'local-n1');
  for (const dir of [localDisk, localGluster]) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  cluster.createPlugin(n1, LOCAL_DISK, [`data.source=${localDisk}`]);
  const drivers: Driver[] = [
    { label: 'local driver', driver: 'local' },
    { label: 'tsvol local mode, data root on local disk (ext4)', driver: LOCAL_DISK },
    { label: 'tsvol cluster mode, data root on GlusterFS', driver: CLUSTER_PLUGIN },
  ];
  try {
    cluster.createPlugin(n1, LOCAL_GLUSTER, [`data.source=${localGluster}`]);
    drivers.splice(2, 0, { label: 'tsvol local mode, data root on GlusterFS (SQLite on FUSE)', driver: LOCAL_GLUSTER });
  } catch (err) {
    console.log(`(tsvol local mode on the GlusterFS mount did not start, left out: ${(err as Error).message.split('\n')[0]})\n`);
  }

  // 1. Engine API throughput, warm-up then ROUNDS interleaved rounds, best of each.
  if (ROUNDS > 0) {
    const best = new Map(drivers.map((d) => [d.driver, [0, 0, 0]]));
    for (const d of drivers) await throughput(n1, d, 'warm', Math.min(N, 50));
    for (let r = 0; r < ROUNDS; r++) {
      for (const d of drivers) {
        const m = await throughput(n1, d, String(r), N);
        best.set(d.driver, best.get(d.driver)!.map((v, i) => Math.max(v, m[i]!)));
      }
    }
    console.log(`### Engine API on n1, c=${CONCURRENCY}, ${N} volumes, best of ${ROUNDS} interleaved rounds\n`);
    console.log('| driver | docker volume create | docker volume inspect | docker volume rm |\n|---|---:|---:|---:|');
    for (const d of drivers) console.log(`| ${d.label} | ${best.get(d.driver)!.map((v) => `${v.toFixed(0)}/s`).join(' | ')} |`);
    const cm = best.get(CLUSTER_PLUGIN)!;
    const lm = best.get(LOCAL_DISK)!;
    console.log(`| cluster mode / local mode (local disk) | ${cm.map((x, i) => `${(x / lm[i]!).toFixed(2)}×`).join(' | ')} |`);
  }

  // 2. Container start with a volume: Mount and Unmount through dockerd.
  if (RUNS > 0) {
    const starts = new Map(drivers.map((d) => [d.driver, [] as number[]]));
    const vol = (d: string): string => `b-run-${d.replace(/\W/g, '')}`;
    const args = (d: string): string[] => ['run', '--rm', '--network', 'none', '-v', `${vol(d)}:/d`, IMAGE, 'sh', '-c', ':'];
    for (const d of starts.keys()) n1.docker('volume', 'create', '-d', d, vol(d));
    for (const d of starts.keys()) timed(n1, args(d)); // warm-up
    for (let i = 0; i < RUNS; i++) for (const [d, times] of starts) times.push(timed(n1, args(d)));
    for (const d of starts.keys()) n1.docker('volume', 'rm', vol(d));
    console.log(`\n### Container start with a volume on n1 (\`docker run --rm --network none -v VOL:/d ${IMAGE} sh -c :\`), p50 of ${RUNS} interleaved runs\n`);
    console.log('| driver | p50 | / local driver |\n|---|---:|---:|');
    const base = median(starts.get('local')!);
    for (const d of drivers) {
      const p = median(starts.get(d.driver)!);
      console.log(`| ${d.label} | ${p.toFixed(0)} ms | ${(p / base).toFixed(2)}× |`);
    }
  }

  // 3. A drained task coming back with its data, against Swarm's own rescheduling without a volume.
  if (DRAINS > 0) {
    const common = ['--detach', '--no-resolve-image', '--replicas', '1', '--stop-grace-period', '1s'];
    cluster.manager.docker('service', 'create', ...common, '--name', 'b-follow', '--mount', `type=volume,source=b-follow,target=/d,volume-driver=${CLUSTER_PLUGIN}`,
      IMAGE, 'sh', '-c', '[ -f /d/done ] || { dd if=/dev/urandom of=/d/blob bs=1M count=64 2>/dev/null && busybox sha256sum /d/blob > /d/sum && touch /d/done; }; sleep 100000');
    cluster.manager.docker('service', 'create', ...common, '--name', 'b-bare', IMAGE, 'sleep', '100000');
    await waitFor('the bench services', () => runningOn(cluster, 'b-follow').length === 1 && runningOn(cluster, 'b-bare').length === 1, 120_000);
    await waitFor('the 64 MiB written', () => execOk(cluster.node(runningOn(cluster, 'b-follow')[0]!), 'b-follow', 'test -f /d/done'), 120_000);
    const follow: number[] = [];
    const bare: number[] = [];
    // One service runs at a time (the other scaled to 0), so that a drain moves one task only.
    const scale = async (service: string, n: number): Promise<void> => {
      cluster.manager.docker('service', 'scale', '--detach', `${service}=${n}`);
      await waitFor(`${service} at ${n}`, () => runningOn(cluster, service).length === n && (n > 0 || cluster.manager.docker('service', 'ps', '-q', '--filter', 'desired-state=running', service) === ''), 120_000);
    };
    await scale('b-bare', 0);
    for (let r = 0; r < DRAINS; r++) {
      // The task reads back all 64 MiB and checks the hash: "back with its data" means every byte.
      follow.push(await drainOnce(cluster, 'b-follow', 'busybox sha256sum -c /d/sum >/dev/null'));
      await scale('b-follow', 0);
      await scale('b-bare', 1);
      bare.push(await drainOnce(cluster, 'b-bare', 'true'));
      await scale('b-bare', 0);
      await scale('b-follow', 1);
      await waitFor('b-follow ready', () => execOk(cluster.node(runningOn(cluster, 'b-follow')[0]!), 'b-follow', 'test -f /d/done'), 60_000);
    }
    cluster.manager.docker('service', 'rm', 'b-follow', 'b-bare');
    console.log(`\n### A drained task back on the other node, ${DRAINS} interleaved rounds each\n`);
    console.log('| service | median | best | worst |\n|---|---:|---:|---:|');
    const row = (label: string, xs: number[]): string => `| ${label} | ${(median(xs) / 1000).toFixed(1)} s | ${(Math.min(...xs) / 1000).toFixed(1)} s | ${(Math.max(...xs) / 1000).toFixed(1)} s |`;
    console.log(row('tsvol cluster volume, until the task has checked all 64 MiB', follow));
    console.log(row('no volume (Swarm rescheduling alone), until the task answers exec', bare));
    await waitFor('b-follow volume free', () => spawnSync(DOCKER, ['-H', n1.host, 'volume', 'rm', 'b-follow']).status === 0, 60_000);
  }

  // 4. The data path: 1 GiB through tsvol's mount vs straight into the GlusterFS mount.
  if (WRITES > 0) {
    const direct = path.join(n1.mount, 'bench-direct');
    fs.mkdirSync(direct, { recursive: true });
    n1.docker('volume', 'create', '-d', CLUSTER_PLUGIN, 'b-write');
    const viaTsvol: number[] = [];
    const viaGluster: number[] = [];
    // ABBA order: a drift in the machine's load (other jobs, GlusterFS's own caches) favours neither side.
    for (let r = 0; r < WRITES; r++) {
      const pair: [number[], string[]][] = [[viaTsvol, ['-v', 'b-write:/d']], [viaGluster, ['-v', `${direct}:/d`]]];
      if (r % 2 === 1) pair.reverse();
      for (const [into, mount] of pair) into.push(writeRate(n1, mount));
    }
    n1.docker('volume', 'rm', 'b-write');
    fs.rmSync(direct, { recursive: true, force: true });
    const bt = Math.max(...viaTsvol);
    const bg = Math.max(...viaGluster);
    console.log(`\n### ${MIB} MiB written with \`dd bs=1M conv=fsync\` in a container on n1, best of ${WRITES} interleaved rounds (ABBA)\n`);
    console.log('| target | best | all rounds |\n|---|---:|---|');
    console.log(`| a tsvol cluster volume | ${bt.toFixed(0)} MB/s | ${viaTsvol.map((x) => x.toFixed(0)).join(', ')} |`);
    console.log(`| a directory of the same GlusterFS mount, bound into the container | ${bg.toFixed(0)} MB/s | ${viaGluster.map((x) => x.toFixed(0)).join(', ')} |`);
    console.log(`| tsvol / GlusterFS | ${(bt / bg).toFixed(2)}× | target ≥ 0.95× ${bt / bg >= 0.95 ? 'met' : 'NOT met'} |`);
  }
  console.log(`\n(load average at the end: ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}; exec roots under ${RUN})`);
} finally {
  closeEngineApi();
  await cluster.teardown();
}
