/**
 * A clone never escapes its source (#9 §3): a bind-style source is read through its pinned, re-checked
 * directory, the clone's root is a new real directory holding copies (never a symlink to a host path), and
 * a source a container changes during the copy (a directory swapped for a symlink to outside) never makes
 * the copy read outside it.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startSwapper } from './helpers/swapper.js';
import { regularFiles } from './helpers/tree.js';
import { copyTree, copyTreeInWorker } from '../src/volumes/clone.js';
import { CLI, cleanupDir, requireRoot, tempDir, withServer } from './helpers/server.js';

const SECRET = 'host secret: must never be copied';

/** A host with an allowed root and, beside it, an outside directory holding a secret. */
function makeHost(): { host: string; allowed: string; outside: string } {
  const host = tempDir('tsvol-clone-host-');
  const allowed = path.join(host, 'allowed');
  const outside = path.join(host, 'outside');
  fs.mkdirSync(allowed);
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'secret.txt'), SECRET);
  return { host, allowed, outside };
}

test.serial('§3: a clone of a bind-style volume whose device is a symlink holds a real copy, not a link to the host', async (t) => {
  if (!requireRoot(t)) return;
  const { host, allowed, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  const real = path.join(allowed, 'real');
  fs.mkdirSync(path.join(real, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(real, 'copied.txt'), 'copied');
  fs.writeFileSync(path.join(real, 'sub', 'inner.txt'), 'inner');
  const link = path.join(allowed, 'link');
  fs.symlinkSync(real, link); // inside the allowlist, pointing inside it: accepted at Create
  await withServer(t, { root: true, bindRoots: [allowed] }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'bsrc', Opts: { type: 'bind', device: link } });
    await s.ok('/VolumeDriver.Create', { Name: 'clone', Opts: { from: 'bsrc' } });
    const data = path.join(s.data, 'volumes', 'clone', '_data');
    const st = fs.lstatSync(data);
    t.false(st.isSymbolicLink(), "the clone's _data is not a symlink");
    t.true(st.isDirectory(), "the clone's _data is a real directory");
    t.deepEqual(regularFiles(data), new Map([['copied.txt', 'copied'], ['sub/inner.txt', 'inner']]));
    t.not(fs.statSync(path.join(data, 'copied.txt')).ino, fs.statSync(path.join(real, 'copied.txt')).ino, 'copies, not the host files');

    // The device's symlink now points outside the allowlist: the clone must not follow it.
    fs.unlinkSync(link);
    fs.symlinkSync(outside, link);
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'clone', ID: 'reader' })).Mountpoint as string;
    t.deepEqual(regularFiles(mp), new Map([['copied.txt', 'copied'], ['sub/inner.txt', 'inner']]), 'the mountpoint shows the copies');
    t.false(fs.existsSync(path.join(mp, 'secret.txt')), 'and not the secret');
    await s.ok('/VolumeDriver.Unmount', { Name: 'clone', ID: 'reader' });
    // The source itself is refused now, as before.
    const r = await s.call('/VolumeDriver.Mount', { Name: 'bsrc', ID: 'evil' });
    t.regex(String(r.json.Err), /outside TSVOL_BIND_ROOTS/);
  });
});

test.serial('a bind-style device swapped for a symlink to outside after Create: the clone is refused and no volume is made', async (t) => {
  if (!requireRoot(t)) return;
  const { host, allowed, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  const dev = path.join(allowed, 'dev');
  fs.mkdirSync(dev);
  fs.writeFileSync(path.join(dev, 'ok.txt'), 'ok');
  await withServer(t, { root: true, bindRoots: [allowed] }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'bsrc', Opts: { type: 'bind', device: dev } });
    fs.rmSync(dev, { recursive: true });
    fs.symlinkSync(outside, dev);
    const r = await s.call('/VolumeDriver.Create', { Name: 'clone', Opts: { from: 'bsrc' } });
    t.not(r.status, 200);
    t.regex(String(r.json.Err), /create volume "clone": device ".*dev" \(it resolves to ".*outside"\) is outside TSVOL_BIND_ROOTS/);
    t.is((await s.call('/VolumeDriver.Get', { Name: 'clone' })).status, 404);
    t.false(fs.existsSync(path.join(s.data, 'volumes', 'clone')));
    t.deepEqual(fs.readdirSync(path.join(s.data, 'tmp')), [], 'no half-built clone left');
  });
});

