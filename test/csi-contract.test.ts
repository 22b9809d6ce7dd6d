/**
 * CSI contract (#12): a real gRPC client (@grpc/grpc-js, the server's csi.proto) over the Unix socket of
 * the real server (`node dist/main.js` with TSVOL_CSI_SOCKET), real bind mounts. Every RPC, each
 * idempotent call repeated, the spec's error codes, pagination, snapshots restored, and Docker and CSI
 * consumers of one volume.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { csiClient, fails, grpc, mountCap, withCsi } from './helpers/csi.js';
import { requireTools } from './helpers/require.js';
import { isMounted, withServer } from './helpers/server.js';
import { mayResizeOnline } from '../src/sys/ext4.js';

requireTools('mount', 'umount');

const { status } = grpc;
const cap = mountCap();

/** A root server with CSI, and a client to it, both closed afterwards. */

const topology = [{ segments: { 'topology.csi.tsvol.local/node': 'node-a' } }];

test('Identity and node info: name, version, capabilities, probe, topology', async (t) => {
  await withCsi(t, async (csi) => {
    const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    for (let i = 0; i < 2; i++) {
      t.deepEqual(await csi.identity('GetPluginInfo'), { name: 'csi.tsvol.local', vendor_version: pkg.version, manifest: {} });
      const caps = await csi.identity('GetPluginCapabilities');
      t.deepEqual(
        (caps.capabilities as { service?: { type: string }; volume_expansion?: { type: string } }[]).map((c) => c.service?.type ?? `VolumeExpansion ${c.volume_expansion?.type}`),
        // ONLINE where the server may resize a mounted filesystem (CAP_SYS_RESOURCE; csi-expand.test.ts).
        ['CONTROLLER_SERVICE', 'VOLUME_ACCESSIBILITY_CONSTRAINTS', `VolumeExpansion ${mayResizeOnline() ? 'ONLINE' : 'OFFLINE'}`],
      );
      t.deepEqual(await csi.identity('Probe'), { ready: { value: true } });
      t.deepEqual(await csi.node('NodeGetInfo'), { node_id: 'node-a', max_volumes_per_node: '0', accessible_topology: topology[0] });
      const nodeCaps = await csi.node('NodeGetCapabilities');
      t.deepEqual((nodeCaps.capabilities as { rpc: { type: string } }[]).map((c) => c.rpc.type), ['GET_VOLUME_STATS']);
      const ctl = await csi.controller('ControllerGetCapabilities');
      t.deepEqual(
        (ctl.capabilities as { rpc: { type: string } }[]).map((c) => c.rpc.type).sort(),
        ['CLONE_VOLUME', 'CREATE_DELETE_SNAPSHOT', 'CREATE_DELETE_VOLUME', 'EXPAND_VOLUME', 'GET_CAPACITY', 'GET_VOLUME', 'LIST_SNAPSHOTS', 'LIST_VOLUMES', 'LIST_VOLUMES_PUBLISHED_NODES'],
      );
    }
    // Not advertised, so not served: the spec's UNIMPLEMENTED.
    t.is((await fails(csi.node('NodeStageVolume', { volume_id: 'x' }))).code, status.UNIMPLEMENTED);
    t.is((await fails(csi.controller('ControllerPublishVolume', { volume_id: 'x' }))).code, status.UNIMPLEMENTED);
    t.is((await fails(csi.node('NodeExpandVolume', { volume_id: 'x' }))).code, status.UNIMPLEMENTED);
  });
});

test('CSI_ENDPOINT=unix:///path is accepted as the socket', async (t) => {
  await withServer(t, { root: true }, async (s0) => {
    // The helper's server is only a place to stop; this one gets CSI_ENDPOINT instead of TSVOL_CSI_SOCKET.
    await s0.kill();
    const sock = path.join(s0.dir, 'endpoint', 'csi.sock');
    await withServer(t, { root: true, dir: path.join(s0.dir, 'second'), env: { CSI_ENDPOINT: `unix://${sock}`, TSVOL_NODE_ID: 'n2' } }, async () => {
      const csi = csiClient(sock);
      try {
        t.is((await csi.node('NodeGetInfo')).node_id, 'n2');
        t.is(fs.statSync(sock).mode & 0o777, 0o600);
      } finally {
        csi.close();
      }
    });
  });
});

