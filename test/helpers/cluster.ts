/**
 * Cluster-mode test helpers (#14): a shared root that several "nodes" mount, each through its own FUSE
 * mount (bindfs) of one backing directory, so that every byte and rename goes through a real FUSE
 * filesystem (statfs says FUSE, as for GlusterFS or ceph-fuse), not a shared local directory; and a
 * logger whose lines a test can read.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { requireTools } from './require.js';
import { cleanupDir, tempDir } from './server.js';

/** A shared root and one FUSE mount of it per node. */
export interface SharedRoot {
  /** The temp directory holding everything. */
  readonly dir: string;
  /** The backing directory (what the "storage servers" hold). */
  readonly back: string;
  /** Node `node`'s mount of the shared root (made on first use): its TSVOL_DATA. */
  mountOf(node: string): string;
  /** Unmounts every node's mount and deletes everything. */
  cleanup(): void;
}

/** Makes a shared root under a fresh temp directory. Needs root and bindfs. */
export function makeSharedRoot(prefix = 'tsvol-cluster-'): SharedRoot {
  requireTools('bindfs', 'umount');
  const dir = tempDir(prefix);
  const back = path.join(dir, 'back');
  fs.mkdirSync(back, { mode: 0o700 });
  const mounts = new Map<string, string>();
  return {
    dir,
    back,
    mountOf(node) {
      let mp = mounts.get(node);
      if (mp !== undefined) return mp;
      mp = path.join(dir, `node-${node}`);
      fs.mkdirSync(mp);
      const r = spawnSync('bindfs', ['--no-allow-other', back, mp], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`bindfs ${back} ${mp} failed: ${r.stderr}`);
      mounts.set(node, mp);
      return mp;
    },
    cleanup() {
      for (const mp of mounts.values()) spawnSync('umount', [mp], { stdio: 'ignore' });
      cleanupDir(dir);
    },
  };
}

/** A logger whose JSON lines land in `lines` (parsed). */
export function captureLogger(level = 'info'): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}
