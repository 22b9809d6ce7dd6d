/**
 * Error kinds shared by every module. Each kind has a stable `code` that logs and tests match on, and a
 * message that names the thing and the next step. Imports nothing (STYLE.md: errors.ts imports nothing).
 */

/** Stable error codes, one per kind. */
export type ErrorCode =
  | 'TSVOL_INVALID_ARGUMENT'
  | 'TSVOL_NOT_FOUND'
  | 'TSVOL_CONFLICT'
  | 'TSVOL_IN_USE'
  | 'TSVOL_OUT_OF_RANGE'
  | 'TSVOL_UNAVAILABLE'
  | 'TSVOL_INTERNAL';

const ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>(['TSVOL_INVALID_ARGUMENT', 'TSVOL_NOT_FOUND', 'TSVOL_CONFLICT', 'TSVOL_IN_USE', 'TSVOL_OUT_OF_RANGE', 'TSVOL_UNAVAILABLE', 'TSVOL_INTERNAL']);

/** True if `code` is one of tsvol's error codes (an error's kind, carried across a thread as its code). */
export function isErrorCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && ERROR_CODES.has(code);
}

/** Base class of every error tsvol raises on purpose. */
export class TsvolError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The caller sent something we refuse: a bad name, option, path or body. */
export class InvalidArgumentError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TSVOL_INVALID_ARGUMENT', message, options);
  }
}

/**
 * The named volume, layer or container does not exist. Made without a stack trace: it is an answer to the
 * caller (a 404), not a fault, and no one reads its stack (only 5xx replies are logged with one). dockerd
 * asks Get before every Create, so one is made per `docker volume create`, and capturing the stack was
 * most of its cost (28–31 µs each, against ~3 µs without; #13).
 */
export class NotFoundError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0; // read by V8 inside Error's constructor: no frames are captured
    try {
      super('TSVOL_NOT_FOUND', message, options);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }
}

/** The request clashes with existing state (name taken with other options, another server running). */
export class ConflictError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TSVOL_CONFLICT', message, options);
  }
}

/** The object is held by someone (mounts, child layers, volumes built on it). */
export class InUseError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TSVOL_IN_USE', message, options);
  }
}

/** A size the object cannot take: a sized volume asked to shrink (volumes only grow). */
export class OutOfRangeError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TSVOL_OUT_OF_RANGE', message, options);
  }
}

/** A capability or resource is missing on this host (no overlayfs, shutting down). */
export class UnavailableError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TSVOL_UNAVAILABLE', message, options);
  }
}

/** Something failed that the caller cannot fix; the message still names what. */
export class InternalError extends TsvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TSVOL_INTERNAL', message, options);
  }
}

/** Returns the errno-style code (`ENOENT`) of a Node system error, or undefined. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** Returns a one-line description of any thrown value. */
export function describeError(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Adds context to an error the way Go's `%w` does: `mount db: <inner>`. TsvolErrors keep their kind;
 * anything else becomes an InternalError carrying the original as `cause`.
 */
export function wrapError(context: string, err: unknown): TsvolError {
  const message = `${context}: ${describeError(err)}`;
  if (err instanceof TsvolError) {
    const wrapped = new TsvolError(err.code, message, { cause: err });
    wrapped.name = err.name;
    return wrapped;
  }
  return new InternalError(message, { cause: err });
}

/** Each kind's class, by its code. */
const CLASS_OF: Readonly<Record<ErrorCode, new (message: string) => TsvolError>> = {
  TSVOL_INVALID_ARGUMENT: InvalidArgumentError, TSVOL_NOT_FOUND: NotFoundError, TSVOL_CONFLICT: ConflictError,
  TSVOL_IN_USE: InUseError, TSVOL_OUT_OF_RANGE: OutOfRangeError, TSVOL_UNAVAILABLE: UnavailableError,
  TSVOL_INTERNAL: InternalError,
};

/** A TsvolError of the kind `code` names, as its own class (an error carried across a thread as its code). */
export function errorOfCode(code: ErrorCode, message: string): TsvolError {
  return new CLASS_OF[code](message);
}