test('CreateVolume: idempotent by name, capacity makes a sized volume, parameters are tsvol options', async (t) => {
  await withCsi(t, async (csi, s) => {
    const plain = { name: 'pvc-plain', volume_capabilities: [cap], parameters: { uid: '1000', mode: '0750' } };
    const first = await csi.controller('CreateVolume', plain);
    t.deepEqual(first, {
      volume: { volume_id: 'pvc-plain', capacity_bytes: '0', volume_context: {}, content_source: null, accessible_topology: topology },
    });
    t.deepEqual(await csi.controller('CreateVolume', plain), first, 'the same name and parameters: the same volume');
    const st = fs.statSync(path.join(s.data, 'volumes', 'pvc-plain', '_data'));
    t.is(st.uid, 1000);
    t.is(st.mode & 0o7777, 0o750);

    const sized = { name: 'pvc-sized', volume_capabilities: [cap], capacity_range: { required_bytes: String(32 << 20), limit_bytes: '0' } };
    const made = await csi.controller('CreateVolume', sized);
    t.like(made, { volume: { volume_id: 'pvc-sized', capacity_bytes: String(32 << 20) } });
    t.deepEqual(await csi.controller('CreateVolume', sized), made);
    const other = await fails(csi.controller('CreateVolume', { ...sized, capacity_range: { required_bytes: String(64 << 20), limit_bytes: '0' } }));
    t.is(other.code, status.ALREADY_EXISTS);
    t.regex(other.details, /volume "pvc-sized" already exists with other capacity \(33554432 bytes\)/);
    t.is((await fails(csi.controller('CreateVolume', { ...plain, parameters: { uid: '1001' } }))).code, status.ALREADY_EXISTS);

    // Docker sees the same volume, sized.
    const get = await s.ok('/VolumeDriver.Get', { Name: 'pvc-sized' });
    t.like(get, { Volume: { Name: 'pvc-sized', Status: { kind: 'sized', limit: 32 << 20 } } });
    // A tiny request is rounded up to the smallest sized volume, unless the limit forbids it.
    t.like(await csi.controller('CreateVolume', { name: 'pvc-tiny', volume_capabilities: [cap], capacity_range: { required_bytes: '1024', limit_bytes: '0' } }), {
      volume: { capacity_bytes: String(16 << 20) },
    });
    const out = await fails(csi.controller('CreateVolume', { name: 'pvc-x', volume_capabilities: [cap], capacity_range: { required_bytes: '1024', limit_bytes: '4096' } }));
    t.is(out.code, status.OUT_OF_RANGE);
    t.regex(out.details, /pvc-x.*smallest sized volume is 16777216 bytes/);
  });
});

