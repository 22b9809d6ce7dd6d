/**
 * One VolumeStore contract, run against both implementations (as containerd runs one suite against every
 * snapshotter): local (SQLite, src/store/meta-store.ts) and cluster (the shared filesystem, src/store/
 * cluster-store.ts, #14), the latter on a real FUSE mount per node. The cases: create, get, list, put and
 * delete; holds with exact counts and prototype-named IDs; durability across a reopen; two store
 * instances writing on one root at once (two "nodes") losing nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { nanoid } from 'nanoid';
import { openClusterStore } from '../src/store/cluster-store.js';
import { createLayout, type Layout } from '../src/store/layout.js';
import { createVolumeStore, type VolumeRecord, type VolumeStore } from '../src/store/volume-store.js';
import { captureLogger, makeSharedRoot } from './helpers/cluster.js';
import { requireRoot, tempDir } from './helpers/server.js';

/** A store opened for one node, with the layout it works in. */
interface Opened {
  readonly store: VolumeStore;
  readonly layout: Layout;
}

/** A data root one or more store instances open. */
interface Root {
  /** Opens a store on the root as node `node` (local: every instance is the same one host). */
  open(node: string): Promise<Opened>;
  cleanup(): void;
}

interface Impl {
  readonly name: 'local' | 'cluster';
  setup(t: ExecutionContext): Root | undefined;
}

const IMPLS: Impl[] = [
  {
    name: 'local',
    setup() {
      const dir = tempDir('tsvol-contract-');
      const data = path.join(dir, 'data');
      return {
        async open() {
          const layout = createLayout(data);
          return { store: createVolumeStore(layout), layout };
        },
        cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
      };
    },
  },
  {
    name: 'cluster',
    setup(t) {
      if (!requireRoot(t)) return undefined;
      const shared = makeSharedRoot('tsvol-contract-');
      return {
        async open(node) {
          const layout = createLayout(shared.mountOf(node), node);
          const store = await openClusterStore({ layout, leaseMs: 3000, log: captureLogger().log, leasePollMs: 50 });
          return { store, layout };
        },
        cleanup: () => shared.cleanup(),
      };
    },
  },
];

/** A record as the service makes one. */
function record(name: string, holds: [string, number][] = []): VolumeRecord {
  return {
    name,
    createdAt: new Date().toISOString(),
    spec: { kind: 'named', uid: 1000, mode: 0o750 },
    options: Object.assign(Object.create(null) as Record<string, string>, { uid: '1000', mode: '0750' }),
    holds: new Map(holds),
    incarnation: nanoid(16),
  };
}

/**
 * Creates volume `rec` as the service does: its directory built (in cluster mode staged with its record,
 * then published by one rename), then the record put.
 */
async function create(o: Opened, rec: VolumeRecord): Promise<void> {
  if (o.store.stageRecord !== undefined) {
    const stage = path.join(o.layout.tmpDir, `new-${nanoid(8)}`);
    fs.mkdirSync(path.join(stage, '_data'), { recursive: true });
    o.store.stageRecord(rec, stage);
    fs.renameSync(stage, o.layout.volumeDir(rec.name));
  } else {
    fs.mkdirSync(o.layout.dataDir(rec.name), { recursive: true });
  }
  await o.store.put(rec);
}

/** Every node's holds on `name` as `store` sees them: its own (get) and, in cluster mode, the others'. */
function allHolds(store: VolumeStore, name: string): Map<string, number> {
  const out = new Map(store.get(name)?.holds ?? []);
  for (const h of store.holdsElsewhere(name)) for (const [id, n] of h.holds) out.set(id, (out.get(id) ?? 0) + n);
  return out;
}

/** The fields of a record the contract keeps (holds compared apart). */
function shape(rec: VolumeRecord | undefined): unknown {
  if (rec === undefined) return undefined;
  return { name: rec.name, createdAt: rec.createdAt, spec: rec.spec, options: { ...rec.options }, incarnation: rec.incarnation };
}

function contract(title: string, fn: (t: ExecutionContext, root: Root) => Promise<void>): void {
  for (const impl of IMPLS) {
    test.serial(`${impl.name}: ${title}`, async (t) => {
      const root = impl.setup(t);
      if (root === undefined) return;
      try {
        await fn(t, root);
      } finally {
        root.cleanup();
      }
    });
  }
}

