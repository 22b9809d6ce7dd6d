/** The KindContext a service hands its kinds (./kind.ts). */
import path from 'node:path';
import type { Config } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Layout } from '../../store/layout.js';
import type { VolumeRecord } from '../../store/volume-store.js';
import type { Beneath } from '../../sys/beneath.js';
import { createBindRoots } from '../bind-roots.js';
import { createDeleter } from '../deleter.js';
import type { LayeredVolumes } from '../layered.js';
import { probeSizeBacking, type SizeBacking } from '../size-limit.js';
import { kindOf } from './index.js';
import type { KindContext } from './kind.js';

/** What the context is made of; the service's own parts (records, locks) come as functions. */
export interface KindContextDeps {
  readonly config: Config;
  readonly layout: Layout;
  readonly log: Logger;
  /** How sized volumes are made here; probed from the data root on first use when not given. */
  readonly sizeBacking?: SizeBacking;
  /** The layer manager for layer= volumes; opened on the data root when not given. */
  readonly layered: LayeredVolumes;
  mustGet(name: string): VolumeRecord;
  withLock<T>(name: string, work: () => Promise<T>): Promise<T>;
  holdDuring<T>(name: string, fn: () => Promise<T>): Promise<T>;
  /** Cluster mode: the shared root pinned (KindContext.sharedRoot). */
  readonly sharedRoot: Beneath | undefined;
  /** Cluster mode: VolumeStore.stageRecord. */
  readonly stageRecord: ((rec: VolumeRecord, dir: string) => void) | undefined;
}

/** Builds the context: one per service. */
export function createKindContext(deps: KindContextDeps): KindContext {
  const { config, layout, log } = deps;
  // Probed on the first sized Create, not at start-up: most servers and every CLI command never need it.
  let sizing = deps.sizeBacking;
  return {
    config,
    layout,
    log,
    // tsvol's own directories are never a bind-style device, nor inside or above one (bind-roots.ts).
    bindRoots: createBindRoots(config.bindRoots, config.hostRoot, [layout.root, ...(config.mountsRoot === undefined ? [] : [config.mountsRoot])]),
    layered: deps.layered,
    sizeBacking: () => (sizing ??= probeSizeBacking(layout.root)),
    // Loop devices: the host's devtmpfs (the managed plugin's own /dev has no loop nodes; src/sys/loop.ts).
    devDir: path.join(config.hostRoot ?? '/', 'dev'),
    umask: process.umask(),
    deleter: createDeleter(layout, log),
    mustGet: deps.mustGet,
    withLock: deps.withLock,
    holdDuring: deps.holdDuring,
    sharedRoot: deps.sharedRoot,
    stageRecord: deps.stageRecord,
    kindOf,
  };
}