test('CreateVolume, DeleteVolume, ValidateVolumeCapabilities: the spec error codes', async (t) => {
  await withCsi(t, async (csi) => {
    const cases: [string, object, number, RegExp][] = [
      ['no name', { volume_capabilities: [cap] }, status.INVALID_ARGUMENT, /name is required/],
      ['no capability', { name: 'v1' }, status.INVALID_ARGUMENT, /"v1": volume_capabilities is required/],
      ['block access', { name: 'v1', volume_capabilities: [{ block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } }] }, status.INVALID_ARGUMENT, /block access is not supported/],
      ['multi-node', { name: 'v1', volume_capabilities: [mountCap('MULTI_NODE_MULTI_WRITER')] }, status.INVALID_ARGUMENT, /MULTI_NODE_MULTI_WRITER is not supported: tsvol volumes are node-local/],
      ['unknown parameter', { name: 'v1', volume_capabilities: [cap], parameters: { color: 'red' } }, status.INVALID_ARGUMENT, /invalid option: "color"/],
      ['bad name', { name: 'no/slash', volume_capabilities: [cap] }, status.INVALID_ARGUMENT, /invalid volume name/],
      ['other node', { name: 'v1', volume_capabilities: [cap], accessibility_requirements: { requisite: [{ segments: { 'topology.csi.tsvol.local/node': 'node-b' } }], preferred: [] } }, status.RESOURCE_EXHAUSTED, /node "node-a" only/],
      ['unknown snapshot', { name: 'v1', volume_capabilities: [cap], volume_content_source: { snapshot: { snapshot_id: 'nope' } } }, status.NOT_FOUND, /snapshot "nope" not found/],
      ['unknown source volume', { name: 'v1', volume_capabilities: [cap], volume_content_source: { volume: { volume_id: 'nope' } } }, status.NOT_FOUND, /source volume "nope" not found/],
    ];
    for (const [what, req, code, message] of cases) {
      const err = await fails(csi.controller('CreateVolume', req));
      t.is(err.code, code, what);
      t.regex(err.details, message, what);
    }
    t.deepEqual((await csi.controller('ListVolumes', {})).entries, [], 'nothing was created by a refused call');

    await csi.controller('CreateVolume', { name: 'v1', volume_capabilities: [cap] });
    const ok = await csi.controller('ValidateVolumeCapabilities', { volume_id: 'v1', volume_capabilities: [cap, mountCap('SINGLE_NODE_READER_ONLY')] });
    t.like(ok, { message: '', confirmed: { volume_capabilities: [{ access_mode: { mode: 'SINGLE_NODE_WRITER' } }, { access_mode: { mode: 'SINGLE_NODE_READER_ONLY' } }] } });
    const no = await csi.controller('ValidateVolumeCapabilities', { volume_id: 'v1', volume_capabilities: [mountCap('MULTI_NODE_READER_ONLY')] });
    t.is(no.confirmed, null);
    t.regex(no.message as string, /volume "v1": access mode MULTI_NODE_READER_ONLY is not supported/);
    t.is((await fails(csi.controller('ValidateVolumeCapabilities', { volume_id: 'ghost', volume_capabilities: [cap] }))).code, status.NOT_FOUND);
    t.is((await fails(csi.controller('ValidateVolumeCapabilities', { volume_id: 'v1' }))).code, status.INVALID_ARGUMENT);
    t.is((await fails(csi.controller('ValidateVolumeCapabilities', { volume_capabilities: [cap] }))).code, status.INVALID_ARGUMENT);

    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'v1' }), {});
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'v1' }), {}, 'again: success');
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'never-was' }), {}, 'an unknown ID: success');
    t.is((await fails(csi.controller('DeleteVolume', {}))).code, status.INVALID_ARGUMENT);

    const capacity = await csi.controller('GetCapacity', { volume_capabilities: [cap] });
    t.true(Number(capacity.available_capacity) > 0);
    t.deepEqual(await csi.controller('GetCapacity', { accessible_topology: { segments: { 'topology.csi.tsvol.local/node': 'node-b' } } }), {
      available_capacity: '0',
      maximum_volume_size: null,
      minimum_volume_size: null,
    });
  });
});

