#!/usr/bin/env node
/** Entry point of the plugin server: `node dist/main.js`, configured by TSVOL_* environment variables. */
import { loadConfig } from './config.js';
import { describeError } from './errors.js';
import { startServer } from './server.js';

try {
  await startServer(loadConfig());
} catch (err) {
  process.stderr.write(`tsvol: cannot start: ${describeError(err)}\n`);
  process.exit(1);
}
