/**
 * Keeps a layer gc out of an image load's window (#11): a load imports its layers one by one and only then
 * commits the image rows that hold them, so a gc in between would see the new layers held by nothing.
 * Loads share the barrier, a gc takes it alone; both run in the one process that owns the data root (the
 * server, or a `tsvol` command under the server lock), so an in-process barrier covers every writer.
 */

/** Shared work (loads) runs together; exclusive work (gc) waits for them and holds new ones back. */
export interface GcBarrier {
  shared<T>(fn: () => Promise<T>): Promise<T>;
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

/** A fresh barrier. */
export function createGcBarrier(): GcBarrier {
  let active = 0;
  let idle: (() => void)[] = [];
  let gate: Promise<void> = Promise.resolve();
  const settle = (): void => {
    if (active > 0) return;
    const waiting = idle;
    idle = [];
    for (const w of waiting) w();
  };
  return {
    async shared(fn) {
      await gate;
      active++;
      try {
        return await fn();
      } finally {
        active--;
        settle();
      }
    },
    async exclusive(fn) {
      const before = gate;
      let open!: () => void;
      gate = new Promise((r) => (open = r));
      try {
        await before;
        if (active > 0) await new Promise<void>((r) => idle.push(r));
        return await fn();
      } finally {
        open();
      }
    },
  };
}
