/**
 * The background deleter off the event loop (#13): a removed volume's tree is deleted on a worker thread,
 * holding its stage's lock until the tree is gone, so
 * - a Remove's reply never waits for the delete, and the server answers other requests while it runs;
 * - the delete makes progress while the main thread is blocked (it is not on the event loop at all);
 * - a kill -9 mid-delete leaves the stage, which the next start-up deletes.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { removeTreeNoCross } from '../src/sys/remove.js';
import { tryFlock } from '../src/sys/libc.js';
import { cleanupDir, startTestServer, tempDir, withServer, type TestServer } from './helpers/server.js';

/** Writes `n` empty files, 500 per directory, into `dir`. */
async function fill(dir: string, n: number): Promise<void> {
  for (let d = 0; d * 500 < n; d++) {
    const sub = path.join(dir, `d${d}`);
    await fs.promises.mkdir(sub);
    await Promise.all(Array.from({ length: Math.min(500, n - d * 500) }, (_, i) => fs.promises.writeFile(path.join(sub, `f${i}`), '')));
  }
}

/** The rm-* stages in the server's tmp/. */
const rmStages = (s: TestServer): string[] => fs.readdirSync(path.join(s.data, 'tmp')).filter((e) => e.startsWith('rm-'));

/** True if a live process holds the flock of directory `dir`. */
function isLocked(dir: string): boolean {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    return !tryFlock(fd); // ours if free; closing the fd drops it again
  } finally {
    fs.closeSync(fd);
  }
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

test('a Remove of a 50,000-file volume answers before its tree is deleted; Gets are answered meanwhile; the stage stays locked until it is gone', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'big', Opts: {} });
    await s.ok('/VolumeDriver.Create', { Name: 'other', Opts: {} });
    await fill(path.join(s.data, 'volumes', 'big', '_data'), 50_000);

    const reply = await s.call('/VolumeDriver.Remove', { Name: 'big' });
    t.is(reply.status, 200);
    t.deepEqual(reply.json, { Err: '' });
    // The reply came while the tree is still being deleted, in a stage whose lock the server holds.
    const [stage, ...more] = rmStages(s);
    t.truthy(stage, 'the removed volume is being deleted in tmp/rm-*');
    t.deepEqual(more, []);
    const stageDir = path.join(s.data, 'tmp', stage!);
    t.true(isLocked(stageDir), 'the stage is locked while its tree is deleted');

    // Other requests are served while the delete runs: each Get completes before the delete finishes.
    for (let i = 0; i < 5; i++) {
      const got = await s.ok('/VolumeDriver.Get', { Name: 'other' });
      t.is((got.Volume as { Name: string }).Name, 'other');
      t.true(fs.existsSync(stageDir), `Get ${i + 1} answered while the tree was still being deleted`);
    }
    const gone = await s.call('/VolumeDriver.Get', { Name: 'big' });
    t.regex(String(gone.json.Err), /not found/);

    t.true(await until(() => !fs.existsSync(stageDir), 170_000), 'the stage is deleted in the end');
    t.deepEqual(rmStages(s), []);
  });
});

test('a tree delete makes progress while the main thread is blocked: it runs off the event loop', async (t) => {
  const dir = tempDir('tsvol-deleter-');
  try {
    const tree = path.join(dir, 'tree');
    fs.mkdirSync(tree);
    await fill(tree, 20_000);
    const count = (): number => fs.readdirSync(tree).reduce((n, d) => n + fs.readdirSync(path.join(tree, d)).length, 0);
    const before = count();
    const removal = removeTreeNoCross(tree);
    // Block this thread (no await, no event loop turn) until entries disappear, for at most 60 s. A delete
    // on the event loop could not delete a single entry past its first batch meanwhile.
    const start = count();
    const deadline = Date.now() + 60_000;
    let now = start;
    while (Date.now() < deadline) {
      try {
        now = count();
      } catch (err) {
        // ENOENT: a directory (or the whole tree) went while we counted: progress.
        if ((err as { code?: string }).code !== 'ENOENT') throw err;
        now = -1;
      }
      if (now < start) break;
    }
    t.true(now < start, `entries deleted while the main thread was blocked (${before} at first, ${start} when the call returned, ${now} after)`);
    t.deepEqual(await removal, []);
    t.false(fs.existsSync(tree));
  } finally {
    cleanupDir(dir);
  }
});

test('kill -9 in the middle of deleting a removed volume leaves its stage, which the next start-up deletes', async (t) => {
  const s = await startTestServer();
  let s2: TestServer | undefined;
  try {
    await s.ok('/VolumeDriver.Create', { Name: 'big', Opts: {} });
    await fill(path.join(s.data, 'volumes', 'big', '_data'), 30_000);
    await s.ok('/VolumeDriver.Remove', { Name: 'big' });
    await s.kill();
    const left = rmStages(s);
    t.is(left.length, 1, 'the stage was still being deleted when the server died');
    t.false(isLocked(path.join(s.data, 'tmp', left[0]!)), 'its lock died with the server');
    s2 = await startTestServer({ dir: s.dir });
    t.true(await until(() => rmStages(s2!).length === 0, 170_000), 'start-up deleted the stage');
    const r = await s2.call('/VolumeDriver.Get', { Name: 'big' });
    t.regex(String(r.json.Err), /not found/);
  } finally {
    await s.kill();
    await s2?.kill();
    cleanupDir(s.dir);
  }
});
