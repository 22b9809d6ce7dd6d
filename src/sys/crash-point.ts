/**
 * Named crash points for crash tests (STYLE.md: a crash test names its crash points). With
 * TSVOL_CRASH_AT=<name> in the environment, the process SIGKILLs itself when it reaches the point of that
 * name, exactly as a power cut or kill -9 would stop it there: no finally blocks, no exit handlers.
 * Unset (always, outside tests) it costs one environment lookup.
 */

/** Kills this process with SIGKILL if TSVOL_CRASH_AT names `point` (e.g. `migrate:after-commit`). */
export function crashPoint(point: string): void {
  if (process.env.TSVOL_CRASH_AT !== point) return;
  process.kill(process.pid, 'SIGKILL');
  // The signal may land on another thread of this process an instant later: go no further meanwhile.
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}
