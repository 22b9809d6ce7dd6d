/**
 * Cluster mode through the real server (#14): two `node dist/main.js` processes with TSVOL_SCOPE=global,
 * each with its own TSVOL_NODE_ID, VolumeDriver socket and TSVOL_MOUNTS, on one shared root that each
 * reaches through its own FUSE mount (bindfs over one backing directory: statfs says FUSE, as for
 * GlusterFS or ceph-fuse). Spoken to as dockerd speaks. The real multi-host Swarm + GlusterFS suite is
 * the cluster harness's (test/e2e-cluster*.test.ts); this one is the product's contract on one machine.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { makeSharedRoot, type SharedRoot } from './helpers/cluster.js';
import { CLI, cleanupDir, isMounted, requireRoot, startTestServer, tempDir, type TestServer } from './helpers/server.js';

/** Lease of the test servers: renewed every 2 s, expired 6 s after a kill -9. */
const LEASE_S = 6;

interface Cluster {
  readonly shared: SharedRoot;
  /** Starts (or restarts) node `node`'s server on its own mount of the shared root. */
  start(node: string, env?: Record<string, string>): Promise<TestServer>;
}

async function withCluster(t: ExecutionContext, fn: (c: Cluster) => Promise<void>): Promise<void> {
  if (!requireRoot(t)) return;
  const shared = makeSharedRoot('tsvol-cluster-srv-');
  const servers: TestServer[] = [];
  const dirs = new Map<string, string>();
  try {
    await fn({
      shared,
      async start(node, env = {}) {
        let dir = dirs.get(node);
        if (dir === undefined) {
          dir = tempDir(`tsvol-node-${node}-`);
          dirs.set(node, dir);
        }
        const s = await startTestServer({
          dir,
          env: { TSVOL_SCOPE: 'global', TSVOL_NODE_ID: node, TSVOL_LEASE_SECONDS: String(LEASE_S), TSVOL_DATA: shared.mountOf(node), ...env },
        });
        servers.push(s);
        return s;
      },
    });
  } finally {
    for (const s of servers) await s.kill();
    for (const dir of dirs.values()) cleanupDir(dir);
    shared.cleanup();
  }
}

