/**
 * tsvol in cluster mode in a real Swarm over a real GlusterFS volume (issue #14): two dockerd nodes in
 * their own network namespaces, each with its own FUSE mount of the volume and the tsvol plugin with
 * `TSVOL_SCOPE=global` on one shared data root, built and removed by test/helpers/swarm.ts. Driven only
 * through the docker CLI of each node. Needs root, FUSE and network namespaces; a missing one fails the
 * suite (never a skip).
 */
import fs from 'node:fs';
import anyTest, { type TestFn } from 'ava';
import { IMAGE } from './helpers/docker.js';
import { CLUSTER_PLUGIN, WORK, setupCluster, waitFor, type Cluster, type ClusterNode } from './helpers/swarm.js';

const test = anyTest as TestFn<{ cluster: Cluster }>;

test.before(async (t) => {
  t.context.cluster = await setupCluster({ scope: 'global' });
});

test.after.always(async (t) => {
  await t.context.cluster?.teardown();
});

const MOUNT = (volume: string): string => `type=volume,source=${volume},target=/d,volume-driver=${CLUSTER_PLUGIN}`;

/** `docker service create` on the manager: detached, the local test image, tasks stop within 1 s. */
function createService(c: Cluster, name: string, opts: string[], script: string): void {
  c.manager.docker(
    'service', 'create', '--detach', '--no-resolve-image', '--name', name, '--stop-grace-period', '1s',
    // Each task's hostname is its node's, so a task can say where it ran.
    '--hostname', '{{.Node.Hostname}}',
    ...opts, IMAGE, 'sh', '-c', script,
  );
}

/** The nodes (Swarm hostnames) a service's tasks run on now. */
function runningOn(c: Cluster, service: string): string[] {
  return c.manager
    .docker('service', 'ps', '--filter', 'desired-state=running', '--format', '{{.Node}}|{{.CurrentState}}', service)
    .split('\n')
    .filter((l) => l.includes('|Running'))
    .map((l) => l.split('|')[0]!)
    .sort();
}

/** Waits until `count` tasks of `service` run; returns their nodes. */
async function waitRunning(c: Cluster, service: string, count: number, ms = 90_000): Promise<string[]> {
  await waitFor(`${count} running task(s) of ${service}`, () => runningOn(c, service).length === count, ms);
  return runningOn(c, service);
}

/** The container of `service`'s task on `node`. */
function taskContainer(node: ClusterNode, service: string): string {
  const ids = node.docker('ps', '-q', '--filter', `label=com.docker.swarm.service.name=${service}`).split('\n').filter((l) => l !== '');
  if (ids.length !== 1) throw new Error(`${node.id} runs ${ids.length} task containers of ${service}`);
  return ids[0]!;
}

/** `sh -c script` in `service`'s task container on `node`; stdout, or undefined if it failed. */
function execIn(node: ClusterNode, service: string, script: string): string | undefined {
  try {
    return node.docker('exec', taskContainer(node, service), 'sh', '-c', script);
  } catch {
    // Not running yet, or the script failed: the caller polls.
    return undefined;
  }
}

/** A plain container on `node` with `volume` at /d: `sh -c script`'s stdout. */
function runOn(node: ClusterNode, volume: string, script: string): string {
  return node.docker('run', '--rm', '--network', 'none', '-v', `${volume}:/d`, IMAGE, 'sh', '-c', script);
}

