/**
 * `tsvol container …`: create, mount, diff, commit, rm (issue #5). Thin: parse, call the layer operations
 * (src/layers/layer-ops.ts), print. Each command is a request to the running server, or runs in-process
 * under the server lock when none answers (src/cli/client.ts), like `tsvol volume`.
 */
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { withLayerOps } from './client.js';

/** Registers `tsvol container`. */
export function registerContainer(program: Command): void {
  const c = program.command('container').description('writable copy-on-write layers on a layer chain');
  c.command('create')
    .argument('<name>', 'the container layer name')
    .requiredOption('--from <ref>', 'the layer (ID or name) or image (reference or ID) to build on')
    .description('make and mount a writable layer; prints the merged path')
    .action(async (name: string, opts: { from: string }) => {
      process.stdout.write(`${await withLayerOps(loadConfig(), (ops) => ops.createContainer(name, opts.from))}\n`);
    });
  c.command('mount')
    .argument('<name>')
    .description('prints the merged path, mounting it again if needed (after a reboot or an interrupted commit)')
    .action(async (name: string) => {
      process.stdout.write(`${await withLayerOps(loadConfig(), (ops) => ops.mountContainer(name))}\n`);
    });
  c.command('diff')
    .argument('<name>')
    .option('--json', 'machine-readable output')
    .description('changes since the base layer or the last commit, like docker diff (A added, C changed, D deleted)')
    .action(async (name: string, opts: { json?: boolean }) => {
      const changes = await withLayerOps(loadConfig(), (ops) => ops.diffContainer(name));
      process.stdout.write(opts.json ? `${JSON.stringify(changes, null, 2)}\n` : changes.map((ch) => `${ch.kind} ${ch.path}\n`).join(''));
    });
  c.command('commit')
    .argument('<name>')
    .description('turn the writable layer into a new read-only layer and continue on it; prints its ID')
    .action(async (name: string) => {
      process.stdout.write(`${(await withLayerOps(loadConfig(), (ops) => ops.commitContainer(name))).id}\n`);
    });
  c.command('rm')
    .argument('<name>')
    .description('unmount and discard the writable layer')
    .action(async (name: string) => {
      await withLayerOps(loadConfig(), (ops) => ops.removeContainer(name));
    });
}
