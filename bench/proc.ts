/**
 * What the benches read from /proc: a process's CPU time and the pid of a named process (no pgrep: only
 * node is sure to be there).
 */
import fs from 'node:fs';

/** User + system CPU seconds of the children `pid` has waited for (fields 16 and 17: cutime, cstime). */
function statChildSeconds(stat: string): number {
  const f = statFields(stat);
  return (Number(f[13]) + Number(f[14])) / 100;
}

/** Fields of /proc/PID/stat after the command name (which may hold spaces): index 0 is field 3 (state). */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** User + system CPU seconds in a stat line (fields 14 and 15, in clock ticks of 10 ms). */
function statCpuSeconds(stat: string): number {
  const f = statFields(stat);
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** CPU seconds (user + system, every thread, exited ones included) process `pid` has used; 0 if it is gone. */
export function cpuSeconds(pid: number): number {
  const stat = readStat(pid);
  return stat === undefined ? 0 : statCpuSeconds(stat);
}

/** /proc/PID/stat, or undefined if the process is gone (counted as nothing: a bench figure, not a decision). */
function readStat(pid: number): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * cpuSeconds plus what the children `pid` has waited for used: dockerd runs each layer's unpack in a
 * re-exec'd child (its `docker-untar`), whose CPU counts only there once the child has ended.
 */
export function cpuSecondsWithChildren(pid: number): number {
  const stat = readStat(pid);
  return stat === undefined ? 0 : statCpuSeconds(stat) + statChildSeconds(stat);
}

/** CPU seconds per live thread of `pid`, keyed by thread name and id ("main" for the main thread). */
export function threadCpuSeconds(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // the thread ended between the listing and the read
    }
    const name = Number(tid) === pid ? 'main' : `${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}#${tid}`;
    out.set(name, statCpuSeconds(stat));
  }
  return out;
}

/** The oldest process whose command name is `comm` (what `pgrep -xo` finds), or undefined. */
export function oldestProcess(comm: string): number | undefined {
  let best: { pid: number; start: number } | undefined;
  for (const e of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/comm`, 'utf8').trim() !== comm) continue;
      const start = Number(statFields(fs.readFileSync(`/proc/${e}/stat`, 'utf8'))[19]); // field 22: start time
      if (best === undefined || start < best.start) best = { pid: Number(e), start };
    } catch {
      continue; // the process ended while we looked
    }
  }
  return best?.pid;
}
