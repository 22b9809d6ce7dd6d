/** The gc barrier (#11): a layer gc never runs while an image load is between its layer imports and its rows. */
import test from 'ava';
import { createGcBarrier } from '../src/images/gc-barrier.js';

const tick = (ms = 10): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('gc waits for loads in flight, and loads that start meanwhile wait for the gc', async (t) => {
  const b = createGcBarrier();
  const events: string[] = [];
  const load = (name: string, ms: number) =>
    b.shared(async () => {
      events.push(`${name} start`);
      await tick(ms);
      events.push(`${name} end`);
    });
  const first = load('load1', 50);
  await tick(1);
  const gc = b.exclusive(async () => {
    events.push('gc start');
    await tick(20);
    events.push('gc end');
  });
  await tick(1);
  const second = load('load2', 5);
  await Promise.all([first, gc, second]);
  t.deepEqual(events, ['load1 start', 'load1 end', 'gc start', 'gc end', 'load2 start', 'load2 end']);
});

test('a failing gc or load releases the barrier', async (t) => {
  const b = createGcBarrier();
  await t.throwsAsync(b.exclusive(async () => Promise.reject(new Error('gc failed'))), { message: 'gc failed' });
  await t.throwsAsync(b.shared(async () => Promise.reject(new Error('load failed'))), { message: 'load failed' });
  t.is(await b.exclusive(async () => 'ran'), 'ran');
  t.is(await b.shared(async () => 'ran'), 'ran');
});
