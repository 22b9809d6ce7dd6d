/**
 * tsvol's error kinds as gRPC statuses: the only place CSI errors are encoded (as http/app.ts is for
 * Docker's `Err`). The spec names the code per RPC; most follow from the kind, and the handlers throw a
 * CsiError where the spec asks for a code of its own (ALREADY_EXISTS, OUT_OF_RANGE, ABORTED, ...).
 */
import { status, type ServerErrorResponse } from '@grpc/grpc-js';
import { TsvolError, describeError, type ErrorCode } from '../errors.js';

/** An error with the gRPC code the spec names for this case. */
export class CsiError extends Error {
  constructor(
    readonly grpcCode: status,
    message: string,
  ) {
    super(message);
    this.name = 'CsiError';
  }
}

/** The gRPC code of each tsvol error kind. In use is FAILED_PRECONDITION (DeleteVolume of a held volume). */
const CODE: Readonly<Record<ErrorCode, status>> = {
  TSVOL_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  TSVOL_NOT_FOUND: status.NOT_FOUND,
  TSVOL_CONFLICT: status.ALREADY_EXISTS,
  TSVOL_IN_USE: status.FAILED_PRECONDITION,
  TSVOL_OUT_OF_RANGE: status.OUT_OF_RANGE,
  TSVOL_UNAVAILABLE: status.UNAVAILABLE,
  TSVOL_INTERNAL: status.INTERNAL,
};

/** The gRPC code for `err`. */
export function grpcCodeOf(err: unknown): status {
  if (err instanceof CsiError) return err.grpcCode;
  if (err instanceof TsvolError) return CODE[err.code];
  return status.INTERNAL;
}

/** `err` as the error a handler's callback takes: code and message, no stack. */
export function toServiceError(err: unknown): ServerErrorResponse {
  return Object.assign(new Error(describeError(err)), { code: grpcCodeOf(err), details: describeError(err) });
}

/** Throws INVALID_ARGUMENT unless `value` is a non-empty string: `what` names the field. */
export function required(value: string, what: string): string {
  if (value === '') throw new CsiError(status.INVALID_ARGUMENT, `${what} is required`);
  return value;
}