/** Removes `service` and waits until `docker volume rm volumes…` succeeds on `node` (its tasks' holds go with them). */
async function removeServiceAndVolumes(c: Cluster, service: string, node: ClusterNode, ...volumes: string[]): Promise<void> {
  c.manager.docker('service', 'rm', service);
  let last = '';
  await waitFor(`docker volume rm ${volumes.join(' ')} on ${node.id}`, () => {
    try {
      node.docker('volume', 'rm', ...volumes);
      return true;
    } catch (err) {
      last = (err as Error).message;
      return false;
    }
  }, 60_000).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}: ${last}`);
  });
}

const volumeNames = (node: ClusterNode): string[] => node.docker('volume', 'ls', '-q', '--filter', `driver=${CLUSTER_PLUGIN}:latest`).split('\n').filter((l) => l !== '');

test.serial('e2e cluster: a volume made on one node is listed, inspected, mounted and removed on the other, with its data; Scope global', (t) => {
  const [n1, n2] = t.context.cluster.nodes;
  n1.docker('volume', 'create', '-d', CLUSTER_PLUGIN, 'everywhere');
  runOn(n1, 'everywhere', 'printf "made on n1\\001\\377" > /d/f');
  t.true(volumeNames(n2).includes('everywhere'), 'n2 lists it');
  t.is(n2.docker('volume', 'inspect', '--format', '{{.Scope}} {{.Driver}}', 'everywhere'), `global ${CLUSTER_PLUGIN}:latest`);
  t.is(runOn(n2, 'everywhere', 'wc -c < /d/f; cat /d/f | head -c 9'), '12\nmade on n');
  n2.docker('volume', 'rm', 'everywhere');
  t.false(volumeNames(n2).includes('everywhere'));
  t.false(volumeNames(n1).includes('everywhere'), 'gone on n1 too');
});

test.serial('e2e cluster: a drained node’s task starts on the other node and finds every byte', async (t) => {
  const c = t.context.cluster;
  // 8 MiB of random bytes and their hash, written once: a task that finds the file leaves it alone.
  createService(c, 'follow', ['--replicas', '1', '--mount', MOUNT('follow')],
    '[ -f /d/done ] || { dd if=/dev/urandom of=/d/blob bs=1M count=8 2>/dev/null && busybox sha256sum /d/blob > /d/sum && hostname > /d/writer && touch /d/done; }; sleep 100000');
  const [first] = await waitRunning(c, 'follow', 1);
  const from = c.node(first!);
  await waitFor('the blob written', () => execIn(from, 'follow', 'cat /d/done && cat /d/writer') === first, 60_000);
  const sum = execIn(from, 'follow', 'cat /d/sum')!;
  c.manager.docker('node', 'update', '--availability', 'drain', from.id);
  try {
    await waitFor('the task on the other node', () => {
      const on = runningOn(c, 'follow');
      return on.length === 1 && on[0] !== from.id;
    }, 90_000);
    const to = c.node(runningOn(c, 'follow')[0]!);
    t.not(to.id, from.id);
    t.is(execIn(to, 'follow', 'busybox sha256sum /d/blob'), sum, 'every byte, read on the other node through its own GlusterFS mount');
    t.is(execIn(to, 'follow', 'cat /d/writer'), from.id, 'written on the drained node, not rewritten here');
  } finally {
    c.manager.docker('node', 'update', '--availability', 'active', from.id);
  }
  await removeServiceAndVolumes(c, 'follow', c.manager, 'follow');
  t.false(volumeNames(c.nodes[1]).includes('follow'));
});

test.serial('e2e cluster: two replicas on two nodes write to one volume and each sees the other’s files', async (t) => {
  const c = t.context.cluster;
  const [n1, n2] = c.nodes;
  createService(c, 'pair', ['--replicas', '2', '--replicas-max-per-node', '1', '--mount', MOUNT('pair')], 'echo "hello from $(hostname)" > /d/$(hostname); sleep 100000');
  t.deepEqual(await waitRunning(c, 'pair', 2), [n1.id, n2.id]);
  for (const [reader, other] of [[n1, n2], [n2, n1]] as const) {
    let seen: string | undefined;
    await waitFor(`${reader.id} to see ${other.id}'s file`, () => (seen = execIn(reader, 'pair', `cat /d/${other.id}`)) !== undefined, 30_000);
    t.is(seen, `hello from ${other.id}`);
    t.is(execIn(reader, 'pair', 'ls /d | busybox sort | busybox tr "\\n" " "'), `${n1.id} ${n2.id}`);
  }
  await removeServiceAndVolumes(c, 'pair', n1, 'pair');
});

