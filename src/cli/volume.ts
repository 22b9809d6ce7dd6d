/**
 * `tsvol volume …`: ls, inspect, export, import, commit, clone (#6). Thin: parse, call volumes/, print.
 *
 * One truth with a running plugin: the CLI opens the same SQLite store, which is safe across processes
 * (src/store/volume-store.ts): a volume it imports is at once visible to the server, which re-reads the
 * store on a miss. What needs the server's per-volume locks or holds goes through its socket: `clone` is
 * a Create with from=, and exporting a loop-backed or layered volume takes a hold with Mount (so its
 * image is never mounted twice) and releases it after. With no server answering, the CLI does the work itself.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { Command } from 'commander';
import { createGzip } from 'node:zlib';
import { Readable } from 'node:stream';
import { loadConfig, type Config } from '../config.js';
import { InternalError, NotFoundError, errnoCode } from '../errors.js';
import { createLogger } from '../log.js';
import { createLayout, type Layout } from '../store/layout.js';
import { createVolumeStore, type VolumeRecord, type VolumeStore } from '../store/volume-store.js';
import { exportTree, importVolume } from '../volumes/archive.js';
import { createLayeredVolumes } from '../volumes/layered.js';
import { createVolumeService, hasOwnMount, holdCount, type VolumeService } from '../volumes/volume-service.js';
import { humanSize, table } from './format.js';
import { withProgress } from './progress.js';

interface Context {
  readonly config: Config;
  readonly layout: Layout;
  readonly store: VolumeStore;
  readonly service: VolumeService;
}

/** Opens the store and a service over it for one command, and always closes the store. */
async function withContext<T>(fn: (ctx: Context) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const layout = createLayout(config.dataRoot);
  const store = createVolumeStore(layout);
  try {
    const service = createVolumeService({ config, layout, store, log: createLogger('silent') });
    return await fn({ config, layout, store, service });
  } finally {
    await store.close();
  }
}

/** POSTs to the server's socket; undefined when no server answers there. */
function callServer(socket: string, endpoint: string, body: unknown): Promise<Record<string, unknown> | undefined> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath: socket, method: 'POST', path: endpoint, headers: { 'Content-Length': Buffer.byteLength(payload) }, agent: false },
      (res) => {
        let raw = '';
        res.on('data', (c: Buffer) => (raw += c.toString()));
        res.on('end', () => {
          const json = JSON.parse(raw) as Record<string, unknown>;
          if (typeof json.Err === 'string' && json.Err !== '') reject(new InternalError(`${json.Err}`));
          else resolve(json);
        });
      },
    );
    req.on('error', (err) => {
      // No server listening: the CLI works on the store directly.
      if (['ENOENT', 'ECONNREFUSED'].includes(errnoCode(err) ?? '')) resolve(undefined);
      else reject(err);
    });
    req.end(payload);
  });
}


async function writeOut(chunks: AsyncIterable<Buffer>, output: string | undefined): Promise<void> {
  if (output !== undefined) {
    const fd = fs.openSync(output, 'w', 0o644);
    try {
      for await (const chunk of withProgress('exporting', chunks)) fs.writeSync(fd, chunk);
    } finally {
      fs.closeSync(fd);
    }
    return;
  }
  for await (const chunk of chunks) {
    if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once('drain', r));
  }
}

/**
 * Runs `fn` on a volume's files. A volume in use is read as it is now (said on stderr). A volume whose
 * files are only visible through its own mount (a loop image, an overlay) and that nothing holds is held
 * for the duration with a Mount, through the server if one runs (so its image is never mounted twice),
 * unless `needsFiles` says the work does not read the merged tree.
 */
async function withContents<T>(
  { config, layout, store, service }: Context,
  name: string,
  verb: string,
  fn: (dir: string, rec: VolumeRecord) => Promise<T>,
  needsFiles: (rec: VolumeRecord) => boolean = () => true,
): Promise<T> {
  store.refresh();
  const rec = store.get(name);
  if (rec === undefined) throw new NotFoundError(`volume "${name}" not found; \`tsvol volume ls\` lists volumes`);
  const n = holdCount(rec);
  if (n > 0) process.stderr.write(`tsvol: volume "${name}" is in use (${n} mount(s)); ${verb} its contents as they are now\n`);
  // A bind-style volume is read through a hold of its own: its mountpoint is then a mount of the pinned,
  // re-checked device directory, never the device path, which a symlink could redirect (#9 §10a).
  const bind = rec.spec.kind === 'bind';
  let dir = layout.dataDir(name);
  const needsMount = (bind || (hasOwnMount(rec.spec) && n === 0)) && needsFiles(rec);
  const id = `tsvol-cli-${verb}-${process.pid}`;
  let viaServer = false;
  if (needsMount) {
    const reply = await callServer(config.socket, '/VolumeDriver.Mount', { Name: name, ID: id });
    viaServer = reply !== undefined;
    const mp = reply === undefined ? await service.mount(name, id) : String(reply.Mountpoint);
    if (bind) dir = mp;
  }
  try {
    return await fn(dir, rec);
  } finally {
    if (needsMount) {
      if (viaServer) await callServer(config.socket, '/VolumeDriver.Unmount', { Name: name, ID: id });
      else await service.unmount(name, id);
    }
  }
}

