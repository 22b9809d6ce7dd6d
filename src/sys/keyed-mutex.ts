/**
 * A per-key async mutex: operations on one key (a volume, a container) run one at a time, in arrival order,
 * while operations on other keys proceed (moby's VolumeStore.locks). An entry exists only while the key is busy, so
 * memory does not grow with the number of volumes.
 */

/** Serialises async work per key. */
export interface KeyedMutex {
  run<T>(key: string, work: () => Promise<T> | T): Promise<T>;
  /** Keys with work queued or running (for tests and shutdown). */
  readonly busyKeys: number;
}

/** Creates an empty keyed mutex. */
export function createKeyedMutex(): KeyedMutex {
  const tails = new Map<string, Promise<unknown>>();
  return {
    run<T>(key: string, work: () => Promise<T> | T): Promise<T> {
      const prev = tails.get(key) ?? Promise.resolve();
      const result = prev.then(work, work);
      const tail = result.then(
        () => undefined,
        () => undefined,
      );
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return result;
    },
    get busyKeys() {
      return tails.size;
    },
  };
}
