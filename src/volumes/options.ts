/**
 * Create options → validated ParsedOptions, one variant per volume kind; the kind turns its variant into
 * the stored VolumeSpec (VolumeKind.plan in src/volumes/kinds/). Unknown keys and bad values are refused
 * with an error that names the key, before anything is created. The local driver's spelling of bind volumes
 * (`type=none,o=bind,device=...`) is accepted so compose files move between drivers unchanged.
 */
import { InvalidArgumentError } from '../errors.js';

/** Options a Create may carry. */
export const SUPPORTED_OPTIONS = ['uid', 'gid', 'mode', 'type', 'o', 'device', 'size', 'from', 'layer', 'image'] as const;

/** Validated Create options, by kind: what the caller asked for, before the kind's plan fills in the rest. */
export type ParsedOptions =
  | { readonly kind: 'named'; readonly uid?: number; readonly gid?: number; readonly mode?: number }
  | { readonly kind: 'bind'; readonly device: string }
  | { readonly kind: 'sized'; readonly limit: number; readonly uid?: number; readonly gid?: number; readonly mode?: number }
  | { readonly kind: 'clone'; readonly from: string }
  /**
   * `layer` as given (an ID, a unique prefix or a tag), or `image` (a reference or image ID, #11): the
   * layered kind resolves either to a ChainID (an image's top layer). Exactly one is set.
   */
  | { readonly kind: 'layered'; readonly layer: string; readonly image?: undefined }
  | { readonly kind: 'layered'; readonly image: string; readonly layer?: undefined };

/**
 * How a bind-style volume is mounted, from its `o=` (a comma-separated list, as mount(8) and Docker's local
 * driver take it): `rbind` carries the device's submounts, `bind` (the default) does not; `attrs` are
 * per-mount restrictions added to every mount of the volume's tree (keys of BIND_MOUNT_FLAGS in sys/mount.ts).
 * `named`: the list named bind or rbind (type=none requires it).
 */
export interface BindMountOptions {
  readonly recursive: boolean;
  readonly attrs: readonly string[];
  readonly named: boolean;
}

/** The `o=` entries a bind-style volume accepts. */
export const BIND_O_OPTIONS = ['bind', 'rbind', 'ro', 'rw', 'nosuid', 'nodev', 'noexec'] as const;

/**
 * Parses a bind-style volume's `o=` (undefined: a plain bind). Every entry must be one of BIND_O_OPTIONS;
 * anything else is refused by name rather than dropped: a filesystem option (`uid=`, `size=`) a bind cannot
 * honour, an atime option, or a typo would otherwise leave the user with a mount other than the one asked
 * for. Contradictions (`bind,rbind`, `ro,rw`) and empty entries are refused too. Used at Create, and again
 * at every Mount on the options the record keeps, so the mount is always the one Create accepted.
 */
export function parseBindMountOptions(o: string | undefined): BindMountOptions {
  if (o === undefined) return { recursive: false, attrs: [], named: false };
  const entries = o.split(',');
  const seen = new Set<string>();
  for (const e of entries) {
    if (!(BIND_O_OPTIONS as readonly string[]).includes(e)) {
      throw new InvalidArgumentError(
        `invalid option o=${JSON.stringify(o)}: ${e === '' ? 'an empty entry' : JSON.stringify(e)} is not a mount option a bind-style volume can honour (supported: ${BIND_O_OPTIONS.join(', ')})`,
      );
    }
    seen.add(e);
  }
  for (const [a, b] of [['bind', 'rbind'], ['ro', 'rw']] as const) {
    if (seen.has(a) && seen.has(b)) throw new InvalidArgumentError(`invalid option o=${JSON.stringify(o)}: ${a} and ${b} contradict each other`);
  }
  const attrs = [...seen].filter((e) => e !== 'bind' && e !== 'rbind' && e !== 'rw');
  return { recursive: seen.has('rbind'), attrs, named: seen.has('bind') || seen.has('rbind') };
}

/** The smallest size= accepted: an ext4 image below this has no room for its own metadata. */
export const MIN_SIZE = 16 * 1024 * 1024;

/**
 * Parses a size like Docker's (`--memory`, `--shm-size`): a number with an optional binary unit k, m, g,
 * t, p (any case, optional b/ib), bytes otherwise. `10G` is 10 GiB.
 */
export function parseSize(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$/i.exec(value.trim());
  const units = ['', 'k', 'm', 'g', 't', 'p'];
  const bytes = m === null ? NaN : Math.floor(Number(m[1]) * 1024 ** units.indexOf((m[2] ?? '').toLowerCase()));
  if (!Number.isSafeInteger(bytes) || bytes < MIN_SIZE) {
    throw new InvalidArgumentError(`invalid option size=${JSON.stringify(value)}: want a size of at least 16m, such as 512m or 10G`);
  }
  return bytes;
}

function parseId(key: string, value: string): number {
  if (!/^\d{1,10}$/.test(value) || Number(value) > 0xfffffffe) {
    throw new InvalidArgumentError(`invalid option ${key}=${JSON.stringify(value)}: want a number from 0 to 4294967294`);
  }
  return Number(value);
}

function parseMode(value: string): number {
  if (!/^0?[0-7]{3,4}$/.test(value) || parseInt(value, 8) > 0o7777) {
    throw new InvalidArgumentError(`invalid option mode=${JSON.stringify(value)}: want octal permissions such as 0755`);
  }
  return parseInt(value, 8);
}