/** Registers `tsvol volume`. */
export function registerVolume(program: Command): void {
  const volume = program.command('volume').description('volumes: list, inspect, export, import, commit, clone');
  volume
    .command('ls')
    .option('--json', 'machine-readable output')
    .description('list volumes')
    .action(async (opts: { json?: boolean }) => {
      await withContext(async ({ service }) => {
        const infos = service.list().map((v) => service.get(v.name));
        if (opts.json) return void process.stdout.write(`${JSON.stringify(infos, null, 2)}\n`);
        process.stdout.write(
          table([
            ['NAME', 'KIND', 'LIMIT', 'MOUNTS', 'CREATED'],
            ...infos.map((i) => [i.name, String(i.status.kind), typeof i.status.limit === 'number' ? humanSize(i.status.limit) : '-', String(i.status.mounts), i.createdAt]),
          ]),
        );
      });
    });
  volume
    .command('inspect')
    .argument('<name>', 'volume name')
    .option('--json', 'machine-readable output (the default; kept for symmetry)')
    .description("a volume's details and its usage, measured now")
    .action(async (name: string) => {
      await withContext(async ({ service }) => {
        const usage = await service.measureUsage(name);
        const info = service.get(name);
        process.stdout.write(`${JSON.stringify({ ...info, status: { ...info.status, usage } }, null, 2)}\n`);
      });
    });
  volume
    .command('export')
    .argument('<name>', 'volume name')
    .option('-o, --output <file>', 'write to a file instead of standard output')
    .option('--gzip', 'compress with gzip')
    .description("the volume's contents as a tar stream (a volume in use is exported as it is now)")
    .action(async (name: string, opts: { output?: string; gzip?: boolean }) => {
      await withContext(async (ctx) => {
        await withContents(ctx, name, 'exporting', async (dir) => {
          const tar = exportTree(dir);
          const out = opts.gzip ? (Readable.from(tar).pipe(createGzip()) as AsyncIterable<Buffer>) : tar;
          await writeOut(out, opts.output);
        });
      });
    });
  volume
    .command('commit')
    .argument('<name>', 'volume name')
    .option('--tag <tag>', 'also name the new layer')
    .description("a new read-only layer from the volume's current state (a layered volume: on top of its layer)")
    .action(async (name: string, opts: { tag?: string }) => {
      await withContext(async (ctx) => {
        const layered = createLayeredVolumes(ctx.layout);
        const layer = await withContents(ctx, name, 'committing', (dir, rec) => layered.commit(rec, dir), (rec) => rec.spec.kind !== 'layered');
        if (opts.tag !== undefined) await layered.layers.tag(layer.id, opts.tag);
        process.stdout.write(`${layer.id}\n`);
      });
    });
  volume
    .command('import')
    .argument('<name>', 'the new volume')
    .argument('<file>', 'a tar, plain or gzip; - for standard input')
    .description('a new volume from a tar (refuses an existing name)')
    .action(async (name: string, file: string) => {
      // Opened here, synchronously, so a missing file is an error now and not an unhandled stream event.
      const fd = file === '-' ? undefined : fs.openSync(file, 'r');
      const input = fd === undefined ? process.stdin : fs.createReadStream('', { fd, highWaterMark: 1 << 20 });
      const total = fd === undefined ? undefined : fs.fstatSync(fd).size;
      await withContext(async ({ layout, store }) => {
        const r = await importVolume(layout, store, name, withProgress('importing', input as AsyncIterable<Buffer>, total));
        process.stdout.write(`${r.record.name}\n`);
      });
    });
  volume
    .command('clone')
    .argument('<src>', 'the volume to copy')
    .argument('<dst>', 'the new volume')
    .description('a new volume with a full copy of another (same as docker volume create -o from=SRC)')
    .action(async (src: string, dst: string) => {
      const config = loadConfig();
      const viaServer = await callServer(config.socket, '/VolumeDriver.Create', { Name: dst, Opts: { from: src } });
      if (viaServer === undefined) await withContext(({ service }) => service.create(dst, new Map([['from', src]])));
      process.stdout.write(`${dst}\n`);
    });
}
