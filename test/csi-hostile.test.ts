/**
 * A hostile container orchestrator on the CSI socket: what NodePublishVolume/NodeUnpublishVolume may do to
 * the host's paths (the spec: mount at target_path, and on unpublish undo that and delete what the plugin
 * made, nothing else), and messages the decoder must survive. A real gRPC client, the real server, real
 * mounts.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import { fails, grpc, mountCap, withCsi } from './helpers/csi.js';
import { requireTools } from './helpers/require.js';
import { isMounted } from './helpers/server.js';

requireTools('mount', 'umount');

const { status } = grpc;
const cap = mountCap();


test('a host mount at the target is never unmounted: publish onto it and unpublish under it are FAILED_PRECONDITION', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'web', volume_capabilities: [cap] });
    /** A tmpfs with a file, mounted at `dir` (a host disk at /srv/x, say). */
    const hostMount = (dir: string): void => {
      fs.mkdirSync(dir, { recursive: true });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tsvol-test-host', dir]);
      t.teardown(() => {
        while (isMounted(dir)) execFileSync('umount', ['-l', dir]);
      });
      fs.writeFileSync(path.join(dir, 'precious'), 'host data');
    };
    // The CO points a publish at a host mount: refused, the mount and its files untouched.
    const host = path.join(s.dir, 'host-disk');
    hostMount(host);
    const onto = await fails(csi.node('NodePublishVolume', { volume_id: 'web', target_path: host, volume_capability: cap }));
    t.is(onto.code, status.FAILED_PRECONDITION, onto.details);
    t.regex(onto.details, /is a mount point already \(not of volume "web"\)/);
    await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: host });
    t.true(isMounted(host));
    t.is(fs.readFileSync(path.join(host, 'precious'), 'utf8'), 'host data');
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 0 } } });

    // Something mounted over a publish: unpublish refuses, unmounts nothing and keeps the hold (the volume
    // is still bound underneath); once it is gone, unpublish finishes.
    const target = path.join(s.dir, 'pods', 'p1', 'mount');
    await csi.node('NodePublishVolume', { volume_id: 'web', target_path: target, volume_capability: cap });
    hostMount(target);
    const under = await fails(csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: target }));
    t.is(under.code, status.FAILED_PRECONDITION, under.details);
    t.regex(under.details, /something else is mounted over its publish/);
    t.is(fs.readFileSync(path.join(target, 'precious'), 'utf8'), 'host data', 'the mount over it stays');
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 1 } } });
    execFileSync('umount', [target]);
    await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: target });
    t.false(fs.existsSync(target));
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 0 } } });
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'web' }), {});
  });
});

test('every kind of volume is found at its target by device and inode: publish, republish, unpublish, in both modes', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'base', volume_capabilities: [cap] });
    await csi.controller('CreateVolume', { name: 'sz', volume_capabilities: [cap], capacity_range: { required_bytes: String(32 << 20) } });
    await csi.controller('CreateSnapshot', { name: 'snap', source_volume_id: 'base' });
    await csi.controller('CreateVolume', { name: 'restored', volume_capabilities: [cap], volume_content_source: { snapshot: { snapshot_id: 'snap' } } });
    await csi.controller('CreateVolume', { name: 'cloned', volume_capabilities: [cap], volume_content_source: { volume: { volume_id: 'base' } } });
    for (const v of ['base', 'sz', 'restored', 'cloned']) {
      const target = path.join(s.dir, 'pods', v, 'mount');
      for (const ro of [false, true]) {
        await csi.node('NodePublishVolume', { volume_id: v, target_path: target, volume_capability: cap, readonly: ro });
        await csi.node('NodePublishVolume', { volume_id: v, target_path: target, volume_capability: cap, readonly: ro });
        t.true(isMounted(target), v);
        await csi.node('NodeUnpublishVolume', { volume_id: v, target_path: target });
        t.false(fs.existsSync(target), v);
      }
      t.like(await s.ok('/VolumeDriver.Get', { Name: v }), { Volume: { Status: { mounts: 0 } } });
      await csi.controller('DeleteVolume', { volume_id: v });
    }
  });
});

test('a publish below a symlinked directory (the kubelet root moved elsewhere) is idempotent in both modes', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'web', volume_capabilities: [cap] });
    const real = path.join(s.dir, 'real-kubelet');
    fs.mkdirSync(path.join(real, 'pods'), { recursive: true });
    const kubelet = path.join(s.dir, 'kubelet');
    fs.symlinkSync(real, kubelet);
    for (const readonly of [true, false]) {
      const target = path.join(kubelet, 'pods', `p-${readonly}`, 'mount');
      const req = { volume_id: 'web', target_path: target, volume_capability: cap, readonly };
      await csi.node('NodePublishVolume', req);
      t.deepEqual(await csi.node('NodePublishVolume', req), {}, `repeated, readonly=${readonly}`);
      const other = await fails(csi.node('NodePublishVolume', { ...req, readonly: !readonly }));
      t.is(other.code, status.ALREADY_EXISTS);
      await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: target });
      t.false(fs.existsSync(target));
    }
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 0 } } });
  });
});

