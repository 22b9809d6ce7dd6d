/**
 * A new regular file is created with its mode, and keeps the owner the kernel gave it, when those are
 * exactly the header's (#11: a chmod and a chown less per file). The kernel does not always give them:
 * a set-group-ID directory gives its group, a default ACL decides the mode instead of the umask, the
 * umask takes bits, chown clears set-id bits. Each case must still come out exactly as the header says.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { TarReader } from '../src/layers/tar/reader.js';
import { unpackLayer } from '../src/layers/unpack.js';
import { lgetxattr } from '../src/sys/libc.js';
import { cleanupDir, requireRoot, tempDir } from './helpers/server.js';

function entry(h: Partial<TarHeader> & { path: string }, body = Buffer.alloc(0)): Buffer {
  const header: TarHeader = {
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 1_700_000_000, linkname: '', uname: '', gname: '',
    devmajor: 0, devminor: 0, xattrs: new Map(), ...h,
  };
  return Buffer.concat([encodeHeader(header), body, Buffer.alloc(padding(body.length))]);
}

/** A POSIX ACL xattr value (version 2): user::rwx, group::---, other::--- (a default ACL taking group and other bits). */
function closedAcl(): Buffer {
  const entries: [number, number][] = [
    [0x01, 7], // ACL_USER_OBJ rwx
    [0x04, 0], // ACL_GROUP_OBJ ---
    [0x20, 0], // ACL_OTHER ---
  ];
  const b = Buffer.alloc(4 + entries.length * 8);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm], i) => {
    b.writeUInt16LE(tag, 4 + i * 8);
    b.writeUInt16LE(perm, 6 + i * 8);
    b.writeUInt32LE(0xffffffff, 8 + i * 8);
  });
  return b;
}

test('files come out with the header\'s exact owner and mode where the kernel would give others', async (t) => {
  if (!requireRoot(t)) return;
  const dir = tempDir();
  const umask = process.umask(0o022);
  try {
    const body = Buffer.from('data\n');
    const tar = Buffer.concat([
      // A set-group-ID directory of group 4242: a file made in it gets group 4242 unless chowned.
      entry({ path: 'sgid/', type: 'dir', mode: 0o2755, gid: 4242 }),
      entry({ path: 'sgid/root-file', gid: 0 }, body),
      // A default ACL closing group and other: a file made in it gets 0600 from a 0644 open unless chmodded.
      entry({ path: 'acl/', type: 'dir', mode: 0o755, xattrs: new Map([['system.posix_acl_default', closedAcl()]]) }),
      entry({ path: 'acl/file', mode: 0o644 }, body),
      // Bits the umask (022) takes, and set-id bits.
      entry({ path: 'plain/group-writable', mode: 0o664 }, body),
      entry({ path: 'plain/open', mode: 0o777 }, body),
      entry({ path: 'plain/setuid', mode: 0o4755 }, body),
      entry({ path: 'plain/setgid', mode: 0o2755, gid: 0 }, body),
      entry({ path: 'plain/common', mode: 0o644 }, body),
      entry({ path: 'plain/none', mode: 0o000 }, body),
      entry({ path: 'plain/user', mode: 0o640, uid: 1000, gid: 1001 }, body),
      // Chowned after it was made: a chown clears set-id bits, so these must be set after it.
      entry({ path: 'plain/user-setuid', mode: 0o4755, uid: 1000, gid: 1001 }, body),
      Buffer.alloc(1024),
    ]);
    const root = path.join(dir, 'root');
    fs.mkdirSync(root);
    await unpackLayer(new TarReader((async function* () { yield tar; })()), root, undefined);
    const st = (rel: string): fs.Stats => fs.lstatSync(path.join(root, rel));
    t.true(lgetxattr(path.join(root, 'acl'), 'system.posix_acl_default') !== undefined, 'the filesystem keeps default ACLs (the case is real)');
    t.is(st('sgid').gid, 4242);
    t.is(st('sgid/root-file').gid, 0, 'a root file in a set-group-ID directory is chowned to its header group');
    t.is(st('acl/file').mode & 0o7777, 0o644, 'a file under a default ACL gets its header mode');
    const want: [string, number, number, number][] = [
      ['plain/group-writable', 0o664, 0, 0],
      ['plain/open', 0o777, 0, 0],
      ['plain/setuid', 0o4755, 0, 0],
      ['plain/setgid', 0o2755, 0, 0],
      ['plain/common', 0o644, 0, 0],
      ['plain/none', 0o000, 0, 0],
      ['plain/user', 0o640, 1000, 1001],
      ['plain/user-setuid', 0o4755, 1000, 1001],
    ];
    for (const [rel, mode, uid, gid] of want) {
      t.is(st(rel).mode & 0o7777, mode, `${rel} mode`);
      t.is(st(rel).uid, uid, `${rel} uid`);
      t.is(st(rel).gid, gid, `${rel} gid`);
      t.is(fs.readFileSync(path.join(root, rel), 'utf8'), 'data\n');
      t.is(st(rel).mtimeMs, 1_700_000_000_000, `${rel} mtime`);
    }
  } finally {
    process.umask(umask);
    cleanupDir(dir);
  }
});