/** Sets uid, gid and mode on `spec` from the options that name them. */
function applyOwnership(spec: { uid?: number; gid?: number; mode?: number }, opts: ReadonlyMap<string, string>): void {
  const uid = opts.get('uid');
  const gid = opts.get('gid');
  const mode = opts.get('mode');
  if (uid !== undefined) spec.uid = parseId('uid', uid);
  if (gid !== undefined) spec.gid = parseId('gid', gid);
  if (mode !== undefined) spec.mode = parseMode(mode);
}

/**
 * Validates Create options (`null` from Go means none). A Map (#9 §4): option keys come from the request,
 * and `opts.layer` on a plain object reads Object.prototype when the key is absent, so a polluted
 * prototype would pass for an option the caller never gave.
 */
export function parseOptions(opts: ReadonlyMap<string, string>): ParsedOptions {
  for (const key of opts.keys()) {
    if (!(SUPPORTED_OPTIONS as readonly string[]).includes(key)) {
      throw new InvalidArgumentError(
        `invalid option: ${JSON.stringify(key)} (supported: ${SUPPORTED_OPTIONS.join(', ')})`,
      );
    }
  }
  const type = opts.get('type');
  const o = opts.get('o');
  const device = opts.get('device');
  const layer = opts.get('layer');
  const image = opts.get('image');
  const from = opts.get('from');
  const size = opts.get('size');
  if (image !== undefined) {
    for (const k of ['uid', 'gid', 'mode', 'type', 'o', 'device', 'size', 'from', 'layer'] as const) {
      if (opts.get(k) !== undefined) {
        throw new InvalidArgumentError(`invalid option ${k}: a volume on an image (image=) starts with the image's files, owners and modes; it takes no other options`);
      }
    }
    if (!/^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,319}$/.test(image)) {
      throw new InvalidArgumentError(`invalid option image=${JSON.stringify(image)}: want an image reference (NAME[:TAG], NAME@sha256:…) or ID; \`tsvol image ls\` on the host lists them`);
    }
    return { kind: 'layered', image };
  }
  if (layer !== undefined) {
    for (const k of ['uid', 'gid', 'mode', 'type', 'o', 'device', 'size', 'from'] as const) {
      if (opts.get(k) !== undefined) {
        throw new InvalidArgumentError(`invalid option ${k}: a layered volume (layer=) starts with the layer's files, owners and modes; it takes no other options`);
      }
    }
    if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(layer)) {
      throw new InvalidArgumentError(`invalid option layer=${JSON.stringify(layer)}: want a layer ID (sha256:…) or tag; \`tsvol layer ls\` lists them`);
    }
    return { kind: 'layered', layer };
  }
  if (from !== undefined) {
    for (const k of ['uid', 'gid', 'mode', 'type', 'o', 'device', 'size'] as const) {
      if (opts.get(k) !== undefined) {
        throw new InvalidArgumentError(`invalid option ${k}: a clone (from=) copies its source's contents, owners and modes; it takes no other options`);
      }
    }
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(from)) {
      throw new InvalidArgumentError(`invalid option from=${JSON.stringify(from)}: want the name of an existing volume`);
    }
    return { kind: 'clone', from };
  }
  if (size !== undefined && type === undefined && o === undefined && device === undefined) {
    const spec: { kind: 'sized'; limit: number; uid?: number; gid?: number; mode?: number } = { kind: 'sized', limit: parseSize(size) };
    applyOwnership(spec, opts);
    return spec;
  }
  if (type === undefined && o === undefined && device === undefined) {
    const spec: { kind: 'named'; uid?: number; gid?: number; mode?: number } = { kind: 'named' };
    applyOwnership(spec, opts);
    return spec;
  }
  if (type !== 'bind' && type !== 'none') {
    if (type === undefined && o !== undefined) {
      throw new InvalidArgumentError(`invalid option o=${JSON.stringify(o)}: o= takes mount options of a bind-style volume; add type=none (or type=bind) and device=`);
    }
    if (type === undefined) throw new InvalidArgumentError('option device needs type=bind (or type=none,o=bind)');
    throw new InvalidArgumentError(
      `invalid option type=${JSON.stringify(type)}: tsvol supports type=bind or type=none,o=bind (named volumes take no type)`,
    );
  }
  const how = parseBindMountOptions(o);
  if (type === 'none' && !how.named) {
    throw new InvalidArgumentError(`invalid option o=${JSON.stringify(o ?? '')}: with type=none, o= must include bind or rbind (such as o=bind or o=bind,ro)`);
  }
  for (const k of ['uid', 'gid', 'mode', 'size'] as const) {
    if (opts.get(k) !== undefined) {
      throw new InvalidArgumentError(`invalid option ${k}: bind-style volumes keep the host directory's owner and mode`);
    }
  }
  if (device === undefined || device === '') {
    throw new InvalidArgumentError('bind-style volume needs device=/absolute/host/path');
  }
  if (!device.startsWith('/')) {
    throw new InvalidArgumentError(`invalid option device=${JSON.stringify(device)}: must be an absolute path`);
  }
  // A C string ends at NUL, so the kernel would be handed a shorter path than the one checked; PATH_MAX bounds the rest.
  if (device.includes('\0') || Buffer.byteLength(device) >= 4096) {
    throw new InvalidArgumentError(`invalid option device=${JSON.stringify(device.slice(0, 80))}: a path holds no NUL byte and is shorter than 4096 bytes`);
  }
  return { kind: 'bind', device };
}
