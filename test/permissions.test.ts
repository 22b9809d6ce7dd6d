/**
 * #9 §5: no local user other than root reaches volume data through tsvol's directories, whoever made the
 * data root (the server or the CLI), and a root left open by an older version is closed at start-up. Each
 * test reads as uid 65534 (nobody) a world-readable file in a world-readable _data, so that only the
 * directories above it can refuse; a control read of an open file proves nobody can read at all.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { CLI, cleanupDir, requireRoot, startTestServer, tempDir, type TestServer } from './helpers/server.js';

const NOBODY = 65534;

/** What uid/gid 65534 gets reading `file`: 'ok' or the error code. */
function readAsNobody(file: string): string {
  const script = `try { require('fs').readFileSync(${JSON.stringify(file)}); process.stdout.write('ok'); } catch (e) { process.stdout.write(String(e.code)); }`;
  const r = spawnSync(process.execPath, ['-e', script], { uid: NOBODY, gid: NOBODY, cwd: '/', env: { PATH: process.env.PATH ?? '/usr/bin' }, encoding: 'utf8' });
  return r.status === 0 && r.stdout !== '' ? r.stdout : `node as nobody failed: ${r.error?.message ?? r.stderr}`;
}

/** A test directory other users may enter (mkdtemp makes 0700, which would hide what we test) with a control file. */
function openDir(): { dir: string; control: string } {
  const dir = tempDir('tsvol-perm-');
  fs.chmodSync(dir, 0o755);
  const control = path.join(dir, 'control');
  fs.writeFileSync(control, 'anyone may read this', { mode: 0o644 });
  return { dir, control };
}

function modeOf(p: string): number {
  return fs.statSync(p).mode & 0o7777;
}

/** Log lines of `s` that report a tightened directory. */
function tightened(s: TestServer): Record<string, unknown>[] {
  return s
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === 'closed a directory other users could enter');
}

test.serial('a server-made data root and mounts root keep other users out of every volume, whatever its own mode', async (t) => {
  if (!requireRoot(t)) return;
  const { dir, control } = openDir();
  const s = await startTestServer({ dir });
  try {
    t.is(readAsNobody(control), 'ok', 'control: nobody can read an open file');
    t.is(modeOf(s.data), 0o700);
    t.is(modeOf(s.mounts!), 0o700);
    // _data keeps the mode its owner asked for, even 0777: the path to it is what is closed.
    for (const [name, opts] of [['plain', null], ['wide', { mode: '0777' }]] as const) {
      await s.ok('/VolumeDriver.Create', { Name: name, Opts: opts });
      const mp = (await s.ok('/VolumeDriver.Mount', { Name: name, ID: 'c1' })).Mountpoint as string;
      fs.writeFileSync(path.join(mp, 'f'), 'secret', { mode: 0o644 });
      t.is(readAsNobody(path.join(mp, 'f')), 'EACCES', `${name}: through the mountpoint`);
      t.is(readAsNobody(path.join(s.data, 'volumes', name, '_data', 'f')), 'EACCES', `${name}: through volumes/${name}/_data`);
    }
    t.is(modeOf(path.join(s.data, 'volumes', 'wide', '_data')), 0o777, 'the mode asked for is kept');
  } finally {
    await s.kill();
    cleanupDir(dir);
  }
});

test.serial('a data root made by the CLI (volume import, info) before any server is root-only', async (t) => {
  if (!requireRoot(t)) return;
  const { dir, control } = openDir();
  try {
    const src = path.join(dir, 'src');
    fs.mkdirSync(src, { mode: 0o755 });
    fs.chmodSync(src, 0o755);
    fs.writeFileSync(path.join(src, 'f'), 'imported secret', { mode: 0o644 });
    const tarFile = path.join(dir, 'v.tar');
    const tar = spawnSync('tar', ['-C', src, '-cf', tarFile, '.'], { encoding: 'utf8' });
    t.is(tar.status, 0, tar.stderr);
    const cli = (data: string, ...args: string[]) =>
      spawnSync(process.execPath, [CLI, ...args], {
        env: { ...process.env, TSVOL_DATA: data, TSVOL_SOCKET: path.join(dir, 'no-server.sock'), TSVOL_MOUNTS: '' },
        encoding: 'utf8',
      });
    const data = path.join(dir, 'data');
    const imp = cli(data, 'volume', 'import', 'imp', tarFile);
    t.is(imp.status, 0, imp.stderr);
    t.is(readAsNobody(control), 'ok', 'control: nobody can read an open file');
    t.is(modeOf(path.join(data, 'volumes', 'imp', '_data')), 0o755, "the archive's own root mode is kept");
    t.is(modeOf(data), 0o700);
    t.is(readAsNobody(path.join(data, 'volumes', 'imp', '_data', 'f')), 'EACCES');

    const infoData = path.join(dir, 'info-data');
    const info = cli(infoData, 'info', '--json');
    t.is(info.status, 0, info.stderr);
    t.is(modeOf(infoData), 0o700, '`tsvol info` on a fresh TSVOL_DATA');
  } finally {
    cleanupDir(dir);
  }
});

test.serial('start-up closes a data root and mounts root left open (0755), once, logging the old mode', async (t) => {
  if (!requireRoot(t)) return;
  const { dir, control } = openDir();
  let s = await startTestServer({ dir });
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'old', Opts: null });
    fs.writeFileSync(path.join(s.data, 'volumes', 'old', '_data', 'f'), 'secret', { mode: 0o644 });
    await s.stop();
    // What an older version (or `mkdir -p`) left: both roots open.
    fs.chmodSync(s.data, 0o755);
    fs.chmodSync(s.mounts!, 0o755);
    t.is(readAsNobody(path.join(s.data, 'volumes', 'old', '_data', 'f')), 'ok', 'control: the open root lets nobody in');
    s = await startTestServer({ dir });
    t.is(modeOf(s.data), 0o700);
    t.is(modeOf(s.mounts!), 0o700);
    t.is(readAsNobody(control), 'ok');
    t.is(readAsNobody(path.join(s.data, 'volumes', 'old', '_data', 'f')), 'EACCES');
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'old', ID: 'c1' })).Mountpoint as string;
    t.is(readAsNobody(path.join(mp, 'f')), 'EACCES');
    t.deepEqual(
      tightened(s).map((l) => [l.level, l.what, l.path, l.oldMode, l.mode]),
      [
        [30, 'data root', s.data, '0755', '0700'],
        [30, 'mounts root', s.mounts, '0755', '0700'],
      ],
    );
    await s.stop();
    s = await startTestServer({ dir });
    t.deepEqual(tightened(s), [], 'a closed root is left alone, and nothing is logged');
  } finally {
    await s.kill();
    cleanupDir(dir);
  }
});