test('ListVolumes pages through the volumes Docker lists too; a foreign token is ABORTED', async (t) => {
  await withCsi(t, async (csi, s) => {
    for (const n of ['d1', 'd2']) await s.ok('/VolumeDriver.Create', { Name: n, Opts: null });
    for (const n of ['c1', 'c2', 'c3']) await csi.controller('CreateVolume', { name: n, volume_capabilities: [cap] });
    const docker = ((await s.ok('/VolumeDriver.List', null)).Volumes as { Name: string }[]).map((v) => v.Name).sort();
    const all = await csi.controller('ListVolumes', {});
    const ids = (r: Record<string, unknown>): string[] => (r.entries as { volume: { volume_id: string } }[]).map((e) => e.volume.volume_id);
    t.deepEqual(ids(all), ['c1', 'c2', 'c3', 'd1', 'd2']);
    t.deepEqual(ids(all), docker, 'both sides list the same volumes');
    t.is(all.next_token, '');

    const p1 = await csi.controller('ListVolumes', { max_entries: 2 });
    t.deepEqual(ids(p1), ['c1', 'c2']);
    t.not(p1.next_token, '');
    t.deepEqual(ids(await csi.controller('ListVolumes', { max_entries: 2, starting_token: p1.next_token })), ['c3', 'd1'], 'the same token twice: the same page');
    // The next page's first volume is deleted between pages: the listing goes on without skipping.
    await csi.controller('DeleteVolume', { volume_id: 'c3' });
    const p2 = await csi.controller('ListVolumes', { max_entries: 2, starting_token: p1.next_token });
    t.deepEqual(ids(p2), ['d1', 'd2']);
    t.is(p2.next_token, '');

    const bad = await fails(csi.controller('ListVolumes', { starting_token: 'invalid-token' }));
    t.is(bad.code, status.ABORTED);
    t.regex(bad.details, /starting_token "invalid-token" was not issued by this plugin/);
    t.is((await fails(csi.controller('ListVolumes', { max_entries: -1 }))).code, status.INVALID_ARGUMENT);
  });
});

