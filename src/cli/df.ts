/**
 * `tsvol df`: like `docker system df -v`: layers and volumes, their size, and what is shared (#6). Measured
 * by the running server when there is one, else by the CLI under the server lock (src/cli/client.ts).
 */
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { withVolumeOps } from './client.js';
import { humanSize, table } from './format.js';

/** Registers `tsvol df`. */
export function registerDf(program: Command): void {
  program
    .command('df')
    .option('--json', 'machine-readable output')
    .description('disk usage of layers and volumes; SHARED is what a layer shares with layers built on it')
    .action(async (opts: { json?: boolean }) => {
      const { layers: layerRows, volumes: volumeRows } = await withVolumeOps(loadConfig(), (ops) => ops.df());
      if (opts.json) return void process.stdout.write(`${JSON.stringify({ layers: layerRows, volumes: volumeRows }, null, 2)}\n`);
      const total = (xs: number[]): string => humanSize(xs.reduce((a, b) => a + b, 0));
      process.stdout.write(`Layers: ${layerRows.length}, ${total(layerRows.map((l) => l.size))}\n`);
      if (layerRows.length > 0) {
        process.stdout.write(
          table([['LAYER ID', 'SIZE', 'FILES', 'SHARED BY'], ...layerRows.map((l) => [l.id.slice(7, 19), humanSize(l.size), String(l.files), l.children > 0 ? `${l.children} layer(s)` : '-'])]),
        );
      }
      process.stdout.write(`\nVolumes: ${volumeRows.length}, ${total(volumeRows.map((v) => v.bytes))}\n`);
      if (volumeRows.length > 0) {
        process.stdout.write(
          table([
            ['VOLUME NAME', 'KIND', 'SIZE', 'LIMIT', 'FILES', 'MOUNTS'],
            ...volumeRows.map((v) => [v.name, String(v.kind), humanSize(v.bytes), typeof v.limit === 'number' ? humanSize(v.limit) : '-', String(v.files), String(v.mounts)]),
          ]),
        );
      }
    });
}
