/**
 * The files of a cluster-mode root (#14; layout in src/store/layout.ts) and their strict parsers. Every
 * one of them may have been written by another node, by an older or newer tsvol, or by someone with write
 * access to the shared filesystem, so each is read below the pinned data root (src/sys/beneath.ts: no
 * symlink, `..` or other filesystem on the way, a regular file only, a bounded size) and parsed into
 * exactly the shape tsvol writes: unknown kinds, wrong types, bad names and extra mount IDs are refused,
 * never guessed at. What a parser refuses is reported with the file's path.
 */
import fs from 'node:fs';
import { errnoCode } from '../errors.js';
import type { Beneath } from '../sys/beneath.js';
import { isTempName } from '../sys/durable.js';
import { isMountId, isVolumeName, nullProtoRecord, type VolumeRecord, type VolumeSpec } from './records.js';

/** volumes/: one directory per volume. */
export const VOLUMES = 'volumes';

/** The format number of every file here; a file with another is refused (a newer tsvol wrote it). */
export const CLUSTER_FORMAT = 1;

/** Paths (relative to the data root) of one volume's files in cluster mode. */
export const clusterPaths = {
  volume: (name: string) => `${VOLUMES}/${name}`,
  record: (name: string) => `${VOLUMES}/${name}/record`,
  holdsDir: (name: string) => `${VOLUMES}/${name}/holds`,
  holds: (name: string, node: string) => `${VOLUMES}/${name}/holds/${node}`,
  removingDir: (name: string) => `${VOLUMES}/${name}/removing`,
  removing: (name: string, node: string) => `${VOLUMES}/${name}/removing/${node}`,
  nodeDir: (node: string) => `nodes/${node}`,
  lease: (node: string) => `nodes/${node}/lease`,
  meta: (node: string) => `nodes/${node}/meta`,
  tmp: (node: string) => `nodes/${node}/tmp`,
} as const;

/** Node IDs as config.ts allows them in cluster mode: one safe path component. */
const NODE_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/;
/** Instance IDs: nanoid's alphabet. */
const INSTANCE_RE = /^[A-Za-z0-9_-]{8,64}$/;

/** True if `node` can be a node ID (and so a file name under holds/, removing/ and nodes/). */
export function isNodeId(node: string): boolean {
  return NODE_RE.test(node);
}

/** Largest file read: a record, a holds file (thousands of 64-digit mount IDs), a lease. */
const MAX_FILE_BYTES = 1 << 20;

/**
 * Reads the small regular file `rel` below `root`; undefined if it (or a directory on its way) does not
 * exist. A symlink, a non-regular file or one above MAX_FILE_BYTES is an error naming the path.
 */
export function readFileAt(root: Beneath, rel: string): string | undefined {
  let opened: { fd: number; st: { size: number } };
  try {
    opened = root.openReadStat(rel);
  } catch (err) {
    // ENOENT: no such file (a volume removed, a node that holds nothing). A symlink or a file where a
    // directory belongs (ELOOP, ENOTDIR) is not tsvol's: an error, never followed.
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    if (opened.st.size > MAX_FILE_BYTES) throw new Error(`${root.where}/${rel} is ${opened.st.size} bytes, more than a tsvol file ever is (${MAX_FILE_BYTES})`);
    const buf = Buffer.alloc(opened.st.size + 1);
    let n = 0;
    for (;;) {
      const got = fs.readSync(opened.fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n === buf.length) throw new Error(`${root.where}/${rel} grew while it was read`);
    }
    return buf.toString('utf8', 0, n);
  } finally {
    fs.closeSync(opened.fd);
  }
}

/** The names in directory `rel` below `root` that can be records (no dot-names: temp files); [] if missing. */
export function listNamesAt(root: Beneath, rel: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = root.readdir(rel);
  } catch (err) {
    // ENOENT: no such directory (a volume nobody ever held, or one removed meanwhile). A symlink there
    // is not tsvol's: an error (a Remove refused), never followed.
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
  return entries.filter((e) => !isTempName(e.name)).map((e) => e.name);
}

/** A parse failure: the file's path and what is wrong. */
export class BadFileError extends Error {}

type Json = Record<string, unknown>;