test('NodeUnpublishVolume of a target the volume never published removes nothing there', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'web', volume_capabilities: [cap] });
    const dir = path.join(s.dir, 'not-ours');
    fs.mkdirSync(dir);
    t.deepEqual(await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: dir }), {});
    t.true(fs.existsSync(dir), 'a directory tsvol did not make is not deleted');
    // A publish that fails after making its target removes the directory it made, and only that.
    const file = path.join(s.dir, 'a-file');
    fs.writeFileSync(file, 'x');
    const bad = await fails(csi.node('NodePublishVolume', { volume_id: 'web', target_path: path.join(file, 'sub'), volume_capability: cap }));
    t.is(bad.code, status.INVALID_ARGUMENT, bad.details);
    t.regex(bad.details, /target path ".*a-file\/sub" cannot be a directory \(ENOTDIR\)/);
    const long = await fails(csi.node('NodePublishVolume', { volume_id: 'web', target_path: path.join(s.dir, 'x'.repeat(300)), volume_capability: cap }));
    t.is(long.code, status.INVALID_ARGUMENT, long.details);
    t.is(fs.readFileSync(file, 'utf8'), 'x');
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 0 } } }, 'a failed publish holds nothing');
    // A symlink at the target is not followed: its destination is neither mounted over nor removed.
    const elsewhere = path.join(s.dir, 'elsewhere');
    fs.mkdirSync(elsewhere);
    fs.writeFileSync(path.join(elsewhere, 'keep'), 'k');
    const link = path.join(s.dir, 'link');
    fs.symlinkSync(elsewhere, link);
    const viaLink = await fails(csi.node('NodePublishVolume', { volume_id: 'web', target_path: link, volume_capability: cap }));
    t.is(viaLink.code, status.INVALID_ARGUMENT, viaLink.details);
    t.false(isMounted(elsewhere));
    t.is(fs.readFileSync(path.join(elsewhere, 'keep'), 'utf8'), 'k');
    t.deepEqual(await csi.node('NodeUnpublishVolume', { volume_id: 'web', target_path: link }), {});
    t.true(fs.lstatSync(link).isSymbolicLink());
    t.like(await s.ok('/VolumeDriver.Get', { Name: 'web' }), { Volume: { Status: { mounts: 0 } } });
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'web' }), {}, 'nothing holds the volume');
  });
});

test('the decoder survives hostile messages: deep groups in unknown fields, prototype keys, huge numbers', async (t) => {
  await withCsi(t, async (csi, s) => {
    // Prototype names as parameter keys are options like any other: refused as unknown, nothing made.
    for (const key of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      const e = await fails(csi.controller('CreateVolume', { name: `p-${key.replace(/_/g, 'x')}`, volume_capabilities: [cap], parameters: { [key]: '1' } }));
      t.is(e.code, status.INVALID_ARGUMENT, key);
    }
    t.deepEqual((await csi.controller('ListVolumes', {})).entries, []);
    const huge = await fails(csi.controller('CreateVolume', { name: 'big', volume_capabilities: [cap], capacity_range: { required_bytes: '9223372036854775807' } }));
    t.true(huge.code === status.OUT_OF_RANGE || huge.code === status.INVALID_ARGUMENT, huge.details);
    // Over gRPC's 4 MiB message limit: refused before it is decoded.
    const over = await fails(csi.controller('CreateVolume', { name: 'over', volume_capabilities: [cap], parameters: { mode: 'x'.repeat(5 << 20) } }));
    t.is(over.code, status.RESOURCE_EXHAUSTED, over.details);
    // A raw gRPC frame whose body is 1 MiB of nested group starts (an unknown field): an error, and the
    // server still answers afterwards.
    const body = Buffer.alloc(1 << 20, 0x0b);
    await rawUnary(s.csiSocket!, '/csi.v1.Controller/ListVolumes', body).catch(() => undefined);
    t.truthy(await csi.identity('Probe', {}));
  });
});

test('a capacity the data root cannot hold is OUT_OF_RANGE, and makes or grows nothing', async (t) => {
  await withCsi(t, async (csi, s) => {
    // 1 PiB: above ext4's 16 TiB per file (the test machine's data root: a filesystem that holds such a
    // sparse file would make the volume, and this test says so).
    const pib = String(2 ** 50);
    const made = await fails(csi.controller('CreateVolume', { name: 'huge', volume_capabilities: [cap], capacity_range: { required_bytes: pib } }));
    t.is(made.code, status.OUT_OF_RANGE, made.details);
    t.regex(made.details, /more than a file on the data root's filesystem can hold/);
    t.deepEqual((await csi.controller('ListVolumes', {})).entries, []);
    t.deepEqual(fs.readdirSync(path.join(s.data, 'volumes')), []);
    await csi.controller('CreateVolume', { name: 'small', volume_capabilities: [cap], capacity_range: { required_bytes: String(16 << 20) } });
    const grown = await fails(csi.controller('ControllerExpandVolume', { volume_id: 'small', capacity_range: { required_bytes: pib } }));
    t.is(grown.code, status.OUT_OF_RANGE, grown.details);
    t.like(await csi.controller('ControllerGetVolume', { volume_id: 'small' }), { volume: { capacity_bytes: String(16 << 20) } });
    t.deepEqual(await csi.controller('DeleteVolume', { volume_id: 'small' }), {});
  });
});

/** Sends one unary gRPC call with `body` as the message bytes over h2 (the client's own encoder is bypassed). */
async function rawUnary(socket: string, method: string, body: Buffer): Promise<void> {
  const http2 = await import('node:http2');
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  try {
    await new Promise<void>((resolve, reject) => {
      const req = session.request({ ':method': 'POST', ':path': method, 'content-type': 'application/grpc', te: 'trailers' });
      const head = Buffer.alloc(5);
      head.writeUInt32BE(body.length, 1);
      req.on('response', () => undefined);
      req.on('data', () => undefined);
      req.on('end', resolve);
      req.on('error', reject);
      req.end(Buffer.concat([head, body]));
    });
  } finally {
    session.close();
  }
}