test('NodePublishVolume bind-mounts at the target (read-only when asked), holds the volume; NodeUnpublishVolume undoes it', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'web', volume_capabilities: [cap] });
    const target = path.join(s.dir, 'pods', 'p1', 'volumes', 'web', 'mount');
    const req = { volume_id: 'web', target_path: target, volume_capability: cap, readonly: false };
    t.deepEqual(await csi.node('NodePublishVolume', req), {});
    t.deepEqual(await csi.node('NodePublishVolume', req), {}, 'again: success, still one hold');
    t.true(isMounted(target), 'the target was created and mounted');
    fs.writeFileSync(path.join(target, 'index.html'), 'hello from the pod');
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'web', '_data', 'index.html'), 'utf8'), 'hello from the pod');
    const get = await s.ok('/VolumeDriver.Get', { Name: 'web' });
    const holders = (get.Volume as { Status: { holders: string[]; mounts: number } }).Status;
    t.is(holders.mounts, 1);
    t.regex(holders.holders[0]!, /^csi-[0-9a-f]{32}$/);

    t.deepEqual(await csi.controller('ControllerGetVolume', { volume_id: 'web' }), {
      volume: { volume_id: 'web', capacity_bytes: '0', volume_context: {}, content_source: null, accessible_topology: topology },
      status: { published_node_ids: ['node-a'], volume_condition: null },
    });
    t.like(await csi.controller('ListVolumes', {}), { entries: [{ volume: { volume_id: 'web' }, status: { published_node_ids: ['node-a'] } }] });
    t.is((await fails(csi.controller('ControllerGetVolume', { volume_id: 'ghost' }))).code, status.NOT_FOUND);

    const conflict = await fails(csi.node('NodePublishVolume', { ...req, readonly: true }));
    t.is(conflict.code, status.ALREADY_EXISTS);
    t.regex(conflict.details, /volume "web" is already published at ".*" read-write; unpublish it first/);

    // A second, read-only publish of the same volume.
    const roTarget = path.join(s.dir, 'pods', 'p2', 'mount');
    await csi.node('NodePublishVolume', { ...req, target_path: roTarget, readonly: true });
    await csi.node('NodePublishVolume', { ...req, target_path: roTarget, readonly: true });
    t.is(fs.readFileSync(path.join(roTarget, 'index.html'), 'utf8'), 'hello from the pod');
    t.throws(() => fs.writeFileSync(path.join(roTarget, 'x'), 'no'), { code: 'EROFS' });
    const roMode = path.join(s.dir, 'pods', 'p3', 'mount');
    await csi.node('NodePublishVolume', { volume_id: 'web', target_path: roMode, volume_capability: mountCap('SINGLE_NODE_READER_ONLY') });
    t.throws(() => fs.writeFileSync(path.join(roMode, 'x'), 'no'), { code: 'EROFS' }, 'a read-only access mode publishes read-only');

    const stats = await csi.node('NodeGetVolumeStats', { volume_id: 'web', volume_path: target });
    const usage = stats.usage as { unit: string; used: string; total: string; available: string }[];
    t.deepEqual(usage.map((u) => u.unit), ['BYTES', 'INODES']);
    t.true(Number(usage[0]!.total) > 0 && Number(usage[0]!.available) > 0);
    t.is((await fails(csi.node('NodeGetVolumeStats', { volume_id: 'web', volume_path: path.join(s.dir, 'nowhere') }))).code, status.NOT_FOUND);
    t.is((await fails(csi.node('NodeGetVolumeStats', { volume_id: 'ghost', volume_path: target }))).code, status.NOT_FOUND);

    // Held: neither side may delete it.
    const del = await fails(csi.controller('DeleteVolume', { volume_id: 'web' }));
    t.is(del.code, status.FAILED_PRECONDITION);
    t.regex(del.details, /volume "web" is in use: 3 active mount\(s\).*NodeUnpublishVolume/);
    const rm = await s.call('/VolumeDriver.Remove', { Name: 'web' });
    t.regex(rm.json.Err as string, /volume "web" is in use: 3 active mount\(s\)/);

    for (const p of [target, roTarget, roMode]) {
      t.deepEqual(await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: p }), {});
      t.false(fs.existsSync(p), 'the target is removed');
      t.deepEqual(await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: p }), {}, 'again: success');
    }
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'web', '_data', 'index.html'), 'utf8'), 'hello from the pod', 'data stays');
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 0, holders: [] } } });
    t.like(await csi.controller('ControllerGetVolume', { volume_id: 'web' }), { status: { published_node_ids: [] } });

    const errs: [object, number][] = [
      [{ ...req, volume_id: 'ghost' }, status.NOT_FOUND],
      [{ ...req, volume_id: '' }, status.INVALID_ARGUMENT],
      [{ ...req, target_path: '' }, status.INVALID_ARGUMENT],
      [{ volume_id: 'web', target_path: target }, status.INVALID_ARGUMENT],
      [{ ...req, volume_capability: { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } } }, status.INVALID_ARGUMENT],
    ];
    for (const [r, code] of errs) t.is((await fails(csi.node('NodePublishVolume', r))).code, code, JSON.stringify(r));
    t.false(fs.existsSync(target), 'a refused publish makes no target');
    t.is((await fails(csi.node('NodeUnpublishVolume', { volume_id: 'web' }))).code, status.INVALID_ARGUMENT);
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'web' }), {});
  });
});

