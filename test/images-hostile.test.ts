/**
 * Hostile image archives (`tsvol image load`, #11): every malformed shape is a clear refusal naming the
 * thing, stores nothing (no image, no layer, nothing left in tmp/), and a shape that costs memory or time
 * by repetition is bounded. The CLI on a data root with no server (its local path), real tar bytes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import test from 'ava';
import { blankHeader, encodeHeader, padding } from '../src/layers/tar/format.js';
import { CLI, cleanupDir, tempDir } from './helpers/server.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const file = (p: string, body: Buffer | string): Buffer => {
  const b = Buffer.from(body);
  return Buffer.concat([encodeHeader(blankHeader(p, 'file', { mode: 0o644, size: b.length })), b, Buffer.alloc(padding(b.length))]);
};
const link = (p: string, type: 'symlink' | 'hardlink', linkname: string): Buffer => encodeHeader(blankHeader(p, type, { mode: 0o777, linkname }));
const dir = (p: string): Buffer => encodeHeader(blankHeader(p, 'dir', { mode: 0o755 }));
const tarOf = (entries: Buffer[]): Buffer => Buffer.concat([...entries, Buffer.alloc(1024)]);

const layer = tarOf([file('hello.txt', 'hello')]);
const diffId = `sha256:${sha(layer)}`;
const configOf = (diffIds: string[]): string => JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } });
const config = configOf([diffId]);
const configName = `${sha(config)}.json`;
const saveOf = (manifest: unknown, extra: Buffer[] = [file(configName, config), file('l/layer.tar', layer)]): Buffer =>
  tarOf([...extra, file('manifest.json', JSON.stringify(manifest))]);

/**
 * Runs `tsvol image load` on `data` with `input`, killed after `timeoutMs`; resolves to its exit status,
 * output, peak RSS (MiB, VmHWM polled) and run time.
 */
function load(data: string, input: Buffer | Iterable<Buffer>, timeoutMs = 60_000): Promise<{ status: number | null; out: string; peakMb: number; ms: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const p = spawn(process.execPath, [CLI, 'image', 'load'], { env: { ...process.env, TSVOL_DATA: data }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let peakMb = 0;
    const poll = setInterval(() => {
      try {
        peakMb = Math.max(peakMb, Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024);
      } catch {
        // The process is gone: its last reading stands.
      }
    }, 20);
    const killer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    p.on('close', (status) => {
      clearInterval(poll);
      clearTimeout(killer);
      resolve({ status, out, peakMb, ms: Date.now() - started });
    });
    p.stdin.on('error', () => undefined); // a refusal may come before all of the input is written
    if (Buffer.isBuffer(input)) p.stdin.end(input);
    else Readable.from(input).on('error', () => undefined).pipe(p.stdin);
  });
}

/** What a load may have left: images, layer diffs, staging entries. */
function stateOf(data: string): string[] {
  const ls = (p: string): string[] => (fs.existsSync(p) ? fs.readdirSync(p).map((e) => `${path.relative(data, p)}/${e}`) : []);
  return [...ls(path.join(data, 'layers', 'diffs')), ...ls(path.join(data, 'tmp')), ...ls(path.join(data, 'images'))];
}

