/**
 * One "node" of the cluster race test (test/store-cluster.test.ts), on a worker thread so that two nodes'
 * syscalls truly run at once: opens the cluster store on its own FUSE mount of the shared root and runs
 * random Creates, Mounts (held for a moment, then Unmounted) and Removes on a few names. While it holds a
 * volume it checks, again and again, that the volume it mounted still exists (same incarnation): a
 * removal that let a live hold through would show here as a violation.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { nanoid } from 'nanoid';
import { pino } from 'pino';
import { openClusterStore } from '../../src/store/cluster-store.js';
import { createLayout } from '../../src/store/layout.js';
import type { VolumeRecord } from '../../src/store/records.js';

interface Job {
  readonly data: string;
  readonly node: string;
  readonly names: readonly string[];
  readonly ops: number;
  readonly seed: number;
}

const job = workerData as Job;
let state = job.seed >>> 0 || 1;
/** xorshift32: reproducible from the seed. */
function rand(n: number): number {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) % n;
}

const stats = { creates: 0, mounts: 0, mountRefused: 0, removes: 0, removeRefused: 0, violations: [] as string[] };
const layout = createLayout(job.data, job.node);
const store = await openClusterStore({ layout, leaseMs: 10_000, log: pino({ level: 'silent' }) });

/** A refusal the protocol gives (in use, being removed, removed meanwhile); anything else is a failure. */
function refusedOrThrow(err: unknown): void {
  const code = (err as { code?: unknown }).code;
  if (code !== 'TSVOL_CONFLICT' && code !== 'TSVOL_NOT_FOUND' && code !== 'TSVOL_IN_USE') throw err;
}

async function create(name: string): Promise<void> {
  if (store.get(name) !== undefined) return;
  const rec: VolumeRecord = { name, createdAt: new Date().toISOString(), spec: { kind: 'named' }, options: Object.create(null) as Record<string, string>, holds: new Map(), incarnation: nanoid(16) };
  const stage = path.join(layout.tmpDir, `new-${nanoid(8)}`);
  fs.mkdirSync(path.join(stage, '_data'), { recursive: true });
  store.stageRecord!(rec, stage);
  try {
    fs.renameSync(stage, layout.volumeDir(name));
    stats.creates++;
  } catch (err) {
    // The other node published the name first.
    fs.rmSync(stage, { recursive: true, force: true });
    if ((err as { code?: string }).code !== 'ENOTEMPTY' && (err as { code?: string }).code !== 'EEXIST') throw err;
  }
}

async function mountHoldUnmount(name: string): Promise<void> {
  const rec = store.get(name);
  if (rec === undefined) return;
  const id = nanoid(8);
  try {
    await store.put({ ...rec, holds: new Map([...rec.holds, [id, 1]]) });
  } catch (err) {
    refusedOrThrow(err);
    stats.mountRefused++; // a removal in progress, or removed meanwhile: refused, as it must be
    return;
  }
  stats.mounts++;
  // Held: the volume must stay the one mounted until it is unmounted.
  for (let i = 0, n = rand(4); i <= n; i++) {
    await new Promise((r) => setImmediate(r));
    const now = store.get(name);
    if (now?.incarnation !== rec.incarnation) stats.violations.push(`${job.node}: "${name}" (${rec.incarnation}) removed while held by ${id}`);
  }
  const now = store.get(name);
  if (now === undefined || now.incarnation !== rec.incarnation) {
    stats.violations.push(`${job.node}: "${name}" (${rec.incarnation}) removed while held by ${id}`);
    return;
  }
  const holds = new Map(now.holds);
  holds.delete(id);
  try {
    await store.put({ ...now, holds });
  } catch (err) {
    refusedOrThrow(err);
    stats.violations.push(`${job.node}: "${name}" (${rec.incarnation}) removed before ${id} unmounted`);
  }
}

async function remove(name: string): Promise<void> {
  if (store.get(name) === undefined) return;
  let moved: string | undefined;
  try {
    moved = await store.delete(name);
  } catch (err) {
    refusedOrThrow(err);
    stats.removeRefused++; // held by the other node: refused, as it must be
    return;
  }
  if (moved !== undefined) {
    stats.removes++;
    fs.rmSync(moved, { recursive: true, force: true });
  }
}

for (let i = 0; i < job.ops; i++) {
  const name = job.names[rand(job.names.length)]!;
  const op = rand(10);
  if (op < 2) await create(name);
  else if (op < 7) await mountHoldUnmount(name);
  else await remove(name);
}
await store.close();
parentPort!.postMessage(stats);