test('a volume Docker mounts is refused by DeleteVolume, and one CSI publishes by Docker Remove', async (t) => {
  await withCsi(t, async (csi, s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'shared', Opts: null });
    await s.ok('/VolumeDriver.Mount', { Name: 'shared', ID: 'c0ffee' });
    const del = await fails(csi.controller('DeleteVolume', { volume_id: 'shared' }));
    t.is(del.code, status.FAILED_PRECONDITION);
    t.is(del.details, 'volume "shared" is in use: 1 active mount(s) (IDs c0ffee); stop the containers using it first');
    // Both consumers at once: a container and a pod.
    const target = path.join(s.dir, 'pod', 'mount');
    await csi.node('NodePublishVolume', { volume_id: 'shared', target_path: target, volume_capability: cap });
    fs.writeFileSync(path.join(target, 'from-pod'), 'x');
    t.true(fs.existsSync(path.join(s.mounts!, 'shared', 'from-pod')), 'the container sees what the pod wrote');
    await s.ok('/VolumeDriver.Unmount', { Name: 'shared', ID: 'c0ffee' });
    const rm = await s.call('/VolumeDriver.Remove', { Name: 'shared' });
    t.is(rm.status, 409);
    t.regex(rm.json.Err as string, /^volume "shared" is in use: 1 active mount\(s\) \(IDs csi-[0-9a-f]{32}\); stop the containers and pods using it first/);
    await csi.node('NodeUnpublishVolume', { volume_id: 'shared', target_path: target });
    await s.ok('/VolumeDriver.Remove', { Name: 'shared' });
    t.deepEqual((await csi.controller('ListVolumes', {})).entries, []);
    // One JSON log line per CSI call: op, volume, target, ms, code (reads only at debug).
    const lines = s.output().split('\n').filter((l) => l.includes('"csi request"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    t.like(lines.find((l) => l.op === 'DeleteVolume'), { volume: 'shared', code: 'FAILED_PRECONDITION', level: 30 });
    t.like(lines.find((l) => l.op === 'NodePublishVolume'), { volume: 'shared', target, code: 'OK' });
    t.false(lines.some((l) => l.op === 'ListVolumes'), 'reads are logged at debug only');
  });
});

test('a publish and a snapshot survive a server restart; unpublish and restore after it still work', async (t) => {
  await withServer(t, { root: true, csi: true }, async (s) => {
    let csi = csiClient(s.csiSocket!);
    const target = path.join(s.dir, 'pod', 'mount');
    try {
      await csi.controller('CreateVolume', { name: 'keep', volume_capabilities: [cap] });
      await csi.node('NodePublishVolume', { volume_id: 'keep', target_path: target, volume_capability: cap });
      fs.writeFileSync(path.join(target, 'f'), 'kept');
      await csi.controller('CreateSnapshot', { name: 'keep-snap', source_volume_id: 'keep' });
    } finally {
      csi.close();
    }
    await s.kill();
    const { startTestServer } = await import('./helpers/server.js');
    const s2 = await startTestServer({ dir: s.dir, csi: true });
    csi = csiClient(s2.csiSocket!);
    try {
      t.is((await fails(csi.controller('DeleteVolume', { volume_id: 'keep' }))).code, status.FAILED_PRECONDITION, 'the hold was persisted');
      await csi.node('NodePublishVolume', { volume_id: 'keep', target_path: target, volume_capability: cap });
      t.like(await s2.ok('/VolumeDriver.Get', { Name: 'keep' }), { Volume: { Status: { mounts: 1 } } }, 'a publish again is the same hold');
      t.like(await csi.controller('ListSnapshots', {}), { entries: [{ snapshot: { snapshot_id: 'keep-snap', source_volume_id: 'keep', size_bytes: '4' } }] }, 'snapshots are kept');
      await csi.controller('CreateVolume', { name: 'keep-2', volume_capabilities: [cap], volume_content_source: { snapshot: { snapshot_id: 'keep-snap' } } });
      const t2 = path.join(s.dir, 'pod2', 'mount');
      await csi.node('NodePublishVolume', { volume_id: 'keep-2', target_path: t2, volume_capability: cap });
      t.is(fs.readFileSync(path.join(t2, 'f'), 'utf8'), 'kept');
      await csi.node('NodeUnpublishVolume', { volume_id: 'keep-2', target_path: t2 });
      await csi.node('NodeUnpublishVolume', { volume_id: 'keep', target_path: target });
      t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'keep' }), {});
    } finally {
      csi.close();
      await s2.kill();
    }
  });
});

