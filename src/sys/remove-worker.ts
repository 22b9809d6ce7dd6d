/**
 * Worker-thread entry of the deleter (src/sys/remove.ts): deletes one tree per message, synchronously, in
 * the order received, and answers each. A job's lockFd (a stage's locked fd, shared with the main thread
 * through the process's fd table) is closed here once its tree is gone, whatever happened: its flock is
 * held for exactly as long as the delete runs, and the close that frees the deleted directory's inode
 * costs this thread, not the event loop.
 */
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { describeError, errnoCode } from '../errors.js';
import { removeTreeSync, type RemoveJob, type RemoveReply } from './remove.js';

parentPort?.on('message', (job: RemoveJob) => {
  let reply: RemoveReply;
  try {
    reply = { id: job.id, ok: true, skipped: removeTreeSync(job.dir, job.lockFd) };
  } catch (err) {
    const code = errnoCode(err);
    reply = code === undefined ? { id: job.id, ok: false, message: describeError(err) } : { id: job.id, ok: false, message: describeError(err), code };
  }
  if (job.lockFd !== undefined) {
    try {
      fs.closeSync(job.lockFd);
    } catch (err) {
      // Cannot happen for an fd we were handed open (only EBADF/EINTR/EIO): report it rather than hide it.
      if (reply.ok) reply = { id: job.id, ok: false, message: `closing the stage's fd: ${describeError(err)}` };
    }
  }
  parentPort?.postMessage(reply);
});
