/**
 * Image references, normalized and shown the way Docker does (docker/distribution `reference`:
 * ParseNormalizedNamed, FamiliarString): `app` is `docker.io/library/app:latest`, `tsimg/app` is
 * `docker.io/tsimg/app:latest`, `127.0.0.1:5000/x:t` keeps its registry, and `name@sha256:<hex>` names a
 * manifest digest. The stored name is the normalized form; users see the familiar one.
 */
import { InvalidArgumentError } from '../errors.js';

/** Docker Hub's registry name in normalized references. */
export const DEFAULT_DOMAIN = 'docker.io';
const OFFICIAL_PREFIX = 'library/';
const DEFAULT_TAG = 'latest';

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$|^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** A parsed, normalized reference. */
export interface Reference {
  /** Registry host[:port] (`docker.io` for Docker Hub). */
  readonly domain: string;
  /** Repository path within the registry (`library/app`). */
  readonly path: string;
  readonly tag?: string;
  readonly digest?: string;
}

/**
 * Parses `ref` as Docker does: a tag defaults to `latest` unless a digest is given. Throws
 * InvalidArgumentError naming the reference otherwise.
 */
export function parseReference(ref: string): Reference {
  const bad = (why: string): never => {
    throw new InvalidArgumentError(`invalid image reference ${JSON.stringify(ref)}: ${why}`);
  };
  if (ref.length === 0 || ref.length > 255 + 64 + 8) bad('want NAME[:TAG] or NAME@sha256:DIGEST');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) bad('a digest is sha256: and 64 lowercase hex digits');
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) bad('a tag is 1 to 128 of letters, digits, _ . - (not starting with . or -)');
  }
  let domain = DEFAULT_DOMAIN;
  let path = rest;
  const first = rest.indexOf('/');
  if (first >= 0) {
    const head = rest.slice(0, first);
    if (head.includes('.') || head.includes(':') || head === 'localhost' || head !== head.toLowerCase()) {
      domain = head;
      path = rest.slice(first + 1);
      if (!DOMAIN.test(domain)) bad(`${JSON.stringify(domain)} is not a registry host[:port]`);
    }
  }
  if (domain === 'index.docker.io') domain = DEFAULT_DOMAIN;
  if (domain === DEFAULT_DOMAIN && !path.includes('/')) path = OFFICIAL_PREFIX + path;
  if (path.length === 0 || !path.split('/').every((c) => COMPONENT.test(c))) {
    bad('a repository name is lowercase letters, digits and separators (. _ __ -), in /-separated components');
  }
  if (/^[0-9a-f]{64}$/.test(path.slice(path.lastIndexOf('/') + 1)) && domain === DEFAULT_DOMAIN && path.startsWith(OFFICIAL_PREFIX) && tag === undefined && digest === undefined) {
    bad('a 64-hex-digit name is an image ID: write sha256:<hex>');
  }
  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return { domain, path, ...(tag === undefined ? {} : { tag }), ...(digest === undefined ? {} : { digest }) };
}

/** The repository, normalized: `docker.io/library/app`. */
export function repositoryOf(ref: Reference): string {
  return `${ref.domain}/${ref.path}`;
}

/** The normalized string: `docker.io/library/app:latest`, `docker.io/library/app@sha256:…`. */
export function formatReference(ref: Reference): string {
  return `${repositoryOf(ref)}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest === undefined ? '' : `@${ref.digest}`}`;
}

/** The repository as Docker shows it: `app`, `tsimg/app`, `127.0.0.1:5000/x`. */
export function familiarRepository(ref: Reference): string {
  if (ref.domain !== DEFAULT_DOMAIN) return repositoryOf(ref);
  return ref.path.startsWith(OFFICIAL_PREFIX) ? ref.path.slice(OFFICIAL_PREFIX.length) : ref.path;
}

/** The reference as Docker shows it: `app:latest`, `tsimg/app:v1`, `127.0.0.1:5000/x@sha256:…`. */
export function familiarReference(ref: Reference): string {
  return `${familiarRepository(ref)}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest === undefined ? '' : `@${ref.digest}`}`;
}

/** Normalizes `ref` (see parseReference): the form stored as an image's name. */
export function normalizeReference(ref: string): string {
  return formatReference(parseReference(ref));
}

/** True for an image ID as stored for an image loaded without a name (`sha256:<hex>`). */
export function isImageId(name: string): boolean {
  return DIGEST.test(name);
}
