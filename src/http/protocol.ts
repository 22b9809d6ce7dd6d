/**
 * Docker's VolumeDriver protocol, in one place: every endpoint, its request schema and its reply. Handlers
 * are decode → call → encode (go-plugins-helpers api.go). Docker's casing (Name, Mountpoint, Err) stays in
 * http/. What dockerd really sends (shared/DOCKER-FACTS.md): POST, JSON body, no Content-Type, `null` for
 * empty maps, Get before Create, random mount IDs that `docker cp` re-uses.
 */
import { z } from 'zod';
import { validateDockerMountId } from '../volumes/names.js';
import type { VolumeInfo, VolumeService, VolumeSummary } from '../volumes/volume-service.js';

/** A volume on the wire. */
export interface WireVolume {
  Name: string;
  Mountpoint: string;
  CreatedAt?: string;
  Status?: Readonly<Record<string, unknown>>;
}

/** One endpoint: its path, the schema of its body, and the call it makes. */
export interface Route {
  readonly path: string;
  /** Short name for logs (`create`). */
  readonly op: string;
  readonly schema: z.ZodType;
  /** The reply: an object to encode, or JSON already encoded (memoized replies). */
  handle(body: unknown): Promise<Record<string, unknown> | string> | Record<string, unknown> | string;
}

/** Names are checked by the service; the schema only insists on a string of sane length. */
const name = z.string({ error: 'Name must be a string' }).max(4096, 'Name is too long');
const named = z.object({ Name: name });
/**
 * Create options, decoded straight into a Map (#9 §4): their keys come from the caller, so they never
 * index a plain object. Not z.record: zod 4 silently drops a `__proto__` key (an option the caller gave
 * would vanish instead of being refused) and builds a plain object. JSON.parse made every key, `__proto__`
 * included, an own property, so Object.entries sees them all. Go encodes an empty map as null.
 */
const opts = z.unknown().transform((value, ctx): Map<string, string> => {
  const out = new Map<string, string>();
  if (value === null || value === undefined) return out;
  if (typeof value !== 'object' || Array.isArray(value)) {
    ctx.addIssue({ code: 'custom', message: 'Opts must be an object of strings' });
    return out;
  }
  for (const [key, v] of Object.entries(value as object) as [string, unknown][]) {
    if (typeof v === 'string') out.set(key, v);
    else ctx.addIssue({ code: 'custom', message: 'option values must be strings', path: [key] });
  }
  return out;
});
const create = z.object({ Name: name, Opts: opts.optional() });
const mountReq = z.object({
  Name: name,
  // Older engines sent no ID; they then hold the volume as one anonymous consumer. The service checks
  // the ID's form (src/volumes/names.ts validateMountId); the schema only bounds what is read.
  ID: z.string({ error: 'ID must be a string' }).max(4096, 'ID is too long').optional(),
});
/** Activate, List and Capabilities take no arguments: dockerd sends `null` or `{}`. */
const none = z.unknown();

function wireVolume(v: VolumeSummary): WireVolume {
  return { Name: v.name, Mountpoint: v.mountpoint, CreatedAt: v.createdAt };
}

function wireVolumeWithStatus(v: VolumeInfo): WireVolume {
  return { ...wireVolume(v), Status: v.status };
}

/**
 * The routes of a volume driver backed by `svc`. `scope` is what Capabilities answers: `local`, or
 * `global` in cluster mode (#14: dockerd then treats a volume as one object cluster-wide, and Swarm
 * schedules tasks on any node with it).
 */
export function volumeDriverRoutes(svc: VolumeService, scope: 'local' | 'global' = 'local'): Route[] {
  const capabilities = JSON.stringify({ Capabilities: { Scope: scope } });
  // A VolumeInfo never changes (a new one is made for every change), so its encoded Get reply is kept.
  const getReplies = new WeakMap<VolumeInfo, string>();
  const encodeGet = (v: VolumeInfo): string => {
    let json = getReplies.get(v);
    if (json === undefined) {
      json = JSON.stringify({ Volume: wireVolumeWithStatus(v), Err: '' });
      getReplies.set(v, json);
    }
    return json;
  };
  return [
    { path: '/Plugin.Activate', op: 'activate', schema: none, handle: () => ({ Implements: ['VolumeDriver'] }) },
    {
      path: '/VolumeDriver.Capabilities',
      op: 'capabilities',
      schema: none,
      handle: () => capabilities,
    },
    {
      path: '/VolumeDriver.Create',
      op: 'create',
      schema: create,
      handle: async (b) => {
        const req = b as z.infer<typeof create>;
        await svc.create(req.Name, req.Opts ?? new Map<string, string>());
        return { Err: '' };
      },
    },
    {
      path: '/VolumeDriver.Remove',
      op: 'remove',
      schema: named,
      handle: async (b) => {
        await svc.remove((b as z.infer<typeof named>).Name);
        return { Err: '' };
      },
    },
    {
      path: '/VolumeDriver.Mount',
      op: 'mount',
      schema: mountReq,
      handle: async (b) => {
        const req = b as z.infer<typeof mountReq>;
        validateDockerMountId(req.ID ?? ''); // never one of tsvol's own holds (CSI publishes, CLI requests)
        return { Mountpoint: await svc.mount(req.Name, req.ID ?? ''), Err: '' };
      },
    },
    {
      path: '/VolumeDriver.Unmount',
      op: 'unmount',
      schema: mountReq,
      handle: async (b) => {
        const req = b as z.infer<typeof mountReq>;
        validateDockerMountId(req.ID ?? ''); // releases only holds the Docker protocol took
        await svc.unmount(req.Name, req.ID ?? '');
        return { Err: '' };
      },
    },
    {
      path: '/VolumeDriver.Path',
      op: 'path',
      schema: named,
      handle: (b) => ({ Mountpoint: svc.path((b as z.infer<typeof named>).Name), Err: '' }),
    },
    {
      path: '/VolumeDriver.Get',
      op: 'get',
      schema: named,
      handle: (b) => encodeGet(svc.get((b as z.infer<typeof named>).Name)),
    },
    {
      path: '/VolumeDriver.List',
      op: 'list',
      schema: none,
      handle: () => ({ Volumes: svc.list().map(wireVolume), Err: '' }),
    },
  ];
}
