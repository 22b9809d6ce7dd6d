/**
 * Volume usage (bytes and files) for Status, computed off the request path and cached (#6): Get returns
 * the last figure at once and, when the volume is held (mounted) and the figure older than USAGE_TTL_MS,
 * queues a background refresh; the queue is worked one volume at a time. So Get stays a memory read
 * however large or many the volumes.
 *
 * A volume's files change only while it is held (#13): the last Unmount measures it again (refresh), and
 * a figure taken since then stays exact, so a Get of a volume nobody holds never walks it again. A fresh
 * volume's build says what it holds (an empty one: nothing), which is its first figure (seed): a `docker
 * volume inspect` after `docker volume create` walks nothing.
 */
import { errnoCode } from '../errors.js';
import { Beneath } from '../sys/beneath.js';

/** How old a held volume's cached figure may be before a Get starts a refresh. */
export const USAGE_TTL_MS = 5000;

/** One measurement. Immutable: a new figure is a new object (callers memoize on identity). */
export interface Usage {
  readonly bytes: number;
  readonly files: number;
  /** RFC 3339 time of the measurement. */
  readonly measured: string;
}

/** The cache. */
export interface UsageCache {
  /**
   * The cached figure (possibly stale or undefined); starts a refresh with `measure` if there is none, or
   * if the volume is `held` and the figure is older than USAGE_TTL_MS.
   */
  peek(name: string, measure: () => Promise<{ bytes: number; files: number }>, held: boolean): Usage | undefined;
  /** Records what a volume holds as measured now, unless a figure is cached (a build that knows: seed). */
  seed(name: string, figure: { readonly bytes: number; readonly files: number }): void;
  /**
   * Starts a new measurement now if a figure is cached (the volume just changed: its last user went).
   * A volume nobody asked about is not walked. Errors go to onError.
   */
  refresh(name: string, measure: () => Promise<{ bytes: number; files: number }>): void;
  /** Measures now and caches the result (CLI, tests). */
  measure(name: string, measure: () => Promise<{ bytes: number; files: number }>): Promise<Usage>;
  forget(name: string): void;
}

/** Creates a usage cache; `onError` hears failed background measurements. */
export function createUsageCache(onError: (name: string, err: unknown) => void): UsageCache {
  const figures = new Map<string, { usage: Usage; at: number }>();
  const inflight = new Map<string, Promise<Usage>>();

  function start(name: string, measure: () => Promise<{ bytes: number; files: number }>): Promise<Usage> {
    const running = inflight.get(name);
    if (running !== undefined) return running;
    const job = measure()
      .then((m) => {
        const usage: Usage = { ...m, measured: new Date().toISOString() };
        figures.set(name, { usage, at: Date.now() });
        return usage;
      })
      .finally(() => inflight.delete(name));
    inflight.set(name, job);
    return job;
  }

  // Background measurements run one at a time, in the order asked: a burst of Gets over many volumes
  // (docker volume ls -q | xargs docker volume inspect) queues names instead of starting a walk each, so the
  // request path keeps the event loop and the thread pool to itself.
  const queue = new Map<string, () => Promise<{ bytes: number; files: number }>>();
  let pumping = false;
  function schedule(name: string, measure: () => Promise<{ bytes: number; files: number }>): void {
    queue.set(name, measure);
    if (!pumping) void pump();
  }
  async function pump(): Promise<void> {
    pumping = true;
    try {
      for (let next = queue.entries().next(); !next.done; next = queue.entries().next()) {
        const [name, measure] = next.value;
        queue.delete(name);
        // A measurement already running (the CLI's) may predate what this one was asked for: wait, then measure.
        await inflight.get(name)?.catch(() => undefined);
        await start(name, measure).catch((err: unknown) => onError(name, err));
      }
    } finally {
      pumping = false;
    }
  }

  return {
    peek(name, measure, held) {
      const cached = figures.get(name);
      if (cached === undefined || (held && Date.now() - cached.at > USAGE_TTL_MS)) schedule(name, measure);
      return cached?.usage;
    },
    seed(name, figure) {
      if (figures.has(name) || inflight.has(name)) return;
      figures.set(name, { usage: { bytes: figure.bytes, files: figure.files, measured: new Date().toISOString() }, at: Date.now() });
    },
    refresh(name, measure) {
      if (figures.has(name)) schedule(name, measure);
    },
    measure: (name, measure) => start(name, measure),
    forget(name) {
      figures.delete(name);
      queue.delete(name);
    },
  };
}

/**
 * Walks `root`, summing allocated bytes (st_blocks, so sparse files count what they use) and counting
 * entries; each inode is counted once (hardlinks). The walk goes by directory fds beneath the pinned root
 * (src/sys/beneath.ts), so a container swapping a directory for a symlink meanwhile cannot make it count
 * anything outside the volume, and mounts inside are not crossed (the kernel refuses: EXDEV). It yields to
 * the event loop every few hundred entries, so the server keeps serving.
 */
export async function measureTree(root: string | Beneath): Promise<{ bytes: number; files: number }> {
  const seen = new Set<bigint>();
  let bytes = 0;
  let files = 0;
  let work = 0;
  async function walk(dir: Beneath): Promise<void> {
    const rootDev = dir.lstat('')!.dev;
    for (const d of dir.readdir()) {
      if (++work % 256 === 0) await new Promise((r) => setImmediate(r));
      // undefined: deleted by the container while we walked; it no longer counts.
      const st = dir.lstat(d.name);
      if (st === undefined || st.dev !== rootDev) continue;
      files++;
      if (st.nlink > 1 && !st.isDirectory()) {
        if (seen.has(st.ino)) continue;
        seen.add(st.ino);
      }
      bytes += st.blocks * 512;
      if (!st.isDirectory()) continue;
      let sub: Beneath;
      try {
        sub = dir.sub(d.name);
      } catch (err) {
        // Gone, replaced by a non-directory, or a mount appeared meanwhile: nothing of ours to count below.
        if (['ENOENT', 'ENOTDIR', 'ELOOP', 'EXDEV'].includes(errnoCode(err) ?? '')) continue;
        throw err;
      }
      try {
        await walk(sub);
      } finally {
        sub.close();
      }
    }
  }
  // A Beneath given by the caller (a pinned bind-style device) stays the caller's to close.
  const top = typeof root === 'string' ? Beneath.open(root) : root;
  try {
    await walk(top);
  } finally {
    if (top !== root) top.close();
  }
  return { bytes, files };
}
