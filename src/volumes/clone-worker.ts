/**
 * Worker-thread entry for copyTreeInWorker (src/volumes/clone.ts): copies one tree and reports. A source
 * given as a number is an fd the caller pinned (and keeps open until we report): a worker thread shares
 * its process's fd table.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { describeError, errnoCode } from '../errors.js';
import { copyTree } from './clone.js';

const { src, dst } = workerData as { src: string | number; dst: string };
try {
  parentPort?.postMessage({ ok: true, stats: copyTree(src, dst) });
} catch (err) {
  parentPort?.postMessage({ ok: false, message: describeError(err), code: errnoCode(err) });
}
