/**
 * `tsvol volume …`: ls, inspect, export, import, commit, clone (#6), resize (#12). Thin: parse, call the volume
 * operations (src/volumes/volume-ops.ts), print.
 *
 * One path to the state (#9 §6): with a server running, each command is a request on its control socket
 * and the server does the work (a loop-backed or layered volume is read through the server's own mount,
 * which a managed plugin's mount namespace hides from the host); with none, the CLI does the same work
 * itself while holding the server lock (src/cli/client.ts).
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { parseSize } from '../volumes/options.js';
import { withVolumeOps } from './client.js';
import { humanSize, table } from './format.js';
import { withProgress, writeOut } from './progress.js';

/** Registers `tsvol volume`. */
export function registerVolume(program: Command): void {
  const volume = program.command('volume').description('volumes: list, inspect, export, import, commit, clone, resize');
  volume
    .command('ls')
    .option('--json', 'machine-readable output')
    .description('list volumes')
    .action(async (opts: { json?: boolean }) => {
      await withVolumeOps(loadConfig(), async (ops) => {
        const infos = await ops.ls();
        if (opts.json) return void process.stdout.write(`${JSON.stringify(infos, null, 2)}\n`);
        process.stdout.write(
          table([
            ['NAME', 'KIND', 'LIMIT', 'MOUNTS', 'CREATED'],
            ...infos.map((i) => [i.name, String(i.status.kind), typeof i.status.limit === 'number' ? humanSize(i.status.limit) : '-', String(i.status.mounts), i.createdAt]),
          ]),
        );
      });
    });
  volume
    .command('inspect')
    .argument('<name>', 'volume name')
    .option('--json', 'machine-readable output (the default; kept for symmetry)')
    .description("a volume's details and its usage, measured now")
    .action(async (name: string) => {
      await withVolumeOps(loadConfig(), async (ops) => {
        process.stdout.write(`${JSON.stringify(await ops.inspect(name), null, 2)}\n`);
      });
    });
  volume
    .command('export')
    .argument('<name>', 'volume name')
    .option('-o, --output <file>', 'write to a file instead of standard output')
    .option('--gzip', 'compress with gzip')
    .description("the volume's contents as a tar stream (a volume in use is exported as it is now)")
    .action(async (name: string, opts: { output?: string; gzip?: boolean }) => {
      await withVolumeOps(loadConfig(), (ops) =>
        ops.export(name, { gzip: opts.gzip === true }, async (archive, notice) => {
          if (notice !== undefined) process.stderr.write(`tsvol: ${notice}\n`);
          await writeOut(archive, opts.output);
        }),
      );
    });
  volume
    .command('commit')
    .argument('<name>', 'volume name')
    .option('--tag <tag>', 'also name the new layer')
    .description("a new read-only layer from the volume's current state (a layered volume: on top of its layer)")
    .action(async (name: string, opts: { tag?: string }) => {
      const layer = await withVolumeOps(loadConfig(), (ops) => ops.commit(name, opts.tag === undefined ? {} : { tag: opts.tag }));
      process.stdout.write(`${layer}\n`);
    });
  volume
    .command('import')
    .argument('<name>', 'the new volume')
    .argument('<file>', 'a tar, plain or gzip; - for standard input')
    .description('a new volume from a tar (refuses an existing name)')
    .action(async (name: string, file: string) => {
      // Opened here, synchronously, so a missing file is an error now and not an unhandled stream event.
      const fd = file === '-' ? undefined : fs.openSync(file, 'r');
      const input = fd === undefined ? process.stdin : fs.createReadStream('', { fd, highWaterMark: 1 << 20 });
      const total = fd === undefined ? undefined : fs.fstatSync(fd).size;
      const r = await withVolumeOps(loadConfig(), (ops) => ops.import(name, withProgress('importing', input as AsyncIterable<Buffer>, total)));
      process.stdout.write(`${r.name}\n`);
    });
  volume
    .command('resize')
    .argument('<name>', 'a sized volume (created with -o size=)')
    .argument('<size>', 'its new size, such as 20G (as size=); volumes grow, never shrink')
    .description('grow a sized volume to SIZE, online if it is in use (the same size again is a no-op)')
    .action(async (name: string, size: string) => {
      // Parsed here, so a bad size is refused before the server is asked; exactly SIZE: larger is refused too.
      const bytes = parseSize(size);
      const capacity = await withVolumeOps(loadConfig(), (ops) => ops.resize(name, { required: bytes, limit: bytes }));
      process.stdout.write(`${capacity}\n`); // bytes, for scripts
    });
  volume
    .command('clone')
    .argument('<src>', 'the volume to copy')
    .argument('<dst>', 'the new volume')
    .description('a new volume with a full copy of another (same as docker volume create -o from=SRC)')
    .action(async (src: string, dst: string) => {
      await withVolumeOps(loadConfig(), (ops) => ops.clone(src, dst));
      process.stdout.write(`${dst}\n`);
    });
}
