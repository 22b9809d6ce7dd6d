/**
 * Usage in Status (#6, #13): a fresh volume's first figure comes from its build (an empty volume holds
 * nothing), so `docker volume inspect` after `docker volume create` walks nothing; a volume's files change
 * only while it is held, so a Get re-measures only a held volume's figure older than 5 s, and the last
 * Unmount measures again.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { withServer, type TestServer } from './helpers/server.js';

interface Usage {
  bytes: number;
  files: number;
  measured: string;
}

async function usageOf(s: TestServer, name: string): Promise<Usage | undefined> {
  return ((await s.ok('/VolumeDriver.Get', { Name: name })).Volume as { Status: { usage?: Usage } }).Status.usage;
}

/** Polls Get until `ok` holds for the figure (a refresh runs in the background), for up to `ms`. */
async function usageWhen(s: TestServer, name: string, ok: (u: Usage | undefined) => boolean, ms = 10_000): Promise<Usage | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const u = await usageOf(s, name);
    if (ok(u) || Date.now() > deadline) return u;
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('the first Get after Create shows the empty volume\'s usage at once: its build said so, nothing is walked', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'fresh', Opts: null });
    const u = await usageOf(s, 'fresh');
    t.like(u, { bytes: 0, files: 0 });
    t.regex(u?.measured ?? '', /^\d{4}-\d\d-\d\dT/);
  });
});

test('an unheld volume is not walked again on Get; its last Unmount measures it, and a held one is refreshed after 5 s', async (t) => {
  await withServer(t, {}, async (s) => {
    await s.ok('/VolumeDriver.Create', { Name: 'quiet', Opts: null });
    const first = await usageOf(s, 'quiet');
    // Files appear behind tsvol's back (nobody holds the volume): 5 s later a Get still shows the figure
    // taken when its files could last change, and starts no walk.
    const data = path.join(s.data, 'volumes', 'quiet', '_data');
    fs.writeFileSync(path.join(data, 'behind-our-back'), 'x'.repeat(10_000));
    await new Promise((r) => setTimeout(r, 5500));
    await usageOf(s, 'quiet');
    await new Promise((r) => setTimeout(r, 500));
    t.deepEqual(await usageOf(s, 'quiet'), first, 'no refresh for a volume nobody holds');

    // A Mount and the last Unmount: measured again.
    const mp = (await s.ok('/VolumeDriver.Mount', { Name: 'quiet', ID: 'a'.repeat(64) })).Mountpoint as string;
    await s.ok('/VolumeDriver.Unmount', { Name: 'quiet', ID: 'a'.repeat(64) });
    t.like(await usageWhen(s, 'quiet', (u) => u?.files === 1), { files: 1 }, 'the last Unmount measured it');

    // While held, a figure older than 5 s is refreshed by a Get.
    await s.ok('/VolumeDriver.Mount', { Name: 'quiet', ID: 'b'.repeat(64) });
    fs.writeFileSync(path.join(mp, 'written-while-held'), 'y');
    await new Promise((r) => setTimeout(r, 5500));
    t.like(await usageWhen(s, 'quiet', (u) => u?.files === 2), { files: 2 }, 'a held volume is refreshed');
    await s.ok('/VolumeDriver.Unmount', { Name: 'quiet', ID: 'b'.repeat(64) });
  });
});
