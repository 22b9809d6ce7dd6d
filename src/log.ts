/**
 * The pino root logger. JSON lines on stdout: dockerd copies a managed plugin's stdout into its own log
 * with `plugin=<id>`. Modules take child loggers with fields, never interpolated messages.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

/** Creates the root logger at `level` writing JSON lines to stdout. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
