/**
 * A progress bar on stderr for long imports and exports, drawn only when stderr is a terminal (never
 * into a pipe or a log). With a known total it shows a bar and a percentage; otherwise bytes so far.
 */
import fs from 'node:fs';

function mb(n: number): string {
  return `${(n / 1e6).toFixed(1)} MB`;
}

/** Passes `input` through, counting bytes and redrawing a one-line bar at most 5 times a second. */
export async function* withProgress(label: string, input: AsyncIterable<Buffer>, total?: number): AsyncGenerator<Buffer> {
  const tty = process.stderr.isTTY === true;
  let done = 0;
  let last = 0;
  const draw = (): void => {
    if (total !== undefined && total > 0) {
      const frac = Math.min(1, done / total);
      const width = 30;
      const filled = Math.round(frac * width);
      process.stderr.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${Math.round(frac * 100)}% ${mb(done)}/${mb(total)}`);
    } else {
      process.stderr.write(`\r${label} ${mb(done)}`);
    }
  };
  for await (const chunk of input) {
    done += chunk.length;
    if (tty && Date.now() - last > 200) {
      last = Date.now();
      draw();
    }
    yield chunk;
  }
  if (tty) {
    draw();
    process.stderr.write('\n');
  }
}

/**
 * Writes a stream to `output` (chunks straight to the fd, with a progress bar on a terminal: a write
 * stream's async hops cost ~30% here) or to standard output (usually a pipe: back-pressure respected, no
 * progress bar mixed into the data).
 */
export async function writeOut(chunks: AsyncIterable<Buffer>, output: string | undefined, label = 'exporting'): Promise<void> {
  if (output !== undefined) {
    const fd = fs.openSync(output, 'w', 0o644);
    try {
      for await (const chunk of withProgress(label, chunks)) fs.writeSync(fd, chunk);
    } finally {
      fs.closeSync(fd);
    }
    return;
  }
  for await (const chunk of chunks) {
    if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once('drain', r));
  }
}
