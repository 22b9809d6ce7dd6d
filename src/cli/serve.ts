/** `tsvol serve`: the same as `node dist/main.js`. */
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { startServer } from '../server.js';

/** Registers `tsvol serve`. */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the VolumeDriver server (configured by TSVOL_* environment variables)')
    .action(async () => {
      await startServer(loadConfig());
    });
}
