/**
 * Early writeback (src/sys/durable.ts startWriteback, #11): a layer's unpack starts a syncfs on the thread
 * pool every so many bytes, one at a time, so that the syncfs before its record has little left to write;
 * a failed one fails the write (its error would not be reported again to a syncfs on another fd).
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startWriteback } from '../src/sys/durable.js';
import { syncfsAsync } from '../src/sys/libc.js';
import { cleanupDir, tempDir } from './helpers/server.js';

/** A pool call the test answers by hand: each call waits until `answer` is called. */
function manualSync(): { sync: (fd: number) => Promise<boolean>; calls: number[]; answer: (ok: boolean) => void } {
  const calls: number[] = [];
  const waiting: ((ok: boolean) => void)[] = [];
  return {
    calls,
    sync: (fd) => {
      calls.push(fd);
      return new Promise<boolean>((r) => waiting.push(r));
    },
    answer: (ok) => waiting.shift()!(ok),
  };
}

test('early writeback starts a syncfs every `every` bytes, never two at once, and settles before closing', async (t) => {
  const dir = tempDir();
  try {
    const m = manualSync();
    const wb = startWriteback(dir, 1000, m.sync);
    wb.wrote(600);
    t.is(m.calls.length, 0, 'not before `every` bytes');
    wb.wrote(600);
    t.is(m.calls.length, 1, 'one once `every` bytes are written');
    t.true(fs.fstatSync(m.calls[0]!).isDirectory(), 'on the directory (its filesystem)');
    wb.wrote(5000);
    t.is(m.calls.length, 1, 'none while one is in flight');
    m.answer(true);
    await new Promise((r) => setImmediate(r));
    wb.wrote(1000);
    t.is(m.calls.length, 2, 'the next once the first is done');
    t.is(wb.started, 2);
    let settled = false;
    const done = wb.settle().then((e) => ((settled = true), e));
    await new Promise((r) => setImmediate(r));
    t.false(settled, 'settle waits for the syncfs in flight');
    m.answer(true);
    t.is(await done, undefined);
    t.throws(() => fs.fstatSync(m.calls[0]!), { code: 'EBADF' }, 'the directory is closed once settled');
  } finally {
    cleanupDir(dir);
  }
});

test('a failed early writeback is returned by settle (the write must fail)', async (t) => {
  const dir = tempDir();
  try {
    const m = manualSync();
    const wb = startWriteback(dir, 10, m.sync);
    wb.wrote(10);
    m.answer(false);
    const err = await wb.settle();
    t.regex(err?.message ?? '', /early writeback of .* failed/);
    const thrown = startWriteback(dir, 10, () => Promise.reject(new Error('pool broke')));
    thrown.wrote(10);
    t.regex((await thrown.settle())?.message ?? '', /pool broke/);
  } finally {
    cleanupDir(dir);
  }
});

test('syncfsAsync flushes a real filesystem from the pool, and reports a bad fd as a failure', async (t) => {
  const dir = tempDir();
  try {
    fs.writeFileSync(path.join(dir, 'f'), Buffer.alloc(1 << 20, 1));
    const wb = startWriteback(dir, 1);
    wb.wrote(1 << 20);
    t.is(wb.started, 1);
    t.is(await wb.settle(), undefined);
    t.false(await syncfsAsync(1 << 20), 'EBADF is false, not a throw');
  } finally {
    cleanupDir(dir);
  }
});
