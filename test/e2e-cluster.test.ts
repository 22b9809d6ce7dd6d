/**
 * tsvol in a real Swarm over a real GlusterFS volume (issue #14): two dockerd nodes in their own network
 * namespaces, each with its own FUSE mount of the volume, built and removed by test/helpers/swarm.ts.
 * Needs root, FUSE and network namespaces; a missing one fails the suite (never a skip).
 */
import anyTest, { type TestFn } from 'ava';
import { IMAGE } from './helpers/docker.js';
import { CLUSTER_PLUGIN, setupCluster, waitFor, type Cluster } from './helpers/swarm.js';

const test = anyTest as TestFn<{ cluster: Cluster }>;

test.before(async (t) => {
  t.context.cluster = await setupCluster({ scope: 'local' });
});

test.after.always(async (t) => {
  await t.context.cluster?.teardown();
});

/** The nodes a service's running tasks are on, and their states. */
function runningTasks(c: Cluster, service: string): string[] {
  return c.manager
    .docker('service', 'ps', '--filter', 'desired-state=running', '--format', '{{.Node}} {{.CurrentState}}', service)
    .split('\n')
    .filter((l) => l.includes(' Running '));
}

test.serial('cluster harness: two Swarm nodes run a 2-replica service, each task on its node with a tsvol volume', async (t) => {
  const c = t.context.cluster;
  const [n1, n2] = c.nodes;
  t.is(c.manager.docker('node', 'ls', '--format', '{{.Hostname}} {{.Status}}').split('\n').sort().join(','), `${n1.id} Ready,${n2.id} Ready`);
  c.manager.docker(
    'service', 'create', '--detach', '--no-resolve-image', '--name', 'harness', '--replicas', '2', '--replicas-max-per-node', '1',
    '--stop-grace-period', '1s',
    '--mount', `type=volume,source=hv,target=/d,volume-driver=${CLUSTER_PLUGIN}`,
    IMAGE, 'sh', '-c', 'hostname > /d/who; sleep 100000',
  );
  await waitFor('two running tasks', () => runningTasks(c, 'harness').length === 2, 120_000);
  t.deepEqual(runningTasks(c, 'harness').map((l) => l.split(' ')[0]).sort(), [n1.id, n2.id]);
  for (const node of c.nodes) {
    t.regex(node.docker('volume', 'ls', '--format', '{{.Driver}} {{.Name}}'), new RegExp(`^${CLUSTER_PLUGIN}:latest hv$`, 'm'));
  }
  c.manager.docker('service', 'rm', 'harness');
});