test('snapshots: a committed layer, idempotent by name; restore and clone hold the files, later writes stay apart', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'db', volume_capabilities: [cap] });
    const dbTarget = path.join(s.dir, 'pods', 'db', 'mount');
    await csi.node('NodePublishVolume', { volume_id: 'db', target_path: dbTarget, volume_capability: cap });
    fs.writeFileSync(path.join(dbTarget, 'state'), 'v1');

    const snap = await csi.controller('CreateSnapshot', { name: 'snap-1', source_volume_id: 'db' });
    t.like(snap, { snapshot: { snapshot_id: 'snap-1', source_volume_id: 'db', ready_to_use: true, size_bytes: '2' } });
    t.deepEqual(await csi.controller('CreateSnapshot', { name: 'snap-1', source_volume_id: 'db' }), snap, 'again: the same snapshot');
    await csi.controller('CreateVolume', { name: 'other', volume_capabilities: [cap] });
    const clash = await fails(csi.controller('CreateSnapshot', { name: 'snap-1', source_volume_id: 'other' }));
    t.is(clash.code, status.ALREADY_EXISTS);
    t.regex(clash.details, /snapshot "snap-1" already exists, of volume "db"/);
    t.is((await fails(csi.controller('CreateSnapshot', { name: 'snap-x', source_volume_id: 'ghost' }))).code, status.NOT_FOUND);
    t.is((await fails(csi.controller('CreateSnapshot', { source_volume_id: 'db' }))).code, status.INVALID_ARGUMENT);
    t.is((await fails(csi.controller('CreateSnapshot', { name: 'snap-x' }))).code, status.INVALID_ARGUMENT);

    // The source changes after the snapshot.
    fs.writeFileSync(path.join(dbTarget, 'state'), 'v2');
    await csi.controller('CreateSnapshot', { name: 'snap-2', source_volume_id: 'db' });
    await csi.controller('CreateSnapshot', { name: 'snap-o', source_volume_id: 'other' });

    const list = await csi.controller('ListSnapshots', {});
    const names = (r: Record<string, unknown>): string[] => (r.entries as { snapshot: { snapshot_id: string } }[]).map((e) => e.snapshot.snapshot_id);
    t.deepEqual(names(list), ['snap-1', 'snap-2', 'snap-o']);
    t.deepEqual(names(await csi.controller('ListSnapshots', { source_volume_id: 'db' })), ['snap-1', 'snap-2']);
    t.deepEqual(names(await csi.controller('ListSnapshots', { snapshot_id: 'snap-2' })), ['snap-2']);
    t.deepEqual(names(await csi.controller('ListSnapshots', { snapshot_id: 'nope' })), []);
    const p1 = await csi.controller('ListSnapshots', { max_entries: 2 });
    t.deepEqual(names(p1), ['snap-1', 'snap-2']);
    t.deepEqual(names(await csi.controller('ListSnapshots', { max_entries: 2, starting_token: p1.next_token })), ['snap-o']);
    t.is((await fails(csi.controller('ListSnapshots', { starting_token: 'bogus' }))).code, status.ABORTED);

    // Restore: a copy-on-write volume on the snapshot's layer.
    // As Kubernetes asks: the claim's size and the StorageClass's parameters come along, and do not apply.
    const restoreReq = {
      name: 'db-restored',
      volume_capabilities: [cap],
      capacity_range: { required_bytes: String(1 << 30), limit_bytes: '0' },
      parameters: { mode: '0775' },
      volume_content_source: { snapshot: { snapshot_id: 'snap-1' } },
    };
    const restored = await csi.controller('CreateVolume', restoreReq);
    t.like(restored, { volume: { volume_id: 'db-restored', content_source: { snapshot: { snapshot_id: 'snap-1' } }, accessible_topology: topology } });
    t.deepEqual(await csi.controller('CreateVolume', restoreReq), restored, 'again: the same volume');
    const rTarget = path.join(s.dir, 'pods', 'restored', 'mount');
    await csi.node('NodePublishVolume', { volume_id: 'db-restored', target_path: rTarget, volume_capability: cap });
    t.is(fs.readFileSync(path.join(rTarget, 'state'), 'utf8'), 'v1', 'the snapshot\'s files, not the later write');
    fs.writeFileSync(path.join(dbTarget, 'state'), 'v3');
    t.is(fs.readFileSync(path.join(rTarget, 'state'), 'utf8'), 'v1', 'later writes to the source do not reach it');
    fs.writeFileSync(path.join(rTarget, 'state'), 'restored-write');
    t.is(fs.readFileSync(path.join(dbTarget, 'state'), 'utf8'), 'v3', 'and its writes do not reach the source');

    // Clone: a full copy of the volume as it is now.
    const clone = await csi.controller('CreateVolume', { name: 'db-clone', volume_capabilities: [cap], volume_content_source: { volume: { volume_id: 'db' } } });
    t.like(clone, { volume: { volume_id: 'db-clone', content_source: { volume: { volume_id: 'db' } } } });
    t.is(fs.readFileSync(path.join(s.data, 'volumes', 'db-clone', '_data', 'state'), 'utf8'), 'v3');

    // Deleting a snapshot a restored volume still uses: the snapshot goes, the layer stays for the volume.
    t.deepEqual(await csi.controller('DeleteSnapshot', { snapshot_id: 'snap-1' }), {});
    t.deepEqual(await csi.controller('DeleteSnapshot', { snapshot_id: 'snap-1' }), {}, 'again: success');
    t.deepEqual(await csi.controller('DeleteSnapshot', { snapshot_id: 'never-was' }), {});
    t.is((await fails(csi.controller('DeleteSnapshot', {}))).code, status.INVALID_ARGUMENT);
    t.deepEqual(names(await csi.controller('ListSnapshots', {})), ['snap-2', 'snap-o']);
    t.is(fs.readFileSync(path.join(rTarget, 'state'), 'utf8'), 'restored-write');
    await csi.node('NodeUnpublishVolume', { volume_id: 'db-restored', target_path: rTarget });
    await csi.node('NodeUnpublishVolume', { volume_id: 'db', target_path: dbTarget });
    for (const v of ['db-restored', 'db-clone', 'db', 'other']) t.deepEqual(await csi.controller('DeleteVolume', { volume_id: v }), {});
    // Snapshots outlive their source volume: they are layers of their own.
    const restored2 = await csi.controller('CreateVolume', { name: 'from-2', volume_capabilities: [cap], volume_content_source: { snapshot: { snapshot_id: 'snap-2' } } });
    t.like(restored2, { volume: { volume_id: 'from-2' } });
    for (const n of ['snap-2', 'snap-o']) await csi.controller('DeleteSnapshot', { snapshot_id: n });
    t.deepEqual(names(await csi.controller('ListSnapshots', {})), []);
  });
});

