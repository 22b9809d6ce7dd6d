/** The per-volume lock: one volume's operations run in order; a slow one never stalls another volume. */
import test from 'ava';
import { createKeyedMutex } from '../src/sys/keyed-mutex.js';

test('a slow operation on one volume never stalls operations on others', async (t) => {
  const locks = createKeyedMutex();
  let releaseSlow!: () => void;
  const slow = locks.run('db', () => new Promise<void>((r) => (releaseSlow = r)));
  const queuedBehind = locks.run('db', () => 'second on db');
  const other = await locks.run('web', () => 'web done');
  t.is(other, 'web done');
  let behindDone = false;
  void queuedBehind.then(() => (behindDone = true));
  await new Promise((r) => setTimeout(r, 20));
  t.false(behindDone, 'the same volume waits its turn');
  releaseSlow();
  await slow;
  t.is(await queuedBehind, 'second on db');
  await new Promise((r) => setImmediate(r)); // the entry is dropped once the turn settles
  t.is(locks.busyKeys, 0, 'idle keys are freed');
});

test('operations on one key run in arrival order, and a failure does not block the next', async (t) => {
  const locks = createKeyedMutex();
  const order: number[] = [];
  const runs = [3, 1, 2].map((delay, i) =>
    locks.run('v', async () => {
      await new Promise((r) => setTimeout(r, delay));
      order.push(i);
      if (i === 1) throw new Error('boom');
    }),
  );
  const results = await Promise.allSettled(runs);
  t.deepEqual(order, [0, 1, 2]);
  t.is(results[1]?.status, 'rejected');
  t.is(results[2]?.status, 'fulfilled');
});
