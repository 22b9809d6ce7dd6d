/**
 * `tsvol image …`: load, save, ls, inspect, history, tag, rm (#11). Thin: parse, call the image
 * operations (src/images/image-ops.ts), print. Each command is a request to the running server, or runs
 * in-process under the server lock when none answers (src/cli/client.ts), like `tsvol layer`.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { blobsToFetch, pushImage, pullStream, resolvePull } from '../images/registry.js';
import { withImageOps, withOps } from './client.js';
import { humanSize, table } from './format.js';
import { layerProgress } from './layer-progress.js';
import { withProgress, writeOut } from './progress.js';

const short = (id: string | undefined): string => (id ? id.slice(7, 19) : '<missing>');

function print(json: boolean, data: unknown, rows: () => string[][]): void {
  process.stdout.write(json ? `${JSON.stringify(data, null, 2)}\n` : table(rows()));
}

/** Registers `tsvol image`. */
export function registerImage(program: Command): void {
  const image = program.command('image').description('images: named layer chains with their config, in Docker and OCI formats');
  image
    .command('load')
    .option('-i, --input <file>', 'read from a file instead of standard input')
    .description('load images from a docker save archive (Docker 20.10 or ≥ 25) or an OCI layout tar, plain or gzip')
    .action(async (opts: { input?: string }) => {
      // Opened here, synchronously, so a missing file is an error now and not an unhandled stream event.
      const fd = opts.input === undefined ? undefined : fs.openSync(opts.input, 'r');
      const input = fd === undefined ? process.stdin : fs.createReadStream('', { fd, highWaterMark: 1 << 20 });
      const total = fd === undefined ? undefined : fs.fstatSync(fd).size;
      const loaded = await withImageOps(loadConfig(), (ops) => ops.load(withProgress('loading', input as AsyncIterable<Buffer>, total)));
      for (const img of loaded) {
        if (img.names.length === 0) process.stdout.write(`Loaded image ID: ${img.id}\n`);
        for (const n of img.names) process.stdout.write(`Loaded image: ${n}\n`);
      }
    });
  image
    .command('pull')
    .argument('<ref>', 'NAME[:TAG] or NAME@sha256:DIGEST; 127.0.0.0/8 registries over plain HTTP')
    .description('pull an image from a registry (distribution spec v2): stored layers are skipped, up to 3 fetched at once, every digest verified')
    .action(async (ref: string) => {
      // Fetched here, in the CLI (a managed plugin has no network); the store checks and unpacks the bytes
      // as they arrive.
      const r = await resolvePull(ref);
      const progress = layerProgress();
      const loaded = await withOps(loadConfig(), async (ops) => {
        const stored = await ops.images.stored({ diffIds: r.diffIds, blobs: r.layers.map((l) => l.digest) });
        const fetch = blobsToFetch(r, stored);
        const fetching = new Set(fetch.map((b) => b.digest));
        for (const l of r.layers) progress.add(l.digest, fetching.has(l.digest) ? 'Waiting' : 'Already exists', l.size);
        try {
          const done = await ops.images.pull(
            pullStream(r, fetch, {
              bytes: (d, n) => progress.bytes(d, 'Downloading', n),
              downloaded: (d) => progress.status(d, 'Download complete'),
            }),
          );
          // Stored: each fetched layer was unpacked as it arrived.
          for (const d of fetching) progress.status(d, 'Pull complete');
          return done;
        } finally {
          progress.finish();
        }
      });
      process.stdout.write(`Digest: ${r.manifest.digest}\n`);
      for (const img of loaded) for (const n of img.names) process.stdout.write(`Pulled image: ${n}\n`);
    });
  image
    .command('push')
    .argument('<ref>', 'a stored image reference with its registry: HOST[:PORT]/NAME:TAG')
    .description('push an image to a registry (distribution spec v2): a pulled image as it came (same digest), blobs the registry has skipped or mounted')
    .action(async (ref: string) => {
      // Sent from the CLI (a managed plugin has no network); layers and blobs stream from the store.
      const progress = layerProgress();
      const result = await withOps(loadConfig(), async (ops) => {
        const documents = await ops.images.documents(ref);
        try {
          return await pushImage(
            ref,
            {
              documents,
              exportLayer: (id, sink) => ops.layers.exportLayer(id, sink),
              readBlob: (digest, sink) => ops.images.readBlob(digest, sink),
            },
            {
              start: (layers) => {
                for (const l of layers) progress.add(l.key, 'Preparing', l.size);
              },
              bytes: (key, n) => progress.bytes(key, 'Pushing', n),
              finished: (key, how) => progress.status(key, how === 'exists' ? 'Layer already exists' : how === 'mounted' ? 'Mounted' : 'Pushed'),
            },
          );
        } finally {
          progress.finish();
        }
      });
      process.stdout.write(`${ref}: digest: ${result.digest}\n`);
    });
  image
    .command('save')
    .argument('<ref...>', 'image references or IDs')
    .option('-o, --output <file>', 'write to a file instead of standard output')
    .description('a docker save (20.10) archive of the images, which docker load accepts')
    .action(async (refs: string[], opts: { output?: string }) => {
      await withImageOps(loadConfig(), (ops) =>
        ops.save(refs, (tar) => writeOut(tar, opts.output, 'saving')),
      );
    });
  image
    .command('ls')
    .option('--json', 'machine-readable output')
    .description('list images, like docker image ls')
    .action(async (opts: { json?: boolean }) => {
      const images = await withImageOps(loadConfig(), (ops) => ops.list());
      print(!!opts.json, images, () => [
        ['REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE'],
        ...images.map((i) => [i.repository, i.tag, short(i.id), i.created ?? '-', humanSize(i.size)]),
      ]);
    });
  image
    .command('inspect')
    .argument('<ref>', 'image reference or ID')
    .option('--json', 'the whole record, config and manifest included (the default)')
    .description('an image: ID, manifest digest, names, layers, config and manifest, as JSON')
    .action(async (ref: string) => {
      const details = await withImageOps(loadConfig(), (ops) => ops.inspect(ref));
      process.stdout.write(`${JSON.stringify(details, null, 2)}\n`);
    });
  image
    .command('history')
    .argument('<ref>', 'image reference or ID')
    .option('--json', 'machine-readable output')
    .description('one row per build step, newest first, like docker history (0 B for steps without a layer)')
    .action(async (ref: string, opts: { json?: boolean }) => {
      const rows = await withImageOps(loadConfig(), (ops) => ops.history(ref));
      print(!!opts.json, rows, () => [
        ['LAYER', 'CREATED', 'CREATED BY', 'SIZE', 'COMMENT'],
        ...rows.map((r) => [short(r.layer), r.created ?? '-', r.createdBy.length > 60 ? `${r.createdBy.slice(0, 57)}...` : r.createdBy, humanSize(r.size), r.comment ?? '']),
      ]);
    });
  image
    .command('tag')
    .argument('<source>', 'image reference or ID')
    .argument('<target>', 'the new name, NAME[:TAG]')
    .description('give an image another name')
    .action(async (source: string, target: string) => {
      await withImageOps(loadConfig(), (ops) => ops.tag(source, target));
    });
  image
    .command('rm')
    .argument('<ref>', 'image reference or ID')
    .description('remove an image reference (its layers stay until `tsvol layer gc`)')
    .action(async (ref: string) => {
      const { untagged } = await withImageOps(loadConfig(), (ops) => ops.remove(ref));
      for (const u of untagged) process.stdout.write(`Untagged: ${u}\n`);
    });
}
