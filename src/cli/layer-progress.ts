/**
 * Per-layer progress lines for `tsvol image pull` and `push`, the way docker draws them: one line per
 * layer (`<short digest>: Downloading 12.3MB/40.0MB`, `Already exists`, `Pull complete`), redrawn in place
 * at most 5 times a second. Drawn only when stderr is a terminal; otherwise nothing (a pipe or a log gets
 * the command's result lines only).
 */

const mb = (n: number): string => `${(n / 1e6).toFixed(1)}MB`;

/** The lines of one command. */
export interface LayerProgress {
  /** Adds a layer (`key`: its digest) with its first status. */
  add(key: string, status: string, total?: number): void;
  /** Bytes done of a layer: shown as `<verb> done/total`. */
  bytes(key: string, verb: string, done: number): void;
  /** A layer's final (or next) status. */
  status(key: string, status: string): void;
  /** Draws the last state and stops (leaves the lines on the terminal). */
  finish(): void;
}

/** Progress lines on stderr when it is a terminal (`tty` overrides, for tests), else a no-op. */
export function layerProgress(tty = process.stderr.isTTY === true): LayerProgress {
  const keys: string[] = [];
  const lines = new Map<string, { status: string; total: number | undefined }>();
  let drawn = 0;
  let last = 0;
  let timer: NodeJS.Timeout | undefined;
  const draw = (): void => {
    last = Date.now();
    timer = undefined;
    let out = drawn > 0 ? `\x1b[${drawn}A` : '';
    for (const k of keys) out += `\x1b[2K${k.replace(/^sha256:/, '').slice(0, 12)}: ${lines.get(k)!.status}\n`;
    drawn = keys.length;
    process.stderr.write(out);
  };
  const soon = (): void => {
    if (!tty || timer !== undefined) return;
    const wait = Math.max(0, 200 - (Date.now() - last));
    timer = setTimeout(draw, wait);
    timer.unref();
  };
  return {
    add(key, status, total) {
      if (!lines.has(key)) keys.push(key);
      lines.set(key, { status, total });
      soon();
    },
    bytes(key, verb, done) {
      const l = lines.get(key);
      if (l === undefined) return;
      l.status = l.total === undefined ? `${verb} ${mb(done)}` : `${verb} ${mb(done)}/${mb(l.total)}`;
      soon();
    },
    status(key, status) {
      const l = lines.get(key);
      if (l === undefined) return;
      l.status = status;
      soon();
    },
    finish() {
      if (timer !== undefined) clearTimeout(timer);
      if (tty && keys.length > 0) draw();
    },
  };
}
