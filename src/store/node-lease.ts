/**
 * Node leases on a cluster-mode root (#14): each live server keeps nodes/<node>/lease valid by rewriting it
 * every third of the lease (TSVOL_LEASE_SECONDS). A node's holds count only while its lease is valid, so
 * a node that dies (kill -9, power loss, a cut network) stops pinning volumes once its lease runs out, and
 * the node that next needs one of them takes its holds over (src/store/cluster-store.ts).
 *
 * - Validity is wall-clock `expiresAt` (the writer's clock at the start of the renewal + the lease), read
 *   by every node with its own clock: nodes need clocks that agree to well within the lease (NTP; Swarm's
 *   TLS needs that anyway).
 * - This node judges its own lease by the monotonic clock: valid until the start of its last successful
 *   renewal + the lease. Once that passes (the filesystem did not take its renewals: a partition), it
 *   stops acknowledging mounts and removals until a renewal succeeds again, and says so (assertOwn).
 * - One ID, one live node: start-up (claim) refuses an ID whose lease another process keeps renewing,
 *   naming its host and pid, and every renewal checks that the lease on disk is still this instance's
 *   (a twin started later wrote over it): if not, this server stops acting for the node and says why.
 */
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { nanoid } from 'nanoid';
import { ConflictError, UnavailableError, describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Beneath } from '../sys/beneath.js';
import { writeFileDurableAt } from '../sys/durable.js';
import { BadFileError, clusterPaths, parseLease, readFileAt, serializeLease, type LeaseRecord } from './cluster-files.js';

/** Another node's lease as read now. */
export interface LeaseState {
  /** Valid now (by this node's clock). */
  readonly live: boolean;
  /** The lease as read; undefined if the node has none (never started, or a damaged file: counted expired). */
  readonly record: LeaseRecord | undefined;
  /** How long ago it expired (0 while live; Infinity without a lease). */
  readonly expiredForMs: number;
}

/** This node's lease, and what it reads of the others'. */
export interface NodeLease {
  readonly node: string;
  /** This server's instance ID (random per start). */
  readonly instance: string;
  readonly leaseMs: number;
  /**
   * Claims the node's lease at start-up. If another process's lease for this node is live and not marked
   * stopped, watches it for a renewal interval and a half first: a renewal means a live twin (a
   * ConflictError naming its host and pid); none means its server is dead (this node's own server, killed).
   * Then writes the lease and renews it every third of the lease until stop().
   */
  claim(): Promise<void>;
  /**
   * Throws UnavailableError unless this node's own lease is valid for at least `marginMs` more: a node
   * that lost its lease must not acknowledge `what` (`mount volume "db"`), and says why.
   */
  assertOwn(what: string, marginMs?: number): void;
  /** Node `node`'s lease, read now (the file is read every time: another node changes it). */
  stateOf(node: string): LeaseState;
  /** Runs `fn` after a renewal that follows a lapse (the node was cut off, and is back). */
  onRegained(fn: () => void): void;
  /** Stops renewing; with `clean`, marks the lease stopped (still valid until it expires). */
  stop(clean: boolean): Promise<void>;
}

/** What a lease needs. */
export interface NodeLeaseOptions {
  /** The data root, pinned. */
  readonly root: Beneath;
  readonly node: string;
  readonly leaseMs: number;
  readonly log: Logger;
  /** The kernel's boot id (sys/boot.ts). */
  readonly boot: string;
  /** How often the start-up watch looks at a live twin's lease (tests shorten it). */
  readonly pollMs?: number;
}

