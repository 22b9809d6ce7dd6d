/**
 * A container racing tsvol (#9): a separate process that swaps a directory `dir` with the symlink `evil`
 * (which points outside the tree) by renames, every fraction of a millisecond, until the test ends. The
 * directory is parked at `hidden` while the symlink stands at its name. A synchronous loop never runs a
 * signal handler, so it is ended with SIGKILL, by the test's teardown.
 */
import { spawn } from 'node:child_process';
import os from 'node:os';

/** Starts the swapper for the test `t`; it is killed when the test ends. */
export function startSwapper(
  t: { teardown(fn: () => Promise<void>): void },
  dir: string,
  evil: string,
  hidden: string,
): void {
  const swapper = spawn(
    process.execPath,
    [
      '-e',
      `const fs = require('fs'); const [d, evil, hidden] = process.argv.slice(1);
       const nap = new Int32Array(new SharedArrayBuffer(4));
       for (;;) {
         fs.renameSync(d, hidden); fs.renameSync(evil, d); Atomics.wait(nap, 0, 0, 0.2);
         fs.renameSync(d, evil); fs.renameSync(hidden, d); Atomics.wait(nap, 0, 0, 0.2);
       }`,
      dir,
      evil,
      hidden,
    ],
    { stdio: 'ignore' },
  );
  // Lowest priority, and naps between swaps: the race needs swaps during the walk, not a whole core taken
  // from the tests running beside this one.
  if (swapper.pid !== undefined) os.setPriority(swapper.pid, 19);
  const stopped = new Promise((resolve) => swapper.once('exit', resolve));
  t.teardown(async () => {
    swapper.kill('SIGKILL');
    await stopped;
  });
}