test('racing publishes of one target make one hold and one mount; a sized volume reports its limit', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'quota', volume_capabilities: [cap], capacity_range: { required_bytes: String(64 << 20), limit_bytes: String(64 << 20) } });
    const target = path.join(s.dir, 'pod', 'mount');
    const req = { volume_id: 'quota', target_path: target, volume_capability: cap };
    await Promise.all([1, 2, 3, 4].map(() => csi.node('NodePublishVolume', req)));
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'quota' }), { Volume: { Status: { mounts: 1, kind: 'sized' } } });
    const stacked = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === target);
    t.is(stacked.length, 1, 'one mount at the target');
    fs.writeFileSync(path.join(target, 'blob'), Buffer.alloc(1 << 20, 1));
    const stats = await csi.node('NodeGetVolumeStats', { volume_id: 'quota', volume_path: target });
    const bytes = (stats.usage as { unit: string; total: string; available: string }[])[0]!;
    t.is(bytes.unit, 'BYTES');
    t.is(bytes.total, String(64 << 20));
    t.true(Number(bytes.available) < 64 << 20);
    await Promise.all([1, 2].map(() => csi.node('NodeUnpublishVolume', { volume_id: 'quota', target_path: target })));
    t.false(fs.existsSync(target));
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'quota' }), {});
  });
});
