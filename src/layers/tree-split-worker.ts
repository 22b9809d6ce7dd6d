/** Worker-thread entry of hashTreeInWorker (tree-split.ts): hashes and splits one tree, answers, and ends. */
import { parentPort, workerData } from 'node:worker_threads';
import { describeError, errnoCode } from '../errors.js';
import { hashTree, type HashJob, type HashReply } from './tree-split.js';

const { root, splitFile } = workerData as HashJob;
let reply: HashReply;
try {
  reply = { ok: true, result: hashTree(root, splitFile) };
} catch (err) {
  const code = errnoCode(err);
  reply = code === undefined ? { ok: false, message: describeError(err) } : { ok: false, message: describeError(err), code };
}
parentPort?.postMessage(reply);
