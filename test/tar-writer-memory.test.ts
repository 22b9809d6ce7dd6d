/**
 * Streaming a tree or a layer as a tar holds a few buffers, whatever the size of the files in it: a 1 GiB
 * file (sparse, on tmpfs, so it costs no memory or disk and reads fast) goes through volume export's packer (packTree, the
 * tree writer) and through layer export's replay of a split file (replaySplit), each in a child process
 * whose peak RSS is measured. Before, the tar writer read a whole file into its output buffers before it
 * yielded any of them: the export of a 10 GiB file held 10 GiB.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { ROOT } from './helpers/server.js';

const MiB = 1 << 20;
const SIZE = 1024 * MiB;
/** What the stream may hold beyond the child's start: a few 4 MiB buffers, and room for the GC's slack. */
const BOUND_MB = 192;

interface ChildResult {
  baseMb: number;
  maxRssMb: number;
  bytes: number;
}

/**
 * Runs `body` (module code that sets `stream`, an async iterable of the tar's buffers, from DIR) in a
 * child and reads the stream to its end, counting bytes; reports its peak RSS after the imports and at
 * the end.
 */
function streamInChild(t: { log: (...m: unknown[]) => void }, dir: string, body: string): ChildResult {
  const code = `
    import fs from 'node:fs';
    import path from 'node:path';
    // The peak RSS of this process image (not resourceUsage().maxRSS, which Linux carries over exec from
    // the forked parent, the ava worker).
    const hwmMb = () => Number(/VmHWM:\\s+(\\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
    const src = (f) => path.join(${JSON.stringify(ROOT)}, 'src', f);
    const DIR = process.env.DIR;
    let stream;
    ${body}
    const baseMb = hwmMb();
    let bytes = 0;
    for await (const b of stream) bytes += b.length;
    console.log(JSON.stringify({ baseMb, maxRssMb: hwmMb(), bytes }));
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT, env: { ...process.env, DIR: dir }, timeout: 120_000, encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`child failed (status ${r.status}, signal ${r.signal}): ${r.stderr}`);
  t.log(r.stdout.trim());
  return JSON.parse(r.stdout) as ChildResult;
}

/**
 * A directory holding `big`, a sparse file of SIZE bytes. On tmpfs: a hole there reads as the zero page
 * (1 GiB in about 0.05 s), where ext4 fills the page cache for it (seconds per GiB on the CI VM).
 */
function sparseTree(): string {
  const dir = fs.mkdtempSync('/dev/shm/tsvol-tar-mem-');
  fs.mkdirSync(path.join(dir, 'tree'));
  const fd = fs.openSync(path.join(dir, 'tree', 'big'), 'wx', 0o644);
  fs.closeSync(fd);
  fs.truncateSync(path.join(dir, 'tree', 'big'), SIZE);
  return dir;
}

test('volume export packs a 1 GiB file in bounded memory', (t) => {
  const dir = sparseTree();
  try {
    const r = streamInChild(t, dir, `
      const { packTree } = await import(src('layers/tree-archive.ts'));
      stream = packTree(path.join(DIR, 'tree'), { whiteouts: 'plain', rootEntry: true });
    `);
    // The whole file went through: two headers (./ and big), its body (no padding: SIZE is a multiple of
    // 512) and the trailer.
    t.true(r.bytes >= SIZE + 2 * 512 + 1024 && r.bytes < SIZE + 16 * 1024, `tar of ${r.bytes} bytes`);
    t.true(r.maxRssMb - r.baseMb < BOUND_MB, `peak RSS grew by ${(r.maxRssMb - r.baseMb).toFixed(0)} MB streaming a ${SIZE / MiB} MiB file`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('layer export replays a 1 GiB file in bounded memory', (t) => {
  const dir = sparseTree();
  try {
    const r = streamInChild(t, dir, `
      const { SplitWriter, replaySplit } = await import(src('layers/unpack.ts'));
      const { blankHeader, encodeHeader } = await import(src('layers/tar/format.ts'));
      // The split file a layer holding the file has: its header, its body from the layer's directory, the trailer.
      const splitFile = path.join(DIR, 'layer.split');
      const fd = fs.openSync(splitFile, 'wx', 0o600);
      const split = new SplitWriter(fd);
      split.entry(encodeHeader(blankHeader('big', 'file', { mode: 0o644, size: ${SIZE} })), 'big', ${SIZE}, Buffer.alloc(0));
      split.trailer(Buffer.alloc(1024));
      fs.closeSync(fd);
      stream = replaySplit(splitFile, path.join(DIR, 'tree'));
    `);
    t.is(r.bytes, 512 + SIZE + 1024);
    t.true(r.maxRssMb - r.baseMb < BOUND_MB, `peak RSS grew by ${(r.maxRssMb - r.baseMb).toFixed(0)} MB streaming a ${SIZE / MiB} MiB file`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