const refusals: [string, Buffer, RegExp][] = [
  ['manifest.json an object', saveOf({ Config: configName, Layers: ['l/layer.tar'] }), /manifest\.json refused: not a JSON list/],
  ['an entry a list', saveOf([[configName]]), /manifest\.json entry 0 refused: not a JSON object/],
  ['Layers an object', saveOf([{ Config: configName, Layers: { 0: 'l/layer.tar' } }]), /Layers must be a list of paths/],
  ['a layer that is a directory', saveOf([{ Config: configName, Layers: ['l'] }], [file(configName, config), dir('l/'), file('l/layer.tar', layer)]), /"l" is missing/],
  ['a layer path with ..', saveOf([{ Config: configName, Layers: ['l/../../layer.tar'] }]), /leaves the archive/],
  ['a symlink out of the archive', saveOf([{ Config: configName, Layers: ['x.tar'] }], [file(configName, config), link('x.tar', 'symlink', '../../etc/passwd')]), /leaves the archive/],
  ['an absolute symlink', saveOf([{ Config: configName, Layers: ['x.tar'] }], [file(configName, config), link('x.tar', 'symlink', '/etc/passwd')]), /absolute path/],
  ['a hardlink out of the archive', saveOf([{ Config: configName, Layers: ['x.tar'] }], [file(configName, config), link('x.tar', 'hardlink', '../x')]), /leaves the archive/],
  ['a link loop', saveOf([{ Config: configName, Layers: ['a.tar'] }], [file(configName, config), link('a.tar', 'symlink', 'b.tar'), link('b.tar', 'symlink', 'a.tar')]), /"a\.tar" is missing/],
  ['a config that is a layer', saveOf([{ Config: 'l/layer.tar', Layers: ['l/layer.tar'] }]), /is a layer, not a document/],
  ['a layer that is the config', saveOf([{ Config: configName, Layers: [configName] }]), /layer 0 \(.*\.json\) of image/],
  ['a RepoTag that is no reference', saveOf([{ Config: configName, RepoTags: ['Not A Ref!'], Layers: ['l/layer.tar'] }]), /invalid image reference "Not A Ref!"/],
  ['RepoTags a string', saveOf([{ Config: configName, RepoTags: 'x:1', Layers: ['l/layer.tar'] }]), /RepoTags must be a list of strings/],
  ['an entry twice', tarOf([file(configName, config), file('l/layer.tar', layer), file('l/layer.tar', layer)]), /"l\/layer\.tar" appears twice/],
  ['a device', tarOf([encodeHeader(blankHeader('dev', 'char', { mode: 0o644 }))]), /is a char/],
  ['too few layers', saveOf([{ Config: configName, Layers: [] }]), /lists 0 layers but its config's rootfs\.diff_ids has 1/],
  ['a truncated archive', saveOf([{ Config: configName, Layers: ['l/layer.tar'] }]).subarray(0, 1536), /image archive refused/],
  ['a truncated gzip archive', zlib.gzipSync(saveOf([{ Config: configName, Layers: ['l/layer.tar'] }])).subarray(0, 200), /image archive refused/],
  ['no manifest', tarOf([file(configName, config)]), /no manifest\.json or index\.json/],
  ['index.json manifests an object', tarOf([file('index.json', JSON.stringify({ schemaVersion: 2, manifests: {} }))]), /manifests must be an array/],
];

test('malformed image archives are refused by name and store nothing', async (t) => {
  const data = tempDir();
  t.teardown(() => cleanupDir(data));
  // Four at a time, each on a data root of its own (a load holds its root's lock).
  for (let i = 0; i < refusals.length; i += 4) {
    await Promise.all(
      refusals.slice(i, i + 4).map(async ([what, archive, message]) => {
        const own = tempDir();
        t.teardown(() => cleanupDir(own));
        const r = await load(own, archive);
        t.not(r.status, 0, `${what}: refused`);
        t.regex(r.out, message, what);
        t.notRegex(r.out, /internal|TSVOL_INTERNAL|    at /i, `${what}: not an internal error`);
        t.deepEqual(stateOf(own), [], `${what}: nothing stored`);
      }),
    );
  }
  // The good archive, gzip-wrapped, with its layer listed twice under two names (a hardlink): loads.
  const good = saveOf([{ Config: `two.json`, RepoTags: ['example.com/hostile:ok'], Layers: ['l/layer.tar', 'again.tar'] }], [file('two.json', configOf([diffId, diffId])), file('l/layer.tar', layer), link('again.tar', 'hardlink', 'l/layer.tar')]);
  const ok = await load(data, zlib.gzipSync(good));
  t.is(ok.status, 0, ok.out);
  t.regex(ok.out, /Loaded image: example\.com\/hostile:ok/);
});

/** An OCI manifest over `layer` (gzip-free), padded with trailing spaces to `size` bytes (still valid JSON). */
function paddedManifest(configDigest: string, configSize: number, layers: number, size: number): Buffer {
  const json = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: configSize },
    layers: Array.from({ length: layers }, () => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: diffId, size: layer.length })),
  });
  return Buffer.concat([Buffer.from(json), Buffer.alloc(Math.max(0, size - json.length), 0x20)]);
}

test('a document listed many times is read within a fixed budget: refused, memory bounded', async (t) => {
  const data = tempDir();
  t.teardown(() => cleanupDir(data));
  // One 4 MiB manifest, named 100 times by index.json: 400 MiB held at once if each mention is read.
  const manifest = paddedManifest(`sha256:${sha(config)}`, config.length, 1, 4 << 20);
  const desc = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length };
  const archive = tarOf([
    file('oci-layout', '{"imageLayoutVersion":"1.0.0"}'),
    file(`blobs/sha256/${sha(layer)}`, layer),
    file(`blobs/sha256/${sha(config)}`, config),
    file(`blobs/sha256/${sha(manifest)}`, manifest),
    file('index.json', JSON.stringify({ schemaVersion: 2, manifests: Array.from({ length: 100 }, () => desc) })),
  ]);
  const r = await load(data, archive);
  t.not(r.status, 0);
  t.regex(r.out, /its documents, as its manifests and indexes list them, come to more than 67108864 bytes/);
  t.true(r.peakMb < 250, `peak RSS ${r.peakMb.toFixed(0)} MiB`);
  t.deepEqual(stateOf(data), []);
});