/** Starts a server expected to refuse to start; returns what it said. */
async function refusedStart(env: Record<string, string>): Promise<string> {
  const dir = tempDir('tsvol-cluster-refused-');
  try {
    const err = await startTestServer({ dir, env, startMs: 10_000 }).then(
      async (s) => {
        await s.kill();
        throw new Error('the server started');
      },
      (e: unknown) => e as Error,
    );
    return err.message;
  } finally {
    cleanupDir(dir);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test.serial('Capabilities says global; a volume made on node A is listed, inspected, mounted and removed from node B, with its data', async (t) => {
  await withCluster(t, async (c) => {
    const a = await c.start('a');
    const b = await c.start('b');
    for (const s of [a, b]) {
      const caps = await s.call('/VolumeDriver.Capabilities', null);
      t.is(caps.raw, '{"Capabilities":{"Scope":"global"}}');
    }
    await a.ok('/VolumeDriver.Create', { Name: 'db', Opts: { uid: '1000', mode: '0750' } });
    const mpA = (await a.ok('/VolumeDriver.Mount', { Name: 'db', ID: 'ctr-a' })).Mountpoint as string;
    t.is(mpA, path.join(a.mounts!, 'db'));
    t.true(isMounted(mpA));
    fs.writeFileSync(path.join(mpA, 'hello'), 'written on node a');
    await a.ok('/VolumeDriver.Unmount', { Name: 'db', ID: 'ctr-a' });
    t.false(isMounted(mpA));

    t.deepEqual(((await b.ok('/VolumeDriver.List', null)).Volumes as { Name: string }[]).map((v) => v.Name), ['db']);
    const info = (await b.ok('/VolumeDriver.Get', { Name: 'db' })).Volume as { Status: Record<string, unknown> };
    t.like(info.Status, { kind: 'named', mounts: 0, options: { uid: '1000', mode: '0750' } });
    const mpB = (await b.ok('/VolumeDriver.Mount', { Name: 'db', ID: 'ctr-b' })).Mountpoint as string;
    t.is(fs.readFileSync(path.join(mpB, 'hello'), 'utf8'), 'written on node a');
    const st = fs.statSync(mpB);
    t.is(st.uid, 1000);
    t.is(st.mode & 0o7777, 0o750);
    // A sees B's mount in Status, as another node's.
    const fromA = (await a.ok('/VolumeDriver.Get', { Name: 'db' })).Volume as { Status: Record<string, unknown> };
    t.deepEqual(fromA.Status.nodes, { b: { mounts: 1, holders: ['ctr-b'], lease: 'live' } });
    await b.ok('/VolumeDriver.Unmount', { Name: 'db', ID: 'ctr-b' });
    await b.ok('/VolumeDriver.Remove', { Name: 'db' });
    const gone = await a.call('/VolumeDriver.Get', { Name: 'db' });
    t.is(gone.status, 404);
    t.regex(gone.json.Err as string, /volume "db" not found/);
    t.false(fs.existsSync(path.join(c.shared.back, 'volumes', 'db')));
  });
});

test.serial('Remove on node B is refused while node A holds the volume, naming A; allowed once A unmounts', async (t) => {
  await withCluster(t, async (c) => {
    const a = await c.start('a');
    const b = await c.start('b');
    await a.ok('/VolumeDriver.Create', { Name: 'shared' });
    await a.ok('/VolumeDriver.Mount', { Name: 'shared', ID: 'task-1' });
    const refused = await b.call('/VolumeDriver.Remove', { Name: 'shared' });
    t.is(refused.status, 409);
    t.is(refused.json.Err, 'volume "shared" is in use on node "a": 1 active mount(s) (IDs task-1); stop the containers using it on that node first');
    // Both nodes may hold it at once (a shared filesystem): B mounts too, and A's Remove names B.
    await b.ok('/VolumeDriver.Mount', { Name: 'shared', ID: 'task-2' });
    await a.ok('/VolumeDriver.Unmount', { Name: 'shared', ID: 'task-1' });
    const refusedA = await a.call('/VolumeDriver.Remove', { Name: 'shared' });
    t.regex(refusedA.json.Err as string, /in use on node "b": 1 active mount\(s\) \(IDs task-2\)/);
    await b.ok('/VolumeDriver.Unmount', { Name: 'shared', ID: 'task-2' });
    await b.ok('/VolumeDriver.Remove', { Name: 'shared' });
    t.deepEqual((await a.ok('/VolumeDriver.List', null)).Volumes, []);
  });
});

test.serial('node A killed -9 while holding: B refuses Remove during A\'s lease, then removes it, logging the takeover; a restarted A keeps its holds', async (t) => {
  await withCluster(t, async (c) => {
    let a = await c.start('a');
    const b = await c.start('b');
    await a.ok('/VolumeDriver.Create', { Name: 'kept' });
    await a.ok('/VolumeDriver.Create', { Name: 'orphaned' });
    await a.ok('/VolumeDriver.Mount', { Name: 'kept', ID: 'ctr-1' });
    await a.ok('/VolumeDriver.Mount', { Name: 'orphaned', ID: 'ctr-2' });
    await a.kill();
    // A restarted within its lease: after ruling out a twin, it keeps its holds (its containers may still run).
    const started = Date.now();
    a = await c.start('a');
    t.log(`restart after kill -9 took ${Date.now() - started} ms`);
    t.like(((await a.ok('/VolumeDriver.Get', { Name: 'kept' })).Volume as { Status: object }).Status, { mounts: 1, holders: ['ctr-1'] });
    t.regex((await b.call('/VolumeDriver.Remove', { Name: 'kept' })).json.Err as string, /in use on node "a"/);
    // Now A dies for good.
    await a.kill();
    const killed = Date.now();
    t.regex((await b.call('/VolumeDriver.Remove', { Name: 'orphaned' })).json.Err as string, /in use on node "a": 1 active mount\(s\) \(IDs ctr-2\)/);
    await sleep(LEASE_S * 1000 + 500 - (Date.now() - killed));
    await b.ok('/VolumeDriver.Remove', { Name: 'orphaned' });
    const line = b
      .output()
      .split('\n')
      .filter((l) => l.includes('taking over the holds'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)[0];
    t.like(line, { level: 40, node: 'a', volume: 'orphaned', ids: ['ctr-2'], msg: 'taking over the holds of a node whose lease expired' });
    // B can use what A left: mount and write it.
    const mp = (await b.ok('/VolumeDriver.Mount', { Name: 'kept', ID: 'ctr-b' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'f'), 'b');
    await b.ok('/VolumeDriver.Unmount', { Name: 'kept', ID: 'ctr-b' });
  });
});

test.serial('kinds cluster mode cannot offer are refused with an Err naming cluster mode; clones of named volumes work across nodes', async (t) => {
  await withCluster(t, async (c) => {
    const a = await c.start('a', { TSVOL_BIND_ROOTS: '/srv' });
    const b = await c.start('b');
    const refusals: [Record<string, string>, RegExp][] = [
      [{ size: '64m' }, /size= is refused: a loop-mounted ext4 image on a shared filesystem would be mounted by every node/],
      [{ type: 'bind', device: '/srv' }, /bind-style volumes \(type=bind, device=\) name a host path, and each node has its own host paths/],
      [{ type: 'none', o: 'bind', device: '/srv' }, /bind-style volumes/],
      [{ layer: 'base' }, /layer= and image= are refused: the layer store is one host's SQLite database/],
      [{ image: 'busybox' }, /layer= and image= are refused/],
    ];
    for (const [opts, message] of refusals) {
      const r = await a.call('/VolumeDriver.Create', { Name: 'xx', Opts: opts });
      t.is(r.status, 400, JSON.stringify(opts));
      t.regex(r.json.Err as string, /^create volume "xx": not offered in cluster mode \(TSVOL_SCOPE=global\): /);
      t.regex(r.json.Err as string, message);
    }
    t.deepEqual((await a.ok('/VolumeDriver.List', null)).Volumes, [], 'nothing was created');
    // A clone made on B of a volume A wrote.
    await a.ok('/VolumeDriver.Create', { Name: 'src' });
    const mp = (await a.ok('/VolumeDriver.Mount', { Name: 'src', ID: 'w' })).Mountpoint as string;
    fs.mkdirSync(path.join(mp, 'sub'));
    fs.writeFileSync(path.join(mp, 'sub', 'f'), 'original');
    await a.ok('/VolumeDriver.Unmount', { Name: 'src', ID: 'w' });
    await b.ok('/VolumeDriver.Create', { Name: 'copy', Opts: { from: 'src' } });
    const mpc = (await a.ok('/VolumeDriver.Mount', { Name: 'copy', ID: 'r' })).Mountpoint as string;
    t.is(fs.readFileSync(path.join(mpc, 'sub', 'f'), 'utf8'), 'original');
    t.like(((await a.ok('/VolumeDriver.Get', { Name: 'copy' })).Volume as { Status: object }).Status, { kind: 'clone-of', from: 'src' });
    // The source's hold for the copy is gone: it can be removed.
    await a.ok('/VolumeDriver.Remove', { Name: 'src' });
  });
});

test.serial('a Create of one name on both nodes at once makes one volume, and both succeed', async (t) => {
  await withCluster(t, async (c) => {
    const a = await c.start('a');
    const b = await c.start('b');
    for (let i = 0; i < 10; i++) {
      const name = `race${i}`;
      const [ra, rb] = await Promise.all([a.call('/VolumeDriver.Create', { Name: name }), b.call('/VolumeDriver.Create', { Name: name })]);
      t.is(ra.json.Err, '', `${name} on a`);
      t.is(rb.json.Err, '', `${name} on b`);
    }
    t.is(((await b.ok('/VolumeDriver.List', null)).Volumes as unknown[]).length, 10);
    // Whoever lost the rename left nothing behind in its tmp/.
    for (const node of ['a', 'b']) t.deepEqual(fs.readdirSync(path.join(c.shared.back, 'nodes', node, 'tmp')).filter((e) => e.startsWith('new-')), [], node);
  });
});

test.serial('a _data that another node swapped for a symlink is never mounted', async (t) => {
  await withCluster(t, async (c) => {
    const a = await c.start('a');
    const b = await c.start('b');
    await a.ok('/VolumeDriver.Create', { Name: 'target' });
    const data = path.join(c.shared.back, 'volumes', 'target', '_data');
    fs.rmSync(data, { recursive: true });
    fs.symlinkSync('/etc', data);
    const r = await b.call('/VolumeDriver.Mount', { Name: 'target', ID: 'm' });
    t.not(r.json.Err, '');
    t.regex(r.json.Err as string, /mount volume "target": .*(symlink|not a directory)/);
    t.false(isMounted(path.join(b.mounts!, 'target')));
    t.false(fs.existsSync(path.join(b.mounts!, 'target', 'passwd')));
  });
});

test.serial('start-up refuses what cluster mode cannot be: a local root, a missing root, no node ID, CSI; a cluster root in local mode', async (t) => {
  if (!requireRoot(t)) return;
  const local = tempDir('tsvol-local-root-');
  const shared = makeSharedRoot('tsvol-cluster-refuse-');
  try {
    const base = { TSVOL_SCOPE: 'global', TSVOL_NODE_ID: 'n1' };
    t.regex(await refusedStart({ ...base, TSVOL_DATA: local }), new RegExp(`TSVOL_DATA=${local} is on a local filesystem \\((ext2/3/4|xfs|btrfs|tmpfs|overlay)\\), not a shared one: the shared filesystem is not mounted there`));
    t.false(fs.existsSync(path.join(local, 'volumes')), 'nothing was written to the local root');
    t.regex(await refusedStart({ ...base, TSVOL_DATA: path.join(local, 'not-mounted') }), /TSVOL_DATA=.*not-mounted does not exist: the shared filesystem is not mounted there/);
    t.false(fs.existsSync(path.join(local, 'not-mounted')), 'the missing root was not made');
    t.regex(await refusedStart({ TSVOL_SCOPE: 'global', TSVOL_DATA: shared.mountOf('n1') }), /TSVOL_SCOPE=global needs TSVOL_NODE_ID/);
    t.regex(await refusedStart({ ...base, TSVOL_DATA: shared.mountOf('n1'), TSVOL_CSI_SOCKET: path.join(local, 'csi.sock') }), /TSVOL_SCOPE=global does not serve CSI/);
    // A root that cluster mode used is refused in local mode (no SQLite on it, no silent second store).
    const dir = tempDir('tsvol-cluster-once-');
    const s = await startTestServer({ dir, env: { ...base, TSVOL_DATA: shared.mountOf('n1') } });
    await s.stop();
    cleanupDir(dir);
    t.regex(await refusedStart({ TSVOL_DATA: shared.mountOf('n1') }), /is a cluster-mode root \(tsvol-cluster\): set TSVOL_SCOPE=global and TSVOL_NODE_ID/);
    t.false(fs.existsSync(path.join(shared.back, 'tsvol.db')));
  } finally {
    shared.cleanup();
    cleanupDir(local);
  }
});

test.serial('two servers claiming one node ID: the second refuses to start, naming the first', async (t) => {
  await withCluster(t, async (c) => {
    await c.start('a');
    const dir = tempDir('tsvol-twin-');
    try {
      const msg = await startTestServer({
        dir,
        env: { TSVOL_SCOPE: 'global', TSVOL_NODE_ID: 'a', TSVOL_LEASE_SECONDS: String(LEASE_S), TSVOL_DATA: c.shared.mountOf('twin') },
      }).then(
        async (s) => {
          await s.kill();
          return 'started';
        },
        (e: unknown) => (e as Error).message,
      );
      t.regex(msg, /TSVOL_NODE_ID="a" is in use by a live tsvol server \(host .+, pid \d+\).*give each node its own TSVOL_NODE_ID/);
    } finally {
      cleanupDir(dir);
    }
  });
});

test.serial('the tsvol CLI on a node goes through that node\'s server; alone it refuses, and layers are refused in cluster mode', async (t) => {
  await withCluster(t, async (c) => {
    const a = await c.start('a');
    await a.ok('/VolumeDriver.Create', { Name: 'db' });
    const mp = (await a.ok('/VolumeDriver.Mount', { Name: 'db', ID: 'w' })).Mountpoint as string;
    fs.writeFileSync(path.join(mp, 'f'), 'cli');
    await a.ok('/VolumeDriver.Unmount', { Name: 'db', ID: 'w' });
    const cli = (node: string, ...args: string[]) => {
      const env: Record<string, string> = { PATH: process.env.PATH ?? '', TSVOL_SCOPE: 'global', TSVOL_NODE_ID: node, TSVOL_DATA: c.shared.mountOf(node) };
      return spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8' });
    };
    const ls = cli('a', 'volume', 'ls', '--json');
    t.is(ls.status, 0, ls.stderr);
    t.deepEqual((JSON.parse(ls.stdout) as { name: string }[]).map((v) => v.name), ['db']);
    // An export is read below the pinned _data: the file comes back.
    const tar = spawnSync(process.execPath, [CLI, 'volume', 'export', 'db'], { env: { PATH: process.env.PATH ?? '', TSVOL_SCOPE: 'global', TSVOL_NODE_ID: 'a', TSVOL_DATA: c.shared.mountOf('a') } });
    t.is(tar.status, 0, tar.stderr.toString());
    t.true(tar.stdout.includes(Buffer.from('cli')));
    const layers = cli('a', 'layer', 'ls');
    t.not(layers.status, 0);
    t.regex(layers.stderr, /the layer manager and images are not offered in cluster mode \(TSVOL_SCOPE=global\)/);
    // Node b has no server: its CLI refuses to work alone.
    const alone = cli('b', 'volume', 'ls');
    t.not(alone.status, 0);
    t.regex(alone.stderr, /cluster mode \(TSVOL_SCOPE=global\): no tsvol server of node "b" answers on .*nodes\/b\/control\.sock; tsvol commands go through this node's running server/);
  });
});
