/** Worker-thread entry for copyTreeInWorker (src/volumes/clone.ts): copies one tree and reports. */
import { parentPort, workerData } from 'node:worker_threads';
import { describeError, errnoCode } from '../errors.js';
import { copyTree } from './clone.js';

const { src, dst } = workerData as { src: string; dst: string };
try {
  parentPort?.postMessage({ ok: true, stats: copyTree(src, dst) });
} catch (err) {
  parentPort?.postMessage({ ok: false, message: describeError(err), code: errnoCode(err) });
}
