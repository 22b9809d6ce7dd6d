/** `tsvol serve`: the same as `node dist/main.js`. */
import type { Command } from 'commander';
import { loadConfig } from '../config.js';

/** Registers `tsvol serve`. */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the VolumeDriver server (configured by TSVOL_* environment variables)')
    .action(async () => {
      // Loaded here: the server (Express, zod) costs ~200 ms of start-up that no other command needs.
      const { startServer } = await import('../server.js');
      await startServer(loadConfig());
    });
}
