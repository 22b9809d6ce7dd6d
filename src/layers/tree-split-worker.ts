/** Worker-thread entry of hashTreeInWorker (tree-split.ts): splits one tree into its ring, answers, and ends. */
import { parentPort, workerData } from 'node:worker_threads';
import { describeError, errnoCode } from '../errors.js';
import { splitTree, type HashJob, type HashReply } from './tree-split.js';

const { root, splitFile, ring } = workerData as HashJob;
let reply: HashReply;
try {
  reply = { ok: true, stats: splitTree(root, splitFile, ring) };
} catch (err) {
  const code = errnoCode(err);
  reply = code === undefined ? { ok: false, message: describeError(err) } : { ok: false, message: describeError(err), code };
}
parentPort?.postMessage(reply);