test.serial('e2e cluster: docker volume rm on the idle node is refused while a task on the other holds the volume, naming that node; allowed after', async (t) => {
  const c = t.context.cluster;
  const [n1, n2] = c.nodes;
  createService(c, 'pinner', ['--replicas', '1', '--constraint', `node.hostname==${n2.id}`, '--mount', MOUNT('pinned')], 'echo x > /d/x; sleep 100000');
  await waitRunning(c, 'pinner', 1);
  await waitFor('the task to write', () => execIn(n2, 'pinner', 'cat /d/x') === 'x', 30_000);
  const err = n1.dockerFails('volume', 'rm', 'pinned');
  t.regex(err, /VolumeDriver\.Remove: .*tsvolc-n2/, 'the Err names the node that holds it');
  t.true(volumeNames(n1).includes('pinned'), 'still there');
  t.is(runOn(n1, 'pinned', 'cat /d/x'), 'x', 'and its data');
  await removeServiceAndVolumes(c, 'pinner', n1, 'pinned');
  t.false(volumeNames(n1).includes('pinned'));
  t.false(volumeNames(n2).includes('pinned'));
});

test.serial('e2e cluster: a plugin restart on one node while the other writes: no volume lost, no hold lost', async (t) => {
  const c = t.context.cluster;
  const [n1, n2] = c.nodes;
  // n2 appends a numbered line every 50 ms and stops the task at the first failed write.
  createService(c, 'writer', ['--replicas', '1', '--constraint', `node.hostname==${n2.id}`, '--restart-condition', 'none', '--mount', MOUNT('steady')],
    'i=0; while :; do i=$((i+1)); echo $i >> /d/log || exit 1; busybox usleep 50000; done');
  await waitRunning(c, 'writer', 1);
  // n1 holds a volume of its own (a plain container) and has an idle one.
  n1.docker('volume', 'create', '-d', CLUSTER_PLUGIN, 'idle1');
  const holder = n1.docker('run', '-d', '--network', 'none', '-v', 'held1:/d', '--volume-driver', CLUSTER_PLUGIN, IMAGE, 'sh', '-c', 'echo held > /d/h; sleep 100000');
  const lines = (): number => Number(runOn(n1, 'steady', 'wc -l < /d/log'));
  await waitFor('the writer to write', () => lines() > 5, 30_000);

  n1.docker('plugin', 'disable', '-f', CLUSTER_PLUGIN);
  n1.docker('plugin', 'enable', CLUSTER_PLUGIN);
  const after = lines();

  // The writer never failed (a failed write ends its one task, and none restarts).
  t.deepEqual(runningOn(c, 'writer'), [n2.id]);
  t.is(c.manager.docker('service', 'ps', '-q', 'writer').split('\n').length, 1, 'one task, never restarted');
  await waitFor('the writer to go on', () => lines() > after, 10_000);
  const log = runOn(n1, 'steady', 'cat /d/log').split('\n');
  t.deepEqual(log, log.map((_, i) => String(i + 1)), 'lines 1..N: no write lost or failed');
  // No volume lost, on either node.
  for (const node of c.nodes) for (const v of ['steady', 'idle1', 'held1']) t.true(volumeNames(node).includes(v), `${node.id} lists ${v}`);
  // No hold lost: n1's container still holds held1 after its plugin restarted; n2's task still holds steady
  // after n1's plugin reconciled at start-up.
  t.regex(n2.dockerFails('volume', 'rm', 'held1'), /tsvolc-n1/);
  t.regex(n1.dockerFails('volume', 'rm', 'steady'), /tsvolc-n2/);
  t.is(n1.docker('exec', holder, 'cat', '/d/h'), 'held');

  n1.docker('rm', '-f', holder);
  n1.docker('volume', 'rm', 'idle1', 'held1');
  await removeServiceAndVolumes(c, 'writer', n1, 'steady');
});

