/**
 * The messages between the store's thread and an unpack worker (unpack-thread.ts, unpack-worker.ts, #11).
 * A worker runs one job at a time; every message names its job, and a worker drops what names another
 * (data the main thread sent before it heard that the job had ended).
 *
 *   main → worker   job    the job: a stage to unpack into (or none: only hash the tar)
 *                   data   the next bytes of the tar as it came (gzip or plain), an ArrayBuffer handed over
 *                   grew   (a job reading a file) the file now holds this many bytes
 *                   end    no more bytes
 *                   abort  the source failed: stop, and answer
 *   worker → main   ack    one data message was taken by the unpack: a credit back
 *                   done   the job's result       failed  its error (kind and words kept)
 */
import type { StagePaths, StageUnpacked } from './stage-unpack.js';

/** What a job does: unpack into a stage, or only hash (a layer whose diff is stored). */
export type UnpackJob = { readonly kind: 'stage'; readonly paths: StagePaths } | { readonly kind: 'hash' };

/** A job's result: a stage's counts, or a hash-only job's DiffID and tar size. */
export type UnpackResult = StageUnpacked | { readonly diffId: string; readonly tarSize: number };

/** An error across the thread: its words, its tsvol kind (`TSVOL_…`) or errno code, whether it was a TsvolError. */
export interface WireError {
  readonly message: string;
  readonly code: string | undefined;
  readonly tsvol: boolean;
}

/**
 * Where a job's bytes come from: data messages, or a file the main thread is writing (a blob it keeps),
 * read by the worker up to what `grew` messages say was written.
 */
export type JobSource = { readonly kind: 'messages' } | { readonly kind: 'file'; readonly fd: number; readonly written: number; readonly ended: boolean };

export type ToWorker =
  | { readonly t: 'job'; readonly id: number; readonly job: UnpackJob; readonly source: JobSource; readonly crashAt: string | undefined }
  | { readonly t: 'grew'; readonly id: number; readonly written: number }
  | { readonly t: 'data'; readonly id: number; readonly buf: ArrayBuffer; readonly len: number }
  | { readonly t: 'end'; readonly id: number }
  | { readonly t: 'abort'; readonly id: number };

export type FromWorker =
  | { readonly t: 'ack'; readonly id: number }
  | { readonly t: 'done'; readonly id: number; readonly result: UnpackResult }
  | { readonly t: 'failed'; readonly id: number; readonly error: WireError };

/** The named point where a test makes an unpack worker die mid-job (TSVOL_CRASH_AT, crash-point.ts). */
export const WORKER_CRASH_POINT = 'unpack-worker:after-first-data';
