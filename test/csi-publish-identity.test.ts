/**
 * A publish target is known by where the kernel puts it (the trust review, session 7): two spellings of one
 * directory (a symlinked parent) are one target and one hold; two real directories are two. And
 * volume_capability.mount: the per-mount flags a bind can take are set on the publish; anything else
 * (filesystem options, another fs_type, volume_mount_group) is INVALID_ARGUMENT, never ignored.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { csiClient, fails, grpc, mountCap, withCsi } from './helpers/csi.js';
import { requireTools } from './helpers/require.js';
import { cleanupDir, tempDir, withServer, type TestServer, sharedWithPeer } from './helpers/server.js';
import { mountAt } from '../src/sys/mountinfo.js';

requireTools('mount', 'umount');

const { status } = grpc;
const cap = mountCap();


async function mounts(s: TestServer, name: string): Promise<unknown> {
  const get = await s.ok('/VolumeDriver.Get', { Name: name });
  return (get.Volume as { Status: { mounts: unknown } }).Status.mounts;
}

test('one target through a symlinked parent is one hold; a retry by either spelling is the same publish; another real target is another', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'vv', volume_capabilities: [cap] });
    const real = path.join(s.dir, 'kubelet-real');
    fs.mkdirSync(path.join(real, 'pods'), { recursive: true });
    fs.symlinkSync(real, path.join(s.dir, 'kubelet'));
    const direct = path.join(real, 'pods', 'p1');
    const viaLink = path.join(s.dir, 'kubelet', 'pods', 'p1');
    await csi.node('NodePublishVolume', { volume_id: 'vv', target_path: viaLink, volume_capability: cap });
    await csi.node('NodePublishVolume', { volume_id: 'vv', target_path: direct, volume_capability: cap });
    await csi.node('NodePublishVolume', { volume_id: 'vv', target_path: `${s.dir}//kubelet/pods/p1/`, volume_capability: cap });
    t.is(await mounts(s, 'vv'), 1, 'one real target, one hold');
    t.is(mountAt(direct)?.mountPoint, direct);
    // Another real directory is another target.
    const other = path.join(real, 'pods', 'p2');
    await csi.node('NodePublishVolume', { volume_id: 'vv', target_path: other, volume_capability: cap });
    t.is(await mounts(s, 'vv'), 2);
    // Stats and unpublish find it by either spelling; unpublish by one undoes the publish made by the other.
    await csi.node('NodeGetVolumeStats', { volume_id: 'vv', volume_path: direct });
    await csi.node('NodeUnpublishVolume', { volume_id: 'vv', target_path: direct });
    t.false(fs.existsSync(direct));
    t.is(await mounts(s, 'vv'), 1);
    await csi.node('NodeUnpublishVolume', { volume_id: 'vv', target_path: viaLink });
    t.is(await mounts(s, 'vv'), 1, 'a repeated unpublish changes nothing');
    await csi.node('NodeUnpublishVolume', { volume_id: 'vv', target_path: other });
    t.is(await mounts(s, 'vv'), 0);
    // `..` components are refused, not resolved lexically.
    const dots = await fails(csi.node('NodePublishVolume', { volume_id: 'vv', target_path: `${s.dir}/kubelet/../x`, volume_capability: cap }));
    t.is(dots.code, status.INVALID_ARGUMENT, dots.details);
  });
});

test('mount_flags a bind takes are set on the publish (kept on a retry); others, a foreign fs_type and volume_mount_group are INVALID_ARGUMENT', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'ff', volume_capabilities: [cap] });
    const target = path.join(s.dir, 'pods', 'flags');
    const flagged = { ...cap, mount: { fs_type: '', mount_flags: ['nosuid', 'nodev,noexec'], volume_mount_group: '' } };
    await csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, volume_capability: flagged });
    const opts = mountAt(target)?.options ?? [];
    for (const f of ['rw', 'nosuid', 'nodev', 'noexec']) t.true(opts.includes(f), `${f} in ${opts.join(',')}`);
    await csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, volume_capability: flagged });
    t.is(await mounts(s, 'ff'), 1);
    // The same target asked for with a flag it does not have: a conflict, not a silent success.
    const more = { ...cap, mount: { fs_type: '', mount_flags: ['noatime'], volume_mount_group: '' } };
    const conflict = await fails(csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, volume_capability: more }));
    t.is(conflict.code, status.ALREADY_EXISTS, conflict.details);
    await csi.node('NodeUnpublishVolume', { volume_id: 'ff', target_path: target });

    // `ro` in mount_flags is a read-only publish.
    const ro = { ...cap, mount: { fs_type: '', mount_flags: ['ro'], volume_mount_group: '' } };
    await csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, volume_capability: ro });
    t.true(mountAt(target)?.options.includes('ro'));
    t.throws(() => fs.writeFileSync(path.join(target, 'x'), 'x'), { code: 'EROFS' });
    await csi.node('NodeUnpublishVolume', { volume_id: 'ff', target_path: target });

    // The filesystem the volume is on is accepted as fs_type; another one is refused and leaves nothing.
    const fsName = path.join(s.dir, 'pods', 'probe');
    await csi.node('NodePublishVolume', { volume_id: 'ff', target_path: fsName, volume_capability: cap });
    const shown = mountAt(fsName)!.fsType;
    await csi.node('NodeUnpublishVolume', { volume_id: 'ff', target_path: fsName });
    await csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, volume_capability: { ...cap, mount: { fs_type: shown, mount_flags: [], volume_mount_group: '' } } });
    await csi.node('NodeUnpublishVolume', { volume_id: 'ff', target_path: target });

    const refused: [object, RegExp][] = [
      [{ fs_type: shown === 'btrfs' ? 'xfs' : 'btrfs', mount_flags: [], volume_mount_group: '' }, /fs_type "(btrfs|xfs)" cannot be honoured/],
      [{ fs_type: '', mount_flags: ['uid=1000'], volume_mount_group: '' }, /mount_flags "uid=1000" cannot be honoured/],
      [{ fs_type: '', mount_flags: ['discard'], volume_mount_group: '' }, /mount_flags "discard" cannot be honoured/],
      [{ fs_type: '', mount_flags: ['ro', 'rw'], volume_mount_group: '' }, /both "ro" and "rw"/],
      [{ fs_type: '', mount_flags: ['noatime', 'strictatime'], volume_mount_group: '' }, /more than one of/],
      [{ fs_type: '', mount_flags: [], volume_mount_group: '1000' }, /volume_mount_group is not supported/],
    ];
    for (const [mount, why] of refused) {
      const err = await fails(csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, volume_capability: { ...cap, mount } }));
      t.is(err.code, status.INVALID_ARGUMENT, err.details);
      t.regex(err.details, why);
      t.false(fs.existsSync(target), 'nothing is left at the target');
      t.is(await mounts(s, 'ff'), 0, 'no hold is left');
    }
    // `rw` with a read-only publish is a contradiction.
    const rw = await fails(csi.node('NodePublishVolume', { volume_id: 'ff', target_path: target, readonly: true, volume_capability: { ...cap, mount: { fs_type: '', mount_flags: ['rw'], volume_mount_group: '' } } }));
    t.is(rw.code, status.INVALID_ARGUMENT, rw.details);
    // CreateVolume refuses flags it could never honour, too.
    const create = await fails(csi.controller('CreateVolume', { name: 'gg', volume_capabilities: [{ ...cap, mount: { fs_type: '', mount_flags: ['uid=0'], volume_mount_group: '' } }] }));
    t.is(create.code, status.INVALID_ARGUMENT, create.details);
  });
});

test('under umask 000 the CSI socket appears 0600 at its name (bound in a private directory, then renamed), and leaves no debris', async (t) => {
  await withServer(t, { root: true, csi: true, prefix: ['sh', '-c', 'umask 000; exec "$@"', 'sh'] }, async (s) => {
    const st = fs.statSync(s.csiSocket!);
    t.true(st.isSocket());
    t.is(st.mode & 0o777, 0o600);
    t.deepEqual(fs.readdirSync(path.dirname(s.csiSocket!)).filter((e) => e.startsWith('.csi-')), []);
    const csi = csiClient(s.csiSocket!);
    try {
      t.like(await csi.identity('GetPluginInfo', {}), { name: 'csi.tsvol.local' });
    } finally {
      csi.close();
    }
  });
});

test('a read-only publish keeps the nosuid and nodev of the filesystem the volume is on (a bind remount replaces per-mount flags)', async (t) => {
  const host = tempDir('tsvol-nosuid-');
  const data = path.join(host, 'data');
  fs.mkdirSync(data);
  t.is(spawnSync('mount', ['-t', 'tmpfs', '-o', 'nosuid,nodev,size=64m', 'tsvol-test-nosuid', data]).status, 0);
  try {
    await withServer(t, { root: true, csi: true, env: { TSVOL_DATA: data } }, async (s) => {
      const csi = csiClient(s.csiSocket!);
      try {
        await csi.controller('CreateVolume', { name: 'ns', volume_capabilities: [cap] });
        const target = path.join(s.dir, 'pods', 'ro');
        await csi.node('NodePublishVolume', { volume_id: 'ns', target_path: target, readonly: true, volume_capability: cap });
        const opts = mountAt(target)?.options ?? [];
        for (const f of ['ro', 'nosuid', 'nodev']) t.true(opts.includes(f), `${f} in ${opts.join(',')}`);
        await csi.node('NodeUnpublishVolume', { volume_id: 'ns', target_path: target });
      } finally {
        csi.close();
      }
    });
  } finally {
    spawnSync('umount', ['-l', data]);
    cleanupDir(host);
  }
});

test('a read-only or flagged publish holds in the copies propagation makes of the target (a Bidirectional kubelet directory): the mount is made whole before it is attached', async (t) => {
  await withCsi(t, async (csi, s) => {
    await csi.controller('CreateVolume', { name: 'pp', volume_capabilities: [cap] });
    // The pods directory shared with a peer, as kubelet's directory is between a node plugin and the host.
    const pods = path.join(s.dir, 'pods');
    const peer = path.join(s.dir, 'peer');
    sharedWithPeer(pods, peer);
    try {
      const target = path.join(pods, 'ro');
      const flagged = { ...cap, mount: { fs_type: '', mount_flags: ['noexec', 'noatime'], volume_mount_group: '' } };
      await csi.node('NodePublishVolume', { volume_id: 'pp', target_path: target, readonly: true, volume_capability: flagged });
      const copy = path.join(peer, 'ro');
      t.is(mountAt(copy)?.mountPoint, copy, 'the peer has the publish');
      t.throws(() => fs.writeFileSync(path.join(target, 'x'), 'x'), { code: 'EROFS' });
      t.throws(() => fs.writeFileSync(path.join(copy, 'x'), 'x'), { code: 'EROFS' }, 'the propagated copy is read-only too');
      const opts = mountAt(copy)?.options ?? [];
      for (const f of ['ro', 'noexec', 'noatime']) t.true(opts.includes(f), `${f} in the copy's ${opts.join(',')}`);
      await csi.node('NodePublishVolume', { volume_id: 'pp', target_path: target, readonly: true, volume_capability: flagged });
      t.is(await mounts(s, 'pp'), 1, 'a retry is the same publish');
      await csi.node('NodeUnpublishVolume', { volume_id: 'pp', target_path: target });
      // The peer's copy went with it: the target directory could be removed (a mount point is EBUSY).
      t.false(fs.existsSync(target));
      t.false(fs.existsSync(copy), 'the unpublish propagates too');
    } finally {
      spawnSync('umount', ['-R', peer]);
      spawnSync('umount', ['-R', pods]);
    }
  });
});