function parseObject(text: string, what: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new BadFileError(`${what}: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new BadFileError(`${what}: not a JSON object`);
  const obj = value as Json;
  if (obj.format !== CLUSTER_FORMAT) throw new BadFileError(`${what}: format ${JSON.stringify(obj.format)}, this tsvol reads format ${CLUSTER_FORMAT}`);
  return obj;
}

/** Own properties only: JSON.parse made every key (`__proto__` included) an own property. */
function own(obj: Json, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

function str(obj: Json, key: string, what: string, re?: RegExp): string {
  const v = own(obj, key);
  if (typeof v !== 'string' || (re !== undefined && !re.test(v))) throw new BadFileError(`${what}: "${key}" is missing or malformed`);
  return v;
}

function int(obj: Json, key: string, what: string, min: number, max: number): number {
  const v = own(obj, key);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new BadFileError(`${what}: "${key}" is missing or out of range`);
  return v;
}

function optInt(obj: Json, key: string, what: string, min: number, max: number): number | undefined {
  return own(obj, key) === undefined ? undefined : int(obj, key, what, min, max);
}

/** RFC 3339 as Date.toISOString writes it. */
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/;
const MAX_ID = 0xffffffff;

/** The kinds a cluster-mode record may hold (the others are refused at Create: src/volumes/volume-service.ts). */
function parseSpec(raw: unknown, what: string): VolumeSpec {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new BadFileError(`${what}: "spec" is not an object`);
  const spec = raw as Json;
  const kind = own(spec, 'kind');
  if (kind === 'named') {
    const uid = optInt(spec, 'uid', what, 0, MAX_ID);
    const gid = optInt(spec, 'gid', what, 0, MAX_ID);
    const mode = optInt(spec, 'mode', what, 0, 0o7777);
    return { kind: 'named', ...(uid === undefined ? {} : { uid }), ...(gid === undefined ? {} : { gid }), ...(mode === undefined ? {} : { mode }) };
  }
  if (kind === 'clone') {
    const from = str(spec, 'from', what);
    if (!isVolumeName(from)) throw new BadFileError(`${what}: "from" is not a volume name`);
    return { kind: 'clone', from };
  }
  throw new BadFileError(`${what}: kind ${JSON.stringify(kind)} is not a cluster-mode kind (named, clone)`);
}

/** What a record file holds besides the holds (which live in holds/<node>). */
export type StoredRecord = Omit<VolumeRecord, 'holds'> & { readonly incarnation: string; readonly node: string };

/** A record file's text for `rec`, created on node `node`. */
export function serializeRecord(rec: VolumeRecord, node: string): string {
  if (rec.incarnation === undefined) throw new Error(`volume "${rec.name}" has no incarnation: a cluster-mode record needs one`);
  return `${JSON.stringify({ format: CLUSTER_FORMAT, name: rec.name, createdAt: rec.createdAt, spec: rec.spec, options: rec.options, incarnation: rec.incarnation, node })}\n`;
}

/** Parses the record file of volume `name` (the directory it was found in). */
export function parseRecord(name: string, text: string, what: string): StoredRecord {
  const obj = parseObject(text, what);
  if (own(obj, 'name') !== name) throw new BadFileError(`${what}: names another volume (${JSON.stringify(own(obj, 'name'))})`);
  const createdAt = str(obj, 'createdAt', what, ISO_RE);
  const spec = parseSpec(own(obj, 'spec'), what);
  const rawOptions = own(obj, 'options') ?? {};
  if (typeof rawOptions !== 'object' || rawOptions === null || Array.isArray(rawOptions)) throw new BadFileError(`${what}: "options" is not an object`);
  const entries = Object.entries(rawOptions);
  if (entries.length > 64 || entries.some(([k, v]) => typeof v !== 'string' || k.length > 256 || v.length > 4096)) {
    throw new BadFileError(`${what}: "options" must be at most 64 short strings`);
  }
  const incarnation = str(obj, 'incarnation', what, INSTANCE_RE);
  const node = str(obj, 'node', what, NODE_RE);
  return { name, createdAt, spec, options: nullProtoRecord(entries as [string, string][]), incarnation, node };
}

/** A holds file's text: node `node`'s holds (mount ID → count). */
export function serializeHolds(node: string, holds: ReadonlyMap<string, number>): string {
  return `${JSON.stringify({ format: CLUSTER_FORMAT, node, holds: [...holds] })}\n`;
}

/** Parses node `node`'s holds file (the file name is the node). */
export function parseHolds(node: string, text: string, what: string): Map<string, number> {
  const obj = parseObject(text, what);
  if (own(obj, 'node') !== node) throw new BadFileError(`${what}: names another node (${JSON.stringify(own(obj, 'node'))})`);
  const raw = own(obj, 'holds');
  if (!Array.isArray(raw) || raw.length > 10_000) throw new BadFileError(`${what}: "holds" is not a list of [id, count] pairs`);
  // A Map: the IDs came from requests (#9 §4), and `__proto__` is an ID like any other.
  const holds = new Map<string, number>();
  for (const pair of raw as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || !isMountId(pair[0])) throw new BadFileError(`${what}: a hold is not an [id, count] pair with a mount ID`);
    const count: unknown = pair[1];
    if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 1) throw new BadFileError(`${what}: hold ${JSON.stringify(pair[0])} has no positive count`);
    holds.set(pair[0], count);
  }
  return holds;
}

/** A removal in progress by node `node` (removing/<node>), valid only while `instance` holds the node's lease. */
export interface RemovalMarker {
  readonly node: string;
  readonly instance: string;
  /** When it was written (ms since the epoch, the writer's clock): for messages. */
  readonly at: number;
}

/** A removal marker's text. */
export function serializeMarker(m: RemovalMarker): string {
  return `${JSON.stringify({ format: CLUSTER_FORMAT, ...m })}\n`;
}

/** Parses node `node`'s removal marker. */
export function parseMarker(node: string, text: string, what: string): RemovalMarker {
  const obj = parseObject(text, what);
  if (own(obj, 'node') !== node) throw new BadFileError(`${what}: names another node`);
  return { node, instance: str(obj, 'instance', what, INSTANCE_RE), at: int(obj, 'at', what, 0, Number.MAX_SAFE_INTEGER) };
}

/** A node's lease (nodes/<node>/lease). */
export interface LeaseRecord {
  readonly node: string;
  /** Random per server start: tells a restarted server from the one before it. */
  readonly instance: string;
  /** Host name and pid of the server, and the kernel's boot id: for messages and for reboot detection. */
  readonly host: string;
  readonly pid: number;
  readonly boot: string;
  /** Wall-clock ms of the renewal that wrote it, and until when it is valid. */
  readonly renewedAt: number;
  readonly expiresAt: number;
  /** `stopped`: its server stopped cleanly (a restart need not wait to rule out a live twin). */
  readonly state: 'running' | 'stopped';
}

/** A lease file's text. */
export function serializeLease(l: LeaseRecord): string {
  return `${JSON.stringify({ format: CLUSTER_FORMAT, ...l })}\n`;
}

/** Parses node `node`'s lease. */
export function parseLease(node: string, text: string, what: string): LeaseRecord {
  const obj = parseObject(text, what);
  if (own(obj, 'node') !== node) throw new BadFileError(`${what}: names another node`);
  const state = own(obj, 'state');
  if (state !== 'running' && state !== 'stopped') throw new BadFileError(`${what}: "state" is missing or malformed`);
  return {
    node,
    instance: str(obj, 'instance', what, INSTANCE_RE),
    host: str(obj, 'host', what, /^[\x21-\x7e]{1,255}$/),
    pid: int(obj, 'pid', what, 0, 0x7fffffff),
    boot: str(obj, 'boot', what, /^[0-9a-f-]{1,64}$/),
    renewedAt: int(obj, 'renewedAt', what, 0, Number.MAX_SAFE_INTEGER),
    expiresAt: int(obj, 'expiresAt', what, 0, Number.MAX_SAFE_INTEGER),
    state,
  };
}

/** A node's small facts (nodes/<node>/meta): string keys and values. */
export function parseMeta(text: string, what: string): Map<string, string> {
  const obj = parseObject(text, what);
  const values = own(obj, 'values');
  if (typeof values !== 'object' || values === null || Array.isArray(values)) throw new BadFileError(`${what}: "values" is not an object`);
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(values)) {
    if (typeof v !== 'string') throw new BadFileError(`${what}: value of ${JSON.stringify(k)} is not a string`);
    out.set(k, v);
  }
  return out;
}

/** A meta file's text. */
export function serializeMeta(values: ReadonlyMap<string, string>): string {
  return `${JSON.stringify({ format: CLUSTER_FORMAT, values: nullProtoRecord(values) })}\n`;
}