test.serial('e2e cluster: a node killed with kill -9: its holds expire after the lease; the volume is used and removed on the survivor', async (t) => {
  const c = t.context.cluster;
  const [n1, n2] = c.nodes;
  createService(c, 'doomed', ['--replicas', '1', '--constraint', `node.hostname==${n2.id}`, '--mount', MOUNT('orphan')], 'echo "before the crash" > /d/note; sleep 100000');
  await waitRunning(c, 'doomed', 1);
  await waitFor('the task to write', () => execIn(n2, 'doomed', 'cat /d/note') === 'before the crash', 30_000);

  const killed = await c.killNode(n2);
  const killedAt = Date.now();
  t.true(killed.length >= 4, `dockerd, containerd, shims, plugin, task: ${killed.length} processes`);
  // Within the lease, n2's hold still counts: refused, naming n2.
  t.regex(n1.dockerFails('volume', 'rm', 'orphan'), /tsvolc-n2/);
  t.true(Date.now() - killedAt < c.leaseSeconds * 1000, 'that refusal came within the lease');
  // The survivor uses it meanwhile.
  t.is(runOn(n1, 'orphan', 'cat /d/note'), 'before the crash');
  c.manager.docker('service', 'rm', 'doomed');
  let removedAt = 0;
  await waitFor('the dead node’s hold to expire', () => {
    try {
      n1.docker('volume', 'rm', 'orphan');
      removedAt = Date.now();
      return true;
    } catch {
      return false;
    }
  }, (c.leaseSeconds + 30) * 1000);
  const waited = (removedAt - killedAt) / 1000;
  t.log(`removed ${waited.toFixed(1)} s after the kill (lease ${c.leaseSeconds} s)`);
  t.true(waited <= c.leaseSeconds * 2 + 5, `expired within about the lease: ${waited} s`);
  t.false(volumeNames(n1).includes('orphan'));
  const takeover = n1.logTail(1000).split('\n').filter((l) => l.includes('taking over the holds of a node whose lease expired'));
  t.true(takeover.some((l) => l.includes('tsvolc-n2') && l.includes('orphan')), `a log line on n1 names the dead node and the volume: ${takeover.join('\n')}`);

  // n2 comes back (its dockerd restarts the plugin) and sees the cluster as it is now.
  await c.startNode(n2);
  t.false(volumeNames(n2).includes('orphan'));
  // Its plugin's start-up cleared the mount the killed instance had made for the task, of a volume the
  // survivor has removed since.
  const stale = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(`${n2.dataRoot}/plugins/`) && / \S+\/orphan /.test(l));
  t.deepEqual(stale, [], 'no mount of the removed volume left on the restarted node');
  n2.docker('volume', 'create', '-d', CLUSTER_PLUGIN, 'after-crash');
  t.true(volumeNames(n1).includes('after-crash'));
  n1.docker('volume', 'rm', 'after-crash');
});

test.serial('e2e cluster: a data.source not on a shared filesystem: the plugin refuses to start in global scope, saying why', (t) => {
  const c = t.context.cluster;
  const n1 = c.nodes[0];
  const local = `${WORK}/n1/not-shared`;
  fs.mkdirSync(local, { recursive: true, mode: 0o700 });
  c.createPlugin(n1, 'tsvol-notshared', [`data.source=${local}`, 'TSVOL_SCOPE=global', 'TSVOL_NODE_ID=tsvolc-n1-local', `TSVOL_LEASE_SECONDS=${c.leaseSeconds}`], { enable: false });
  try {
    n1.dockerFails('plugin', 'enable', 'tsvol-notshared');
    t.regex(n1.docker('plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'), /^tsvol-notshared:latest false$/m);
    t.regex(n1.logTail(200), /the shared filesystem is not mounted there/, 'the plugin says why (dockerd logs its output)');
  } finally {
    n1.docker('plugin', 'rm', '-f', 'tsvol-notshared');
  }
  // The node's own plugin is untouched.
  n1.docker('volume', 'create', '-d', CLUSTER_PLUGIN, 'still-fine');
  n1.docker('volume', 'rm', 'still-fine');
});
