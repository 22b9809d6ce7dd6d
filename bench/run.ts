/**
 * `npm run bench`: every benchmark in turn, each in its own process, printing Markdown tables. Only some:
 * `npm run bench -- docker layers` or TSVOL_BENCH_ONLY=docker,layers (names by prefix).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const only = [...process.argv.slice(2), ...(process.env.TSVOL_BENCH_ONLY ?? '').split(',').filter((o) => o !== '')];
const benches = ['volumes.ts', 'volumes-extra.ts', 'layers.ts', 'images.ts', 'deleter.ts', 'socket.ts', 'cycle-cpu.ts', 'docker.ts', 'cluster.ts'].filter(
  (f) => fs.existsSync(path.join(HERE, f)) && (only.length === 0 || only.some((o) => f.startsWith(o))),
);
let failed = 0;
for (const file of benches) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(HERE, file)], { stdio: 'inherit' });
  if (r.status !== 0) {
    failed++;
    console.error(`bench ${file} failed (exit ${r.status})`);
  }
  console.log('');
}
process.exit(failed > 0 ? 1 : 0);