contract('create, get, list, put and delete', async (t, root) => {
  const o = await root.open('n1');
  try {
    t.is(o.store.get('db'), undefined);
    const rec = record('db');
    await create(o, rec);
    t.deepEqual(shape(o.store.get('db')), shape(rec));
    t.deepEqual([...o.store.get('db')!.holds], []);
    await create(o, record('web'));
    t.deepEqual([...o.store.list()].map((r) => r.name).sort(), ['db', 'web']);
    t.is(o.store.size, 2);
    // Options keep a null prototype: keys came from a request.
    t.is(Object.getPrototypeOf(o.store.get('db')!.options), null);
    await o.store.put({ ...o.store.get('db')!, holds: new Map([['m1', 1]]) });
    t.deepEqual([...o.store.get('db')!.holds], [['m1', 1]]);
    await o.store.put({ ...o.store.get('db')!, holds: new Map() });
    const moved = await o.store.delete('db');
    // Local: the files stay for the kind to destroy; cluster: they moved out of volumes/ with the record.
    t.is(moved === undefined, o.store.scope === 'local');
    t.is(o.store.get('db'), undefined);
    t.deepEqual([...o.store.list()].map((r) => r.name), ['web']);
    t.is(o.store.size, 1);
  } finally {
    await o.store.close();
  }
});

contract('holds keep exact counts, and IDs named after Object.prototype are ordinary IDs', async (t, root) => {
  const o = await root.open('n1');
  try {
    await create(o, record('db'));
    const holds: [string, number][] = [
      ['__proto__', 2],
      ['constructor', 1],
      ['', 1],
      ['a'.repeat(64), 3],
    ];
    await o.store.put({ ...o.store.get('db')!, holds: new Map(holds) });
    t.deepEqual([...o.store.get('db')!.holds].sort(), [...holds].sort());
    await o.store.put({ ...o.store.get('db')!, holds: new Map([['constructor', 1]]) });
    t.deepEqual([...o.store.get('db')!.holds], [['constructor', 1]]);
  } finally {
    await o.store.close();
  }
});

contract('records, holds and meta survive closing and reopening the store', async (t, root) => {
  const first = await root.open('n1');
  await create(first, record('db'));
  await create(first, record('logs'));
  await first.store.put({ ...first.store.get('db')!, holds: new Map([['m1', 1], ['m2', 2]]) });
  await first.store.putMeta('bootId', 'boot-1');
  const before = shape(first.store.get('db'));
  await first.store.close();
  const again = await root.open('n1');
  try {
    t.deepEqual(shape(again.store.get('db')), before);
    t.deepEqual([...again.store.get('db')!.holds].sort(), [['m1', 1], ['m2', 2]]);
    t.deepEqual([...again.store.list()].map((r) => r.name).sort(), ['db', 'logs']);
    t.is(again.store.getMeta('bootId'), 'boot-1');
  } finally {
    await again.store.close();
  }
});

contract('two store instances writing on one root at once lose nothing', async (t, root) => {
  const a = await root.open('n1');
  const b = await root.open('n2');
  const names = (p: string) => Array.from({ length: 12 }, (_, i) => `${p}${i}`);
  try {
    // Interleaved: each instance creates its volumes and holds each of them, all at once.
    await Promise.all([
      ...names('a').map(async (n) => {
        await create(a, record(n));
        await a.store.put({ ...a.store.get(n)!, holds: new Map([[`id-${n}`, 1]]) });
      }),
      ...names('b').map(async (n) => {
        await create(b, record(n));
        await b.store.put({ ...b.store.get(n)!, holds: new Map([[`id-${n}`, 2]]) });
      }),
    ]);
  } finally {
    await a.store.close();
    await b.store.close();
  }
  // Each node, reopened, finds every volume and every hold, its own and (cluster mode) the other's.
  for (const node of ['n1', 'n2']) {
    const o = await root.open(node);
    try {
      t.deepEqual([...o.store.list()].map((r) => r.name).sort(), [...names('a'), ...names('b')].sort(), node);
      for (const n of names('a')) t.deepEqual([...allHolds(o.store, n)], [[`id-${n}`, 1]], `${node} ${n}`);
      for (const n of names('b')) t.deepEqual([...allHolds(o.store, n)], [[`id-${n}`, 2]], `${node} ${n}`);
    } finally {
      await o.store.close();
    }
  }
});