/** The lease of node `opts.node` on the root `opts.root`. */
export function createNodeLease(opts: NodeLeaseOptions): NodeLease {
  const { root, node, leaseMs, log, boot } = opts;
  const instance = nanoid(16);
  const renewMs = Math.max(100, Math.floor(leaseMs / 3));
  const leaseFile = clusterPaths.lease(node);
  /** Monotonic ms until which this node's own lease is valid; 0 before claim. */
  let validUntil = 0;
  let timer: NodeJS.Timeout | undefined;
  /** Why this server no longer acts for the node (a twin took the ID); permanent. */
  let lost: string | undefined;
  /** A lapse was logged and not yet followed by a renewal. */
  let lapsed = false;
  const regained: (() => void)[] = [];

  function read(who: string): LeaseRecord | undefined {
    const rel = clusterPaths.lease(who);
    const text = readFileAt(root, rel);
    return text === undefined ? undefined : parseLease(who, text, `${root.where}/${rel}`);
  }

  function write(state: LeaseRecord['state']): void {
    const startedMono = performance.now();
    const now = Date.now();
    const rec: LeaseRecord = { node, instance, host: os.hostname(), pid: process.pid, boot, renewedAt: now, expiresAt: now + leaseMs, state };
    writeFileDurableAt(root, leaseFile, serializeLease(rec));
    if (state === 'running') validUntil = startedMono + leaseMs;
  }

  /** This node's lease file; a damaged one (not tsvol's shape) is said and counts as none: ours to write. */
  function readOwnQuietly(): LeaseRecord | undefined {
    try {
      return read(node);
    } catch (err) {
      if (!(err instanceof BadFileError)) throw err;
      log.warn({ node, err: describeError(err) }, 'own lease file unreadable; writing it again');
      return undefined;
    }
  }

  function renew(): void {
    if (lost !== undefined) return;
    try {
      const cur = readOwnQuietly();
      if (cur !== undefined && cur.instance !== instance) {
        lost = `another tsvol server took TSVOL_NODE_ID="${node}" (host ${cur.host}, pid ${cur.pid}): two nodes must never share an ID; this server no longer acts for the node`;
        log.error({ node, host: cur.host, pid: cur.pid }, 'node ID taken by another server; no more mounts or removals here');
        clearInterval(timer);
        return;
      }
      write('running');
      if (lapsed) {
        lapsed = false;
        log.warn({ node }, 'lease renewed after it had lapsed; acknowledging mounts again');
        for (const fn of regained) fn();
      }
    } catch (err) {
      const left = validUntil - performance.now();
      if (left <= 0 && !lapsed) {
        lapsed = true;
        log.error({ node, err: describeError(err) }, 'lease lapsed: the shared filesystem did not take its renewals; not acknowledging mounts or removals until renewed');
      } else {
        log.warn({ node, leftMs: Math.round(left), err: describeError(err) }, 'lease renewal failed; retrying');
      }
    }
  }

  return {
    node,
    instance,
    leaseMs,

    async claim() {
      const first = readOwnQuietly();
      if (first !== undefined && first.instance !== instance && first.state === 'running' && Date.now() < first.expiresAt) {
        // Live and not stopped cleanly: this node's own server killed moments ago, or a twin. A live server
        // renews every renewMs: watch for a renewal and a half (no longer than its lease has left).
        const until = Math.min(first.expiresAt, Date.now() + renewMs * 1.5 + 1000);
        log.info({ node, host: first.host, pid: first.pid, waitMs: until - Date.now() }, 'node lease is live: making sure no other server holds this node ID');
        while (Date.now() < until) {
          await new Promise((r) => setTimeout(r, opts.pollMs ?? 200));
          const now = readOwnQuietly();
          if (now !== undefined && (now.instance !== first.instance || now.renewedAt !== first.renewedAt)) {
            throw new ConflictError(
              `TSVOL_NODE_ID="${node}" is in use by a live tsvol server (host ${now.host}, pid ${now.pid}): its lease on ${root.where} was renewed ${Math.max(0, Date.now() - now.renewedAt)} ms ago; give each node its own TSVOL_NODE_ID`,
            );
          }
        }
      }
      write('running');
      timer = setInterval(renew, renewMs);
      timer.unref();
    },

    assertOwn(what, marginMs = 0) {
      if (lost !== undefined) throw new UnavailableError(`${what}: ${lost}`);
      const left = validUntil - performance.now();
      if (left > marginMs) return;
      if (validUntil === 0) throw new UnavailableError(`${what}: node "${node}" has not claimed its lease yet`);
      if (left <= 0 && !lapsed) {
        lapsed = true;
        log.error({ node }, 'lease lapsed: the shared filesystem did not take its renewals; not acknowledging mounts or removals until renewed');
      }
      throw new UnavailableError(
        left > 0
          ? `${what}: node "${node}"'s lease on the shared root has only ${Math.round(left)} ms left (renewals are failing); retry once the shared filesystem answers`
          : `${what}: node "${node}" lost its lease on the shared root ${Math.round(-left / 1000)} s ago (the filesystem did not take its renewals); not acknowledging mounts or removals until it is renewed`,
      );
    },

    stateOf(who) {
      let rec: LeaseRecord | undefined;
      try {
        rec = read(who);
      } catch (err) {
        // A damaged or hostile lease file names no live node: its holds count as expired, and say why.
        log.warn({ node: who, err: describeError(err) }, 'unreadable node lease; counting it expired');
        rec = undefined;
      }
      if (rec === undefined) return { live: false, record: undefined, expiredForMs: Infinity };
      const now = Date.now();
      return { live: now < rec.expiresAt, record: rec, expiredForMs: Math.max(0, now - rec.expiresAt) };
    },

    onRegained(fn) {
      regained.push(fn);
    },

    async stop(clean) {
      clearInterval(timer);
      timer = undefined;
      if (!clean || lost !== undefined || validUntil === 0) return;
      try {
        // Still valid until it expires (the holds of containers still running here keep their volumes),
        // but a restart need not watch for a twin.
        const cur = read(node);
        if (cur?.instance === instance) writeFileDurableAt(root, leaseFile, serializeLease({ ...cur, state: 'stopped' }));
      } catch (err) {
        log.warn({ node, err: describeError(err) }, 'could not mark the node lease stopped; the next start waits to rule out a twin');
      }
    },
  };
}
