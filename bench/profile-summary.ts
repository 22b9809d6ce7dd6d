/**
 * Summarises V8 CPU profiles (`node --cpu-prof`, e.g. from TSVOL_BENCH_CPU_PROF=DIR npm run bench -- docker)
 * into where the time went: self time per bucket (request parsing, logging, durable commit, fs calls, …)
 * and the top functions. Usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile…
 * One file per thread: the main thread's and the commit worker's (src/store/commit-worker.ts) are separate.
 */
import fs from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Buckets, first match wins: a frame's url and function name against each test. */
const BUCKETS: readonly [string, (url: string, fn: string) => boolean][] = [
  ['idle (waiting for requests or I/O)', (_u, f) => f === '(idle)'],
  ['garbage collection', (_u, f) => f === '(garbage collector)'],
  ['logging (pino, sonic-boom)', (u) => /node_modules\/(pino|sonic-boom|thread-stream|fast-redact|quick-format|on-exit-leak|atomic-sleep)/.test(u) || /\/src\/log\.ts|\/dist\/log\.js/.test(u)],
  ['request parsing and dispatch (zod, express, body, JSON)', (u, f) => /node_modules\/(zod|express|router|body-parser|raw-body|qs|path-to-regexp|finalhandler)/.test(u) || /http\/(app|protocol)\.[jt]s/.test(u) || f === 'parse' || f === 'stringify'],
  ['node http (llhttp, sockets)', (u) => /^node:(_http|http|net|stream|internal\/(http|streams|stream_base|net))/.test(u)],
  ['SQLite (better-sqlite3: statements, commit and fsync)', (u, f) => /better-sqlite3/.test(u) || /^(run|exec|get|all|iterate|pragma|transaction)$/.test(f) && u === ''],
  ['store (src/store: group commit, records)', (u) => /\/store\//.test(u)],
  ['fs calls from the main thread (sync calls, dispatch to the pool)', (u) => /^node:(fs|internal\/fs)/.test(u)],
  ['koffi FFI (openat2, mount, statx)', (u) => /koffi/.test(u) || /\/sys\//.test(u)],
  ['volumes (service, usage walks, background deleter)', (u) => /\/volumes\//.test(u)],
  ['worker messages', (u) => /^node:internal\/(worker|per_context\/messageport)/.test(u)],
  ['program (native, not attributed)', (_u, f) => f === '(program)'],
];

function summarise(file: string): void {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<number, number>();
  p.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);

  /** The bucket of a sample: the first frame up the stack that some bucket claims. */
  const bucketOf = (id: number): string => {
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur)!;
      const hit = BUCKETS.find(([, test]) => test(n.callFrame.url, n.callFrame.functionName));
      if (hit) return hit[0];
    }
    return 'other JavaScript';
  };
  const buckets = new Map<string, number>();
  const fns = new Map<string, number>();
  for (const [id, us] of self) {
    const b = bucketOf(id);
    buckets.set(b, (buckets.get(b) ?? 0) + us);
    const n = byId.get(id)!;
    const key = `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*\/(node_modules|dist|src)\//, '$1/')}:${n.callFrame.lineNumber + 1}`;
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const busy = total - (buckets.get('idle (waiting for requests or I/O)') ?? 0);
  console.log(`## ${path.basename(file)}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy\n`);
  console.log('| bucket (self time, first claiming frame up the stack) | ms | % of busy |\n|---|---:|---:|');
  for (const [b, us] of [...buckets].sort((a, z) => z[1] - a[1])) {
    console.log(`| ${b} | ${(us / 1e3).toFixed(0)} | ${b.startsWith('idle') ? '—' : `${((100 * us) / busy).toFixed(1)}%`} |`);
  }
  console.log('\n| top functions (self) | ms |\n|---|---:|');
  for (const [f, us] of [...fns].sort((a, z) => z[1] - a[1]).slice(0, 25)) console.log(`| \`${f}\` | ${(us / 1e3).toFixed(0)} |`);
  console.log('');
}

for (const f of process.argv.slice(2)) summarise(f);
