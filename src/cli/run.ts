/**
 * Runs a commander program: errors go to stderr as one line naming the problem, with exit code 1
 * (2 for usage errors, as commander does).
 */
import type { Command } from 'commander';
import { describeError } from '../errors.js';

/** Parses argv and runs the matching command, turning thrown errors into `tsvol: <message>` and exit 1. */
export async function runCli(program: Command, argv: readonly string[]): Promise<void> {
  program.exitOverride();
  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('commander.')) {
      // commander already printed the message (or help); keep its exit code.
      process.exitCode = (err as { exitCode?: number }).exitCode ?? 2;
      return;
    }
    process.stderr.write(`tsvol: ${describeError(err)}\n`);
    process.exitCode = 1;
  }
}