test('an image deeper than 500 layers is refused before its layers cost anything', async (t) => {
  const data = tempDir();
  t.teardown(() => cleanupDir(data));
  // manifest.json naming one layer 20,000 times, over a Docker ≥ 25 layout whose 2 MiB manifest matches
  // the config: each entry and layer parsing that manifest again is quadratic (minutes).
  const deepConfig = configOf(Array.from({ length: 20_000 }, () => diffId));
  const manifest = paddedManifest(`sha256:${sha(deepConfig)}`, deepConfig.length, 1, 2 << 20);
  const desc = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length };
  const archive = tarOf([
    file(`blobs/sha256/${sha(layer)}`, layer),
    file(`blobs/sha256/${sha(deepConfig)}`, deepConfig),
    file(`blobs/sha256/${sha(manifest)}`, manifest),
    file('index.json', JSON.stringify({ schemaVersion: 2, manifests: [desc] })),
    file('manifest.json', JSON.stringify([{ Config: `blobs/sha256/${sha(deepConfig)}`, Layers: Array.from({ length: 20_000 }, () => `blobs/sha256/${sha(layer)}`) }])),
  ]);
  const r = await load(data, archive, 30_000);
  t.not(r.status, 0);
  t.regex(r.out, /20000 layers; an image has at most 500/);
  t.true(r.ms < 15_000, `took ${r.ms} ms`);
  // The same depth in an OCI manifest or a config alone.
  const oci = paddedManifest(`sha256:${sha(deepConfig)}`, deepConfig.length, 501, 0);
  const ociDesc = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(oci)}`, size: oci.length };
  const r2 = await load(data, tarOf([file(`blobs/sha256/${sha(oci)}`, oci), file('index.json', JSON.stringify({ schemaVersion: 2, manifests: [ociDesc] }))]));
  t.regex(r2.out, /501 layers; an image has at most 500/);
  const r3 = await load(data, saveOf([{ Config: 'deep.json', Layers: ['l/layer.tar'] }], [file('deep.json', deepConfig), file('l/layer.tar', layer)]));
  t.regex(r3.out, /20000 diff_ids; an image has at most 500 layers/);
  t.deepEqual(stateOf(data), []);
});

test('entries that are not layers are bounded on disk: one past 8 MiB, or all past 256 MiB, is refused early and stores nothing', async (t) => {
  const data = tempDir();
  t.teardown(() => cleanupDir(data));
  // One unreferenced 9 MiB entry that is no layer (an old loader spooled it whole and loaded the image).
  const big = Buffer.alloc(9 << 20, 0x78);
  const r = await load(data, saveOf([{ Config: configName, Layers: ['l/layer.tar'] }], [file(configName, config), file('l/layer.tar', layer), file('junk.bin', big)]));
  t.not(r.status, 0, r.out);
  t.regex(r.out, /"junk\.bin" is 9437184 bytes and not a layer/);
  t.deepEqual(stateOf(data), []);
  // Many entries under the per-entry bound, 7 MiB each: refused at the total, long before the input ends
  // (streamed: 40 of them would be 280 MiB).
  const seven = Buffer.alloc(7 << 20, 0x78);
  function* many(): Generator<Buffer> {
    yield file(configName, config);
    for (let i = 0; i < 40; i++) yield file(`junk-${i}.bin`, seven);
    yield file('l/layer.tar', layer);
    yield file('manifest.json', JSON.stringify([{ Config: configName, Layers: ['l/layer.tar'] }]));
    yield Buffer.alloc(1024);
  }
  const r2 = await load(data, many());
  t.not(r2.status, 0, r2.out);
  t.regex(r2.out, /entries that are not layers come to more than 268435456 bytes \(at "junk-36\.bin"\)/);
  t.deepEqual(stateOf(data), []);
  // A pre-POSIX (v7) tar layer is a layer, not a spooled entry: a v7 header has no "ustar" magic.
  const v7 = Buffer.from(tarOf([file('hello.txt', 'hello')]));
  v7.fill(0, 257, 265); // no magic, no version: a v7 header; fix its checksum
  v7.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += v7[i]!;
  v7.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  const v7Diff = `sha256:${sha(v7)}`;
  const v7Config = configOf([v7Diff]);
  const v7Name = `${sha(v7Config)}.json`;
  const r3 = await load(data, saveOf([{ Config: v7Name, RepoTags: ['example.com/v7:1'], Layers: ['v/layer.tar'] }], [file(v7Name, v7Config), file('v/layer.tar', v7)]));
  t.is(r3.status, 0, r3.out);
});
