/**
 * Holds have owners (the trust review, session 7): the Docker protocol's mount IDs, CSI publishes (`csi-…`)
 * and holds for tsvol's own requests (`tsvol-cli-…`, dropped at start-up). A VolumeDriver.Mount or Unmount
 * naming one of tsvol's own must not release or forge it. Old code: a Docker Unmount with a publish's ID
 * (Status lists the holders) dropped the publish's hold, so Remove deleted a volume still published; a
 * Docker Mount under `tsvol-cli-…` was dropped at the next start while its container ran on.
 */
import path from 'node:path';
import test from 'ava';
import { csiClient, mountCap } from './helpers/csi.js';
import { requireTools } from './helpers/require.js';
import { cleanupDir, isMounted, startTestServer, withServer, requireRoot } from './helpers/server.js';

requireTools('mount', 'umount');

test('the Docker protocol cannot release a CSI publish hold, nor take a hold in tsvol\'s own namespaces', async (t) => {
  await withServer(t, { root: true, csi: true, env: { TSVOL_NODE_ID: 'node-a' } }, async (s) => {
    const csi = csiClient(s.csiSocket!);
    try {
      const cap = mountCap();
      await csi.controller('CreateVolume', { name: 'web', volume_capabilities: [cap] });
      const target = path.join(s.dir, 'pods', 'p1', 'mount');
      await csi.node('NodePublishVolume', { volume_id: 'web', target_path: target, volume_capability: cap });
      const holders = ((await s.ok('/VolumeDriver.Get', { Name: 'web' })).Volume as { Status: { holders: string[] } }).Status.holders;
      t.is(holders.length, 1);
      t.regex(holders[0]!, /^csi-/);
      const r = await s.call('/VolumeDriver.Unmount', { Name: 'web', ID: holders[0] });
      t.is(r.status, 400, 'a Docker Unmount naming the publish is refused');
      t.regex(String(r.json.Err), /tsvol's own holds/);
      const rm = await s.call('/VolumeDriver.Remove', { Name: 'web' });
      t.is(rm.status, 409, 'the publish still holds the volume');
      t.true(isMounted(target));
      for (const id of ['csi-0123', 'tsvol-cli-export-x', 'tsvol-cli-']) {
        const m = await s.call('/VolumeDriver.Mount', { Name: 'web', ID: id });
        t.is(m.status, 400, id);
      }
      const after = ((await s.ok('/VolumeDriver.Get', { Name: 'web' })).Volume as { Status: { holders: string[] } }).Status.holders;
      t.deepEqual(after, holders, 'no hold taken or dropped');
      await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: target });
    } finally {
      csi.close();
    }
  });
});

test('a Docker Mount survives a restart: its ID is never one start-up drops', async (t) => {
  if (!requireRoot(t)) return;
  let s = await startTestServer({});
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'db', Opts: null });
    const m = await s.call('/VolumeDriver.Mount', { Name: 'db', ID: 'tsvol-cli-hold-abc' });
    if (m.status === 200) {
      // Old code: accepted; after a restart the hold is gone and Remove deletes the volume in use.
      await s.stop();
      s = await startTestServer({ dir: s.dir });
      t.is((await s.call('/VolumeDriver.Remove', { Name: 'db' })).status, 409, 'a held volume must not be removable after a restart');
    } else {
      t.is(m.status, 400);
      t.regex(String(m.json.Err), /tsvol's own holds/);
    }
  } finally {
    await s.kill();
    cleanupDir(s.dir);
  }
});

test('Remove racing Mount: never both succeed, and a Mount that succeeded keeps its volume and files', async (t) => {
  await withServer(t, { root: true }, async (s) => {
    for (let i = 0; i < 15; i++) {
      const name = `race${i}`;
      await s.ok('/VolumeDriver.Create', { Name: name, Opts: null });
      const [m, r] = await Promise.all([
        s.call('/VolumeDriver.Mount', { Name: name, ID: 'c1' }),
        s.call('/VolumeDriver.Remove', { Name: name }),
      ]);
      t.false(m.status === 200 && r.status === 200, `${name}: Mount ${m.status}, Remove ${r.status}`);
      if (m.status === 200) {
        t.is(r.status, 409);
        t.true(isMounted(m.json.Mountpoint as string));
        t.is((await s.call('/VolumeDriver.Get', { Name: name })).status, 200);
        await s.ok('/VolumeDriver.Unmount', { Name: name, ID: 'c1' });
      } else {
        t.is(m.status, 404, `${name}: a Mount after the Remove finds no volume`);
        t.is(r.status, 200);
      }
    }
  });
});