test('symlinks inside the source, to outside paths, are copied as the same symlinks, never as what they point to', (t) => {
  const { host, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  const src = path.join(host, 'src');
  fs.mkdirSync(path.join(src, 'deep', 'er'), { recursive: true });
  fs.writeFileSync(path.join(src, 'plain'), 'plain');
  const links: [string, string][] = [
    ['abs-dir', outside],
    ['abs-file', path.join(outside, 'secret.txt')],
    ['rel-climb', '../outside'],
    ['deep/er/climb', '../../../outside/secret.txt'],
    ['proc-root', '/proc/self/root/etc'],
  ];
  for (const [rel, target] of links) fs.symlinkSync(target, path.join(src, rel));
  const dst = path.join(host, 'copy');
  copyTree(src, dst);
  for (const [rel, target] of links) {
    t.true(fs.lstatSync(path.join(dst, rel)).isSymbolicLink(), rel);
    t.is(fs.readlinkSync(path.join(dst, rel)), target, rel);
  }
  t.deepEqual(regularFiles(dst), new Map([['plain', 'plain']]), 'no outside content');
});

test('the root of a copy is always a real directory: a source root that is a symlink or a file is refused', (t) => {
  const { host, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  fs.symlinkSync(outside, path.join(host, 'link'));
  fs.writeFileSync(path.join(host, 'file'), 'f');
  t.throws(() => copyTree(path.join(host, 'link'), path.join(host, 'c1')), { message: /"[^"]*link" is not a directory/ });
  t.throws(() => copyTree(path.join(host, 'file'), path.join(host, 'c2')), { message: /"[^"]*file" is not a directory/ });
  t.false(fs.existsSync(path.join(host, 'c1')));
  t.false(fs.existsSync(path.join(host, 'c2')));
});

test('a copy from a pinned fd reads the pinned directory, even after its path is swapped for a symlink to outside', async (t) => {
  const { host, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  const dev = path.join(host, 'dev');
  fs.mkdirSync(dev, { mode: 0o750 });
  fs.writeFileSync(path.join(dev, 'mine.txt'), 'mine');
  const O_PATH = 0o10000000;
  const fd = fs.openSync(dev, O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  t.teardown(() => fs.closeSync(fd));
  fs.renameSync(dev, path.join(host, 'moved'));
  fs.symlinkSync(outside, dev);
  const dst = path.join(host, 'copy');
  await copyTreeInWorker(fd, dst);
  t.true(fs.lstatSync(dst).isDirectory());
  t.is(fs.lstatSync(dst).mode & 0o7777, 0o750, "the root's mode is the pinned directory's");
  t.deepEqual(regularFiles(dst), new Map([['mine.txt', 'mine']]));
});

test('a source directory swapped for a symlink to outside while the copy runs never makes the copy read outside', async (t) => {
  t.timeout(180_000);
  const { host, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(outside, `s${i}`), SECRET);
  const src = path.join(host, 'src');
  const hidden = path.join(host, 'src', 'hidden');
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(src, 'd', `f${i}`), 'inside');
  fs.symlinkSync(outside, path.join(src, 'evil'));
  startSwapper(t, path.join(src, 'd'), path.join(src, 'evil'), hidden);
  let sawD = 0;
  for (let i = 0; i < 15; i++) {
    const dst = path.join(host, `copy${i}`);
    copyTree(src, dst); // on this thread: the flipper is another process
    const files = regularFiles(dst);
    for (const [rel, content] of files) t.not(content, SECRET, `copy ${i}: ${rel} holds outside content`);
    if ([...files.keys()].some((k) => /^(d|hidden)\/f/.test(k))) sawD++;
    for (const name of ['d', 'evil', 'hidden']) {
      const st = fs.lstatSync(path.join(dst, name), { throwIfNoEntry: false });
      if (st?.isSymbolicLink()) t.is(fs.readlinkSync(path.join(dst, name)), outside, 'a symlink stays a symlink');
    }
    fs.rmSync(dst, { recursive: true });
  }
  t.true(sawD > 0, 'the race was run: some copies caught d as a directory');
});

test.serial("a bind-style volume's usage is measured below its pinned device: never through a symlink swapped to outside", async (t) => {
  if (!requireRoot(t)) return;
  const { host, allowed, outside } = makeHost();
  t.teardown(() => cleanupDir(host));
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(outside, `big${i}`), Buffer.alloc(64 << 10, 1));
  const real = path.join(allowed, 'real');
  fs.mkdirSync(real);
  fs.writeFileSync(path.join(real, 'one.txt'), 'one');
  const link = path.join(allowed, 'link');
  fs.symlinkSync(real, link);
  await withServer(t, { root: true, bindRoots: [allowed] }, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'bvol', Opts: { type: 'bind', device: link } });
    const inspect = (): { status: number | null; out: string; err: string } => {
      const r = spawnSync(process.execPath, [CLI, 'volume', 'inspect', 'bvol'], { env: { ...process.env, TSVOL_DATA: s.data }, encoding: 'utf8' });
      return { status: r.status, out: r.stdout, err: r.stderr };
    };
    const before = inspect();
    t.is(before.status, 0, before.err);
    t.is((JSON.parse(before.out) as { status: { usage: { files: number } } }).status.usage.files, 1, 'the device holds one file');
    fs.unlinkSync(link);
    fs.symlinkSync(outside, link);
    const after = inspect();
    t.not(after.status, 0, 'the device now resolves outside the allowlist: nothing is measured');
    t.regex(after.err, /outside TSVOL_BIND_ROOTS/);
  });
});
