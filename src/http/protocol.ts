/**
 * Docker's VolumeDriver protocol, in one place: every endpoint, its request schema and its reply. Handlers
 * are decode → call → encode (go-plugins-helpers api.go). Docker's casing (Name, Mountpoint, Err) stays in
 * http/. What dockerd really sends (shared/DOCKER-FACTS.md): POST, JSON body, no Content-Type, `null` for
 * empty maps, Get before Create, random mount IDs that `docker cp` re-uses.
 */
import { z } from 'zod';
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
const create = z.object({
  Name: name,
  // Go encodes an empty map as null.
  Opts: z.record(z.string(), z.string({ error: 'option values must be strings' })).nullish(),
});
const mountReq = z.object({
  Name: name,
  // Older engines sent no ID; they then hold the volume as one anonymous consumer.
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

/** The routes of a volume driver backed by `svc`. */
export function volumeDriverRoutes(svc: VolumeService): Route[] {
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
      handle: () => ({ Capabilities: { Scope: 'local' } }),
    },
    {
      path: '/VolumeDriver.Create',
      op: 'create',
      schema: create,
      handle: async (b) => {
        const req = b as z.infer<typeof create>;
        await svc.create(req.Name, req.Opts ?? {});
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
        return { Mountpoint: await svc.mount(req.Name, req.ID ?? ''), Err: '' };
      },
    },
    {
      path: '/VolumeDriver.Unmount',
      op: 'unmount',
      schema: mountReq,
      handle: async (b) => {
        const req = b as z.infer<typeof mountReq>;
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
