/**
 * `tsvol layer …`: import, export, ls, history, tag, rm, gc (issue #5). Thin: parse, call the layer
 * operations (src/layers/layer-ops.ts), print. Each command is a request to the running server, or runs
 * in-process under the server lock when none answers (src/cli/client.ts), like `tsvol volume`.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import type { LayerRecord } from '../layers/layer-ops.js';
import { withLayerOps } from './client.js';
import { humanSize, table } from './format.js';
import { withProgress, writeOut } from './progress.js';

const short = (id: string | undefined): string => (id ? id.slice(7, 19) : '-');

function print(json: boolean, data: unknown, rows: () => string[][]): void {
  process.stdout.write(json ? `${JSON.stringify(data, null, 2)}\n` : table(rows()));
}

/** Registers `tsvol layer`. */
export function registerLayer(program: Command): void {
  const layer = program.command('layer').description('content-addressed read-only image layers');
  layer
    .command('import')
    .argument('<file>', 'a layer tar, plain or gzip; - for standard input')
    .option('--parent <id>', 'the layer this one sits on')
    .description('import a layer tar; prints its ID')
    .action(async (file: string, opts: { parent?: string }) => {
      // Opened here, synchronously, so a missing file is an error now and not an unhandled stream event.
      const fd = file === '-' ? undefined : fs.openSync(file, 'r');
      const input = fd === undefined ? process.stdin : fs.createReadStream('', { fd, highWaterMark: 1 << 20 });
      const total = fd === undefined ? undefined : fs.fstatSync(fd).size;
      const rec = await withLayerOps(loadConfig(), (ops) => ops.importLayer(withProgress('importing', input as AsyncIterable<Buffer>, total), opts.parent));
      process.stdout.write(`${rec.id}\n`);
    });
  layer
    .command('export')
    .argument('<id>', 'layer ID or name')
    .option('-o, --output <file>', 'write to a file instead of standard output')
    .description("the layer's own diff as an OCI layer tar")
    .action(async (id: string, opts: { output?: string }) => {
      // The sink runs once the layer is found: an unknown ID leaves no output file behind.
      await withLayerOps(loadConfig(), (ops) =>
        ops.exportLayer(id, (tar) => writeOut(tar, opts.output)),
      );
    });
  layer
    .command('ls')
    .option('--json', 'machine-readable output')
    .description('list layers')
    .action(async (opts: { json?: boolean }) => {
      const layers = (await withLayerOps(loadConfig(), (ops) => ops.listLayers())).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
      print(!!opts.json, layers, () => [
        ['LAYER ID', 'PARENT', 'SIZE', 'FILES', 'CREATED'],
        ...layers.map((l) => [short(l.id), short(l.parent), humanSize(l.size), String(l.files), l.createdAt]),
      ]);
    });
  layer
    .command('history')
    .argument('<id>', 'layer ID or name')
    .option('--json', 'machine-readable output')
    .description('the chain from this layer down to its base, like docker history')
    .action(async (id: string, opts: { json?: boolean }) => {
      const chain: LayerRecord[] = await withLayerOps(loadConfig(), (ops) => ops.history(id));
      print(!!opts.json, chain, () => [
        ['LAYER ID', 'DIFF ID', 'SIZE', 'FILES', 'CREATED'],
        ...chain.map((l) => [short(l.id), short(l.diffId), humanSize(l.size), String(l.files), l.createdAt]),
      ]);
    });
  layer
    .command('tag')
    .argument('<id>', 'layer ID or name')
    .argument('<name>', 'the new name')
    .description('name a layer (a name holds it; it works wherever an ID does)')
    .action(async (id: string, name: string) => {
      await withLayerOps(loadConfig(), (ops) => ops.tag(id, name));
    });
  layer
    .command('rm')
    .argument('<id>', 'layer ID or name')
    .description('remove a layer that nothing holds; given a tag, untag (and remove the layer if that tag was its last holder)')
    .action(async (id: string) => {
      const { untagged, deleted } = await withLayerOps(loadConfig(), (ops) => ops.removeLayer(id));
      for (const u of untagged) process.stdout.write(`untagged ${u}\n`);
      for (const d of deleted) process.stdout.write(`deleted ${d}\n`);
    });
  layer
    .command('gc')
    .option('--json', 'machine-readable output')
    .description('remove every layer held by nothing, and crash leftovers')
    .action(async (opts: { json?: boolean }) => {
      const { removed } = await withLayerOps(loadConfig(), (ops) => ops.gc());
      if (opts.json) process.stdout.write(`${JSON.stringify(removed)}\n`);
      else for (const r of removed) process.stdout.write(`removed ${r}\n`);
    });
}
