/** `tsvol df`: like `docker system df -v`: layers and volumes, their size, and what is shared (#6). */
import path from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { createLayerStore } from '../layers/layer-store.js';
import { createLogger } from '../log.js';
import { createLayout } from '../store/layout.js';
import { createVolumeStore } from '../store/volume-store.js';
import { createVolumeService } from '../volumes/volume-service.js';
import { humanSize, table } from './format.js';


/** Registers `tsvol df`. */
export function registerDf(program: Command): void {
  program
    .command('df')
    .option('--json', 'machine-readable output')
    .description('disk usage of layers and volumes; SHARED is what a layer shares with layers built on it')
    .action(async (opts: { json?: boolean }) => {
      const config = loadConfig();
      const layout = createLayout(config.dataRoot);
      const layers = createLayerStore(path.join(config.dataRoot, 'layers')).list();
      const children = new Map<string, number>();
      for (const l of layers) if (l.parent !== undefined) children.set(l.parent, (children.get(l.parent) ?? 0) + 1);
      // A layer's chain below it is shared by every layer on top: count each layer's own diff once.
      const layerRows = layers.map((l) => ({ id: l.id, size: l.size, files: l.files, children: children.get(l.id) ?? 0 }));
      const store = createVolumeStore(layout);
      let volumeRows: { name: string; kind: unknown; limit: unknown; bytes: number; files: number; mounts: unknown }[];
      try {
        const service = createVolumeService({ config, layout, store, log: createLogger('silent') });
        volumeRows = await Promise.all(
          service.list().map(async (v) => {
            const info = service.get(v.name);
            const u = info.status.kind === 'bind' ? { bytes: 0, files: 0 } : await service.measureUsage(v.name);
            return { name: v.name, kind: info.status.kind, limit: info.status.limit, bytes: u.bytes, files: u.files, mounts: info.status.mounts };
          }),
        );
      } finally {
        await store.close();
      }
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
