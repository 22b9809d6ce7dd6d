/**
 * Images (#11) against the real tools: two images built by `docker build` (classic builder, --network
 * none, FROM the busybox test image) sharing their first steps; `docker save` → `tsvol image load` keeps
 * Docker's DiffIDs, layer sharing and history; `tsvol image save` → `docker load` → `docker run` works;
 * images hold their layers; bad archives are refused and store nothing. Shares dockerd with the e2e suite:
 * every image name here is unique to this run, and dockerd is never stopped. Needs root.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import anyTest, { type TestFn } from 'ava';
import { encodeHeader, padding, type TarHeader } from '../src/layers/tar/format.js';
import { DOCKER, docker, dockerFails, setupEngine, type EngineEnv } from './helpers/docker.js';
import { startRegistry } from './helpers/registry.js';
import { CLI, ROOT, cleanupDir, startTestServer, tempDir } from './helpers/server.js';

const UNIQ = `${process.pid}-${Date.now().toString(36)}`;
const BASE = `tsvol-img-base:${UNIQ}`;
const APP_A = `tsimg/app-a:${UNIQ}`;
const APP_B = `tsimg/app-b:${UNIQ}`;

interface Ctx {
  env: EngineEnv;
  saved: string;
}
const test = anyTest as TestFn<Ctx>;

interface Tsvol {
  (args: string[], input?: Buffer): string;
  fails(args: string[], input?: Buffer): string;
  data: string;
}

/** The fresh data roots world() made: deleted when the file's tests are done. */
const worlds: string[] = [];

/** The tsvol CLI on its own fresh data root (no server: each command works under the server lock). */
function world(dataRoot?: string): Tsvol {
  let data = dataRoot;
  if (data === undefined) {
    const dir = tempDir('tsvol-img-');
    worlds.push(dir);
    data = path.join(dir, 'data');
  }
  const run = (args: string[], input?: Buffer): { status: number | null; out: string; err: string } => {
    const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, TSVOL_DATA: data }, input, maxBuffer: 1 << 28 });
    return { status: r.status, out: r.stdout.toString().trim(), err: r.stderr.toString() };
  };
  const fn = ((args: string[], input?: Buffer) => {
    const r = run(args, input);
    if (r.status !== 0) throw new Error(`tsvol ${args.join(' ')}: ${r.err}`);
    return r.out;
  }) as Tsvol;
  fn.fails = (args, input) => {
    const r = run(args, input);
    if (r.status === 0) throw new Error(`tsvol ${args.join(' ')} succeeded: ${r.out}`);
    return r.err;
  };
  fn.data = data;
  return fn;
}

function build(dir: string, tag: string, copyName: string, copyText: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, copyName), copyText);
  fs.writeFileSync(
    path.join(dir, 'Dockerfile'),
    [
      `FROM ${BASE}`,
      'ENV STAGE=base',
      'RUN echo one > /one.txt',
      'RUN mkdir -p /app && echo two > /app/two.txt',
      `COPY ${copyName} /app/${copyName}`,
      `ENTRYPOINT ["/bin/cat", "/app/${copyName}"]`,
      '',
    ].join('\n'),
  );
  const r = spawnSync(DOCKER, ['build', '--network', 'none', '-t', tag, dir], { env: { ...process.env, DOCKER_BUILDKIT: '0' }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`docker build ${tag}: ${r.stderr}`);
}

interface DockerImage {
  Id: string;
  RootFS: { Layers: string[] };
}
const inspectDocker = (ref: string): DockerImage => (JSON.parse(docker('image', 'inspect', ref)) as DockerImage[])[0]!;

test.before(async (t) => {
  const env = await setupEngine(BASE);
  build(path.join(env.workDir, 'a'), APP_A, 'a.txt', 'hello from a\n');
  build(path.join(env.workDir, 'b'), APP_B, 'b.txt', 'hello from b\n');
  const saved = path.join(env.workDir, 'both.tar');
  docker('save', '-o', saved, APP_A, APP_B);
  t.context = { env, saved };
});

test.after.always((t) => {
  spawnSync(DOCKER, ['rmi', '-f', APP_A, APP_B, `${APP_A}-back`, `tsvol-img-saved:${UNIQ}`]);
  t.context.env?.teardown();
  for (const dir of worlds) cleanupDir(dir);
});

interface Details {
  id: string;
  digest: string;
  top: string;
  layers: string[];
  repoTags: string[];
  manifest: unknown;
  config: { rootfs: { diff_ids: string[] }; history: { created_by: string; empty_layer?: boolean }[] };
}

test.serial('docker save → tsvol image load: DiffIDs, IDs, shared layers and history match Docker', (t) => {
  const tsvol = world();
  const out = tsvol(['image', 'load', '-i', t.context.saved]);
  t.deepEqual(out.split('\n').sort(), [`Loaded image: ${APP_A}`, `Loaded image: ${APP_B}`].sort());
  const a = JSON.parse(tsvol(['image', 'inspect', APP_A])) as Details;
  const b = JSON.parse(tsvol(['image', 'inspect', `docker.io/${APP_B}`])) as Details;
  const da = inspectDocker(APP_A);
  const db = inspectDocker(APP_B);
  t.is(a.id, da.Id);
  t.is(b.id, db.Id);
  t.deepEqual(a.config.rootfs.diff_ids, da.RootFS.Layers);
  t.deepEqual(b.config.rootfs.diff_ids, db.RootFS.Layers);
  t.regex(a.digest, /^sha256:[0-9a-f]{64}$/);
  t.deepEqual(a.repoTags, [APP_A]);
  // Layer sharing: the base and both RUN layers are one set of layers; each COPY its own.
  const shared = a.layers.filter((l) => b.layers.includes(l));
  t.is(shared.length, 3);
  t.is(a.layers.length, 4);
  const layers = JSON.parse(tsvol(['layer', 'ls', '--json'])) as { id: string }[];
  t.is(layers.length, 5, 'the three shared layers are stored once');
  // History: one row per docker history row, created_by and empty layers as Docker shows them.
  const hist = JSON.parse(tsvol(['image', 'history', '--json', APP_A])) as { createdBy: string; size: number; emptyLayer: boolean }[];
  const dockerHist = docker('history', '--no-trunc', '--format', '{{.CreatedBy}}\t{{.Size}}', APP_A).split('\n');
  t.is(hist.length, dockerHist.length);
  for (const [i, row] of hist.entries()) {
    const [createdBy, size] = dockerHist[i]!.split('\t');
    t.is(row.createdBy, createdBy ?? '');
    if (size === '0B') t.is(row.size, 0);
  }
  t.true(hist.some((r) => r.emptyLayer && /ENTRYPOINT/.test(r.createdBy) && r.size === 0));
  // ls shows Docker's familiar names.
  const ls = JSON.parse(tsvol(['image', 'ls', '--json'])) as { repository: string; tag: string }[];
  t.deepEqual(ls.map((i) => `${i.repository}:${i.tag}`).sort(), [APP_A, APP_B].sort());
  t.regex(tsvol(['image', 'ls']), /REPOSITORY\s+TAG\s+IMAGE ID/);
  // Loading again stores nothing new.
  tsvol(['image', 'load', '-i', t.context.saved]);
  t.is((JSON.parse(tsvol(['layer', 'ls', '--json'])) as unknown[]).length, 5);
});

test.serial('images hold their layers: layer rm and gc respect them; image rm drops the reference only', (t) => {
  const tsvol = world();
  tsvol(['image', 'load'], fs.readFileSync(t.context.saved));
  const a = JSON.parse(tsvol(['image', 'inspect', APP_A])) as Details;
  t.regex(tsvol.fails(['layer', 'rm', a.top]), /image "docker\.io\/tsimg\/app-a/);
  t.deepEqual(JSON.parse(tsvol(['layer', 'gc', '--json'])), []);
  tsvol(['image', 'tag', APP_A, 'again']);
  t.is((JSON.parse(tsvol(['image', 'inspect', 'docker.io/library/again:latest'])) as Details).id, a.id);
  t.regex(tsvol(['image', 'rm', 'again']), /Untagged: again:latest/);
  t.regex(tsvol.fails(['image', 'inspect', 'again']), /not found/);
  t.regex(tsvol(['image', 'rm', APP_A]), new RegExp(`Untagged: ${APP_A}`));
  t.is((JSON.parse(tsvol(['layer', 'ls', '--json'])) as unknown[]).length, 5, 'image rm leaves the layers');
  const removed = JSON.parse(tsvol(['layer', 'gc', '--json'])) as string[];
  t.is(removed.length, 1, "gc takes only app-a's own COPY layer");
  // By ID: the image's ID prefix names it.
  const b = JSON.parse(tsvol(['image', 'inspect', APP_B])) as Details;
  t.is((JSON.parse(tsvol(['image', 'inspect', b.id.slice(7, 19)])) as Details).id, b.id);
});

test.serial('tsvol image save → docker load → docker run', (t) => {
  const tsvol = world();
  tsvol(['image', 'load', '-i', t.context.saved]);
  tsvol(['image', 'tag', APP_A, `${APP_A}-back`]);
  const out = path.join(t.context.env.workDir, 'out.tar');
  tsvol(['image', 'save', `${APP_A}-back`, '-o', out]);
  const loaded = docker('load', '-i', out);
  t.regex(loaded, new RegExp(`Loaded image: ${APP_A}-back`));
  t.is(inspectDocker(`${APP_A}-back`).Id, inspectDocker(APP_A).Id);
  t.is(docker('run', '--rm', '--network', 'none', `${APP_A}-back`), 'hello from a');
  // Byte-exact: load what we saved into a fresh store: the same IDs.
  const again = world();
  again(['image', 'load', '-i', out]);
  t.is((JSON.parse(again(['image', 'inspect', `${APP_A}-back`])) as Details).id, inspectDocker(APP_A).Id);
});

test.serial('container create --from an image', (t) => {
  const tsvol = world();
  tsvol(['image', 'load', '-i', t.context.saved]);
  const merged = tsvol(['container', 'create', `ctr-${UNIQ}`, '--from', APP_B]);
  try {
    t.is(fs.readFileSync(path.join(merged, 'app', 'b.txt'), 'utf8'), 'hello from b\n');
    t.is(fs.readFileSync(path.join(merged, 'one.txt'), 'utf8'), 'one\n');
  } finally {
    tsvol(['container', 'rm', `ctr-${UNIQ}`]);
  }
  t.regex(tsvol.fails(['container', 'create', 'x', '--from', 'no-such-image']), /neither a layer nor an image/);
});

test.serial('docker volume create -o image=REF: a copy-on-write volume on the image, in a real container', async (t) => {
  // A legacy (spec-file) plugin with a unique name: a tsvol server of this test's own, next to the
  // managed plugin the e2e suite may be running on the same engine.
  const server = await startTestServer();
  const driver = `tsvol-img-${UNIQ}`;
  const spec = path.join('/etc/docker/plugins', `${driver}.spec`);
  fs.mkdirSync(path.dirname(spec), { recursive: true });
  fs.writeFileSync(spec, `unix://${server.socket}\n`);
  const vol = `imgvol-${UNIQ}`;
  try {
    const tsvol = world(server.data); // through the server's control socket
    tsvol(['image', 'load', '-i', t.context.saved]);
    docker('volume', 'create', '-d', driver, '-o', `image=${APP_B}`, vol);
    const status = (JSON.parse(docker('volume', 'inspect', vol)) as { Status: { kind: string; image?: string; layer: string } }[])[0]!.Status;
    t.is(status.kind, 'layered');
    t.is(status.image, APP_B);
    t.is(status.layer, (JSON.parse(tsvol(['image', 'inspect', APP_B])) as Details).top);
    const run = (cmd: string): string => docker('run', '--rm', '--network', 'none', '-v', `${vol}:/d`, BASE, 'sh', '-c', cmd);
    t.is(run('cat /d/app/b.txt /d/one.txt'), 'hello from b\none');
    run('echo changed > /d/one.txt');
    t.is(run('cat /d/one.txt'), 'changed');
    // The image is untouched: a second volume on it sees the original file.
    docker('volume', 'create', '-d', driver, '-o', `image=${APP_B}`, `${vol}-2`);
    t.is(docker('run', '--rm', '--network', 'none', '-v', `${vol}-2:/d`, BASE, 'cat', '/d/one.txt'), 'one');
    // The volume holds the image's layer even once the image's name is gone.
    tsvol(['image', 'rm', APP_B]);
    tsvol(['layer', 'gc']);
    t.is(run('cat /d/app/b.txt'), 'hello from b');
    // A missing image: the Err says how to bring it in on the host.
    t.regex(dockerFails('volume', 'create', '-d', driver, '-o', 'image=no-such-image:1', `${vol}-x`), /tsvol image load/);
  } finally {
    spawnSync(DOCKER, ['volume', 'rm', '-f', vol, `${vol}-2`]);
    fs.rmSync(spec, { force: true });
    await server.stop();
    cleanupDir(server.dir);
  }
});

test.serial('the managed plugin (built as `make plugin` does): -o image=REF, in a real container', async (t) => {
  // Its own plugin name and config description, so the e2e suite's `tsvol` plugin is never touched (dockerd
  // refuses a second plugin with the same content).
  execFileSync(path.join(ROOT, 'plugin', 'build-rootfs.sh'), [path.join(ROOT, 'plugin', 'rootfs')], { stdio: 'ignore' });
  const dir = path.join(t.context.env.workDir, 'managed');
  fs.mkdirSync(dir);
  execFileSync('cp', ['-al', path.join(ROOT, 'plugin', 'rootfs'), path.join(dir, 'rootfs')]);
  // Not the legacy test's driver name (tsvol-img-…): dockerd keeps a legacy plugin it found by name.
  const plugin = `tsvol-managed-img-${UNIQ}`;
  // dockerd 20.10 refuses a second plugin whose rootfs digest it already holds (the e2e suite's `tsvol`
  // has this very rootfs): one new file (not a hard link) tells this copy apart.
  fs.writeFileSync(path.join(dir, 'rootfs', 'etc', 'tsvol-plugin-copy'), `${plugin}\n`);
  const config = JSON.parse(fs.readFileSync(path.join(ROOT, 'config.json'), 'utf8')) as { description: string };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, description: `${config.description} (image suite ${UNIQ})` }));
  const data = path.join(t.context.env.workDir, 'managed-data');
  fs.mkdirSync(data, { mode: 0o700 });
  const vol = `managed-img-${UNIQ}`;
  try {
    docker('plugin', 'create', plugin, dir);
    docker('plugin', 'set', plugin, `data.source=${data}`);
    docker('plugin', 'enable', plugin);
    // The plugin's server answers on data.source/control.sock: the CLI on the host loads through it.
    const tsvol = world(data);
    for (let i = 0; !fs.existsSync(path.join(data, 'control.sock')); i++) {
      if (i > 100) throw new Error('the managed plugin never made its control socket');
      await new Promise((r) => setTimeout(r, 100));
    }
    tsvol(['image', 'load', '-i', t.context.saved]);
    // The image is the plugin's too: it has no network and never pulls, and needs none of that here.
    t.regex(dockerFails('volume', 'create', '-d', plugin, '-o', `image=${APP_A}-nope`, `${vol}-x`), /tsvol image (pull|load)/);
    docker('volume', 'create', '-d', plugin, '-o', `image=${APP_B}`, vol);
    const status = (JSON.parse(docker('volume', 'inspect', vol)) as { Status: { kind: string; image?: string } }[])[0]!.Status;
    t.like(status, { kind: 'layered', image: APP_B });
    const run = (cmd: string): string => docker('run', '--rm', '--network', 'none', '-v', `${vol}:/d`, BASE, 'sh', '-c', cmd);
    t.is(run('cat /d/app/b.txt /d/one.txt'), 'hello from b\none');
    run('echo changed > /d/one.txt');
    t.is(run('cat /d/one.txt'), 'changed');
  } finally {
    spawnSync(DOCKER, ['volume', 'rm', '-f', vol]);
    spawnSync(DOCKER, ['plugin', 'disable', '-f', plugin]);
    spawnSync(DOCKER, ['plugin', 'rm', '-f', plugin]);
  }
});

interface RegistryManifest {
  mediaType: string;
  layers: { mediaType: string; digest: string; size: number }[];
}

test.serial('registry: docker push → tsvol pull → tsvol push to another repository keeps the manifest digest (blobs mounted); docker pull runs it', async (t) => {
  // A registry of this test's own on a loopback port behind a counting proxy (Docker speaks plain HTTP to
  // 127.0.0.0/8), so the e2e suite's registry on :5000 is never touched.
  const reg = await startRegistry(t.context.env.workDir, 15000 + (process.pid % 2500) * 2);
  const remote = `${reg.host}/tsimg/pulled:${UNIQ}`;
  const again = `${reg.host}/tsimg/again:${UNIQ}`;
  try {
    docker('tag', APP_A, remote);
    docker('push', remote);
    const original = (await reg.manifestDigest('tsimg/pulled', UNIQ)) ?? '';
    t.regex(original ?? '', /^sha256:[0-9a-f]{64}$/);
    const tsvol = world();
    reg.reset();
    const out = tsvol(['image', 'pull', remote]);
    t.regex(out, new RegExp(`Digest: ${original}`));
    t.regex(out, new RegExp(`Pulled image: ${remote.replace(/[.]/g, '\\.')}`));
    const d = JSON.parse(tsvol(['image', 'inspect', remote])) as Details;
    t.is(d.id, inspectDocker(APP_A).Id);
    t.is(d.digest, original);
    t.deepEqual(d.config.rootfs.diff_ids, inspectDocker(APP_A).RootFS.Layers);
    const m = JSON.parse(JSON.stringify(d.manifest)) as RegistryManifest;
    t.true(m.layers.every((l) => l.mediaType.endsWith('gzip')), 'docker pushed gzip layers');
    // The compressed blobs are kept byte-exact, one file per layer.
    const blobsDir = path.join(tsvol.data, 'blobs', 'sha256');
    t.deepEqual(fs.readdirSync(blobsDir).sort(), m.layers.map((l) => l.digest.slice(7)).sort());
    // Pushed to another repository: the very manifest and blobs, so the same digest; each layer is
    // mounted from the repository it was pulled from, not uploaded again.
    tsvol(['image', 'tag', remote, again]);
    reg.reset();
    t.is(tsvol(['image', 'push', again]), `${again}: digest: ${original}`);
    t.is(await reg.manifestDigest('tsimg/again', UNIQ), original, "the registry's Docker-Content-Digest");
    const mounts = reg.seen.filter((s) => s.method === 'POST' && s.query.has('mount'));
    t.is(mounts.length, m.layers.length);
    t.true(mounts.every((s) => s.status === 201 && s.query.get('from') === 'tsimg/pulled'));
    t.is(reg.seen.filter((s) => (s.method === 'PUT' || s.method === 'PATCH') && s.path.includes('/blobs/uploads/')).length, 1, 'only the config is uploaded');
    // Pushing again: every blob is there (HEAD), nothing is sent but the manifest.
    reg.reset();
    tsvol(['image', 'push', again]);
    t.is(reg.seen.filter((s) => s.method !== 'HEAD' && s.path.includes('/blobs/')).length, 0);
    docker('pull', again);
    t.is(inspectDocker(again).Id, d.id);
    t.is(docker('run', '--rm', '--network', 'none', again), 'hello from a');
    // By digest too.
    tsvol(['image', 'pull', `${reg.host}/tsimg/pulled@${original}`]);
    t.is((JSON.parse(tsvol(['image', 'inspect', `${reg.host}/tsimg/pulled@${original}`])) as Details).id, d.id);
    // image rm + gc frees the kept blobs once no image names their manifest.
    for (const n of [remote, again, `${reg.host}/tsimg/pulled@${original}`]) tsvol(['image', 'rm', n]);
    const removed = JSON.parse(tsvol(['layer', 'gc', '--json'])) as string[];
    t.is(removed.filter((r) => r.startsWith('blobs/')).length, m.layers.length);
    t.deepEqual(fs.readdirSync(blobsDir), []);
  } finally {
    spawnSync(DOCKER, ['rmi', '-f', remote, again]);
    await reg.stop();
  }
});

test.serial('registry: a loaded image is pushed with gzip layers (as docker push does), docker pull runs it; a missing image is a clear 404', async (t) => {
  const reg = await startRegistry(t.context.env.workDir, 15000 + (process.pid % 2500) * 2);
  const pushed = `${reg.host}/tsimg/pushed:${UNIQ}`;
  try {
    const tsvol = world();
    tsvol(['image', 'load', '-i', t.context.saved]);
    tsvol(['image', 'tag', APP_B, pushed]);
    const pushOut = tsvol(['image', 'push', pushed]);
    const digest = await reg.manifestDigest('tsimg/pushed', UNIQ);
    t.is(pushOut, `${pushed}: digest: ${digest}`);
    const m = (await (await fetch(`http://${reg.host}/v2/tsimg/pushed/manifests/${UNIQ}`, { headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json' } })).json()) as RegistryManifest;
    t.is(m.layers.length, 4);
    t.true(m.layers.every((l) => l.mediaType === 'application/vnd.docker.image.rootfs.diff.tar.gzip'));
    // Deterministic gzip: pushing again to another repository gives the same manifest.
    tsvol(['image', 'tag', APP_B, `${reg.host}/tsimg/pushed2:${UNIQ}`]);
    t.is(tsvol(['image', 'push', `${reg.host}/tsimg/pushed2:${UNIQ}`]), `${reg.host}/tsimg/pushed2:${UNIQ}: digest: ${digest}`);
    docker('pull', pushed);
    t.is(inspectDocker(pushed).Id, inspectDocker(APP_B).Id);
    t.is(docker('run', '--rm', '--network', 'none', pushed), 'hello from b');
    // A missing image: a clear error, nothing stored.
    const fresh = world();
    t.regex(fresh.fails(['image', 'pull', `${reg.host}/tsimg/nope:1`]), /not found in the registry \(404\)/);
    t.deepEqual(JSON.parse(fresh(['image', 'ls', '--json'])), []);
  } finally {
    spawnSync(DOCKER, ['rmi', '-f', pushed]);
    await reg.stop();
  }
});

test.serial('registry: a second pull downloads only the layers it lacks, 3 at a time; progress lines on a terminal; a reset mid-blob resumes', async (t) => {
  const reg = await startRegistry(t.context.env.workDir, 15000 + (process.pid % 2500) * 2);
  const a = `${reg.host}/tsimg/share-a:${UNIQ}`;
  const b = `${reg.host}/tsimg/share-b:${UNIQ}`;
  try {
    docker('tag', APP_A, a);
    docker('tag', APP_B, b);
    docker('push', a);
    docker('push', b);
    const layersOf = async (repo: string): Promise<string[]> =>
      ((await (await fetch(`http://${reg.host}/v2/${repo}/manifests/${UNIQ}`, { headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json' } })).json()) as RegistryManifest).layers.map((l) => l.digest);
    const la = await layersOf('tsimg/share-a');
    const lb = await layersOf('tsimg/share-b');
    const fresh = lb.filter((d) => !la.includes(d));
    t.is(fresh.length, 1, 'b shares all but its COPY layer with a');
    // Through a running server: the pull stream crosses its control socket.
    const server = await startTestServer();
    t.teardown(async () => {
      await server.stop();
      cleanupDir(server.dir);
    });
    const tsvol = world(server.data);
    // The first pull: every layer, each once, 3 at a time (each blob GET held 500 ms at the proxy, so the
    // overlap shows), and one of them cut mid-body (resumed with Range).
    await reg.cutBlob(la[0]!, 10_000, 1);
    await reg.delayBlobs(500);
    reg.reset();
    tsvol(['image', 'pull', a]);
    await reg.delayBlobs(0);
    t.is(reg.maxBlobGetsAtOnce(), 3, 'three downloads at once, never more');
    const gets = reg.blobGets().filter((d) => la.includes(d));
    t.deepEqual([...new Set(gets)].sort(), [...la].sort());
    t.is(gets.length, la.length + 1, 'the cut blob was asked for twice');
    t.true(reg.seen.some((s) => s.method === 'GET' && s.path.endsWith(la[0]!) && /^bytes=[1-9]\d*-$/.test(s.range ?? '')), 'resumed with Range where it was cut');
    // The second: only the layer it lacks. Under a terminal, per-layer progress lines.
    reg.reset();
    const pty = spawnSync('script', ['-qec', `${process.execPath} ${CLI} image pull ${b}`, '/dev/null'], { env: { ...process.env, TSVOL_DATA: tsvol.data }, encoding: 'utf8' });
    t.is(pty.status, 0, pty.stdout);
    t.deepEqual(reg.blobGets().filter((d) => lb.includes(d)), fresh);
    t.regex(pty.stdout, new RegExp(`${fresh[0]!.slice(7, 19)}: Pull complete`));
    t.regex(pty.stdout, new RegExp(`${la[0]!.slice(7, 19)}: Already exists`));
    t.regex(pty.stdout, /Downloading \d+\.\dMB\/\d+\.\dMB|Pull complete/);
    // Not a terminal: no progress lines, only the result.
    const plain = tsvol(['image', 'pull', b]);
    t.notRegex(plain, /Already exists|Downloading/);
    t.is((JSON.parse(tsvol(['layer', 'ls', '--json'])) as unknown[]).length, 5);
    // A blob that keeps being cut: the pull fails cleanly after its retries, and stores nothing.
    const other = world();
    await reg.cutBlob(la[0]!, 0, 100);
    t.regex(other.fails(['image', 'pull', a]), /cut short after 0 of \d+ bytes/);
    t.deepEqual(JSON.parse(other(['image', 'ls', '--json'])), []);
    t.deepEqual(JSON.parse(other(['layer', 'ls', '--json'])), []);
    await reg.cutBlob(la[0]!, 0, 0);
  } finally {
    spawnSync(DOCKER, ['rmi', '-f', a, b]);
    await reg.stop();
  }
});

// --- hostile archives ---------------------------------------------------------------------------

function entry(p: string, body: Buffer | string | { symlink: string }, extra: Partial<TarHeader> = {}): Buffer {
  const isLink = typeof body === 'object' && !Buffer.isBuffer(body);
  const data = isLink ? Buffer.alloc(0) : Buffer.from(body);
  const h: TarHeader = {
    path: p,
    type: isLink ? 'symlink' : 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: data.length,
    mtime: 0,
    linkname: isLink ? body.symlink : '',
    uname: '',
    gname: '',
    devmajor: 0,
    devminor: 0,
    xattrs: new Map(),
    ...extra,
  };
  return Buffer.concat([encodeHeader(h), data, Buffer.alloc(padding(data.length))]);
}
const tarOf = (entries: Buffer[]): Buffer => Buffer.concat([...entries, Buffer.alloc(1024)]);
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** A one-layer docker-save archive, with hooks to break it. */
function archive(opts: { diffIds?: string[]; layers?: string[]; layerBody?: Buffer; manifestFirst?: boolean; extra?: Buffer[] } = {}): Buffer {
  const layer = tarOf([entry('hello.txt', 'hi\n')]);
  const body = opts.layerBody ?? layer;
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: opts.diffIds ?? [`sha256:${sha(layer)}`] }, history: [{ created_by: 'test' }] });
  const manifest = JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: [`hostile:${UNIQ}`], Layers: opts.layers ?? ['l1/layer.tar'] }]);
  const parts = [entry(`${sha(config)}.json`, config), entry('l1/layer.tar', body), ...(opts.extra ?? [])];
  return tarOf(opts.manifestFirst === false ? [...parts, entry('manifest.json', manifest)] : [entry('manifest.json', manifest), ...parts]);
}

test.serial("Docker ≥ 25's save layout (manifest.json over an OCI layout) loads with the index's manifest digest", (t) => {
  // Made from the 20.10 archive as Docker 25 lays it out: blobs/sha256/<hex>, oci-layout, index.json.
  const dir = path.join(t.context.env.workDir, 'v25-src');
  fs.mkdirSync(dir, { recursive: true });
  const x = spawnSync('tar', ['-C', dir, '-xf', t.context.saved]);
  if (x.status !== 0) throw new Error(`tar -x: ${x.stderr.toString()}`);
  const old = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as { Config: string; RepoTags: string[]; Layers: string[] }[];
  const blobs = new Map<string, Buffer>();
  const blob = (b: Buffer | string): string => {
    const d = sha(b);
    blobs.set(d, Buffer.from(b));
    return d;
  };
  const manifests: { digest: string; size: number; tag: string }[] = [];
  const entries = old.map((m) => {
    const config = blob(fs.readFileSync(path.join(dir, m.Config)));
    const layers = m.Layers.map((l) => fs.readFileSync(path.join(dir, l))); // follows the repeated layer's symlink
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${config}`, size: blobs.get(config)!.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${blob(l)}`, size: l.length })),
    });
    manifests.push({ digest: blob(manifest), size: manifest.length, tag: m.RepoTags[0]! });
    return { Config: `blobs/sha256/${config}`, RepoTags: m.RepoTags, Layers: layers.map((l) => `blobs/sha256/${sha(l)}`) };
  });
  const index = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: manifests.map((m) => ({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: `sha256:${m.digest}`,
      size: m.size,
      annotations: { 'io.containerd.image.name': `docker.io/${m.tag}`, 'org.opencontainers.image.ref.name': m.tag.split(':').pop()! },
    })),
  });
  const tar = tarOf([
    ...[...blobs].map(([d, b]) => entry(`blobs/sha256/${d}`, b)),
    entry('index.json', index),
    entry('manifest.json', JSON.stringify(entries)),
    entry('oci-layout', '{"imageLayoutVersion":"1.0.0"}'),
  ]);
  const tsvol = world();
  t.deepEqual(tsvol(['image', 'load'], tar).split('\n').sort(), [`Loaded image: ${APP_A}`, `Loaded image: ${APP_B}`].sort());
  const a = JSON.parse(tsvol(['image', 'inspect', APP_A])) as Details;
  t.is(a.id, inspectDocker(APP_A).Id);
  t.is(a.digest, `sha256:${manifests.find((m) => m.tag === APP_A)!.digest}`);
  t.is((JSON.parse(tsvol(['layer', 'ls', '--json'])) as unknown[]).length, 5);
  // The same layout without manifest.json is a plain OCI layout: names from the index's annotations.
  const ociOnly = tarOf([...[...blobs].map(([d, b]) => entry(`blobs/sha256/${d}`, b)), entry('index.json', index), entry('oci-layout', '{"imageLayoutVersion":"1.0.0"}')]);
  const oci = world();
  t.deepEqual(oci(['image', 'load'], ociOnly).split('\n').sort(), [`Loaded image: ${APP_A}`, `Loaded image: ${APP_B}`].sort());
  t.is((JSON.parse(oci(['image', 'inspect', APP_B])) as Details).id, inspectDocker(APP_B).Id);
});

test.serial('a well-formed hand-made archive loads, manifest.json last, gzip too', (t) => {
  const tsvol = world();
  t.is(tsvol(['image', 'load'], archive({ manifestFirst: false })), `Loaded image: hostile:${UNIQ}`);
  const gz = world();
  t.is(gz(['image', 'load'], zlib.gzipSync(archive())), `Loaded image: hostile:${UNIQ}`);
});

const BAD: [string, () => Buffer, RegExp][] = [
  ['digest mismatch (tampered layer)', () => archive({ layerBody: tarOf([entry('hello.txt', 'HI\n')]) }), /uncompressed digest .* is not rootfs\.diff_ids\[0\]/],
  ['layer count differs from diff_ids', () => archive({ diffIds: [`sha256:${'a'.repeat(64)}`, `sha256:${'b'.repeat(64)}`] }), /lists 1 layers but its config's rootfs\.diff_ids has 2/],
  ['missing blob', () => archive({ layers: ['nope/layer.tar'] }), /"nope\/layer\.tar" is missing/],
  ['truncated tar', () => archive().subarray(0, 1500), /image archive refused: tar archive ends/],
  ['path leaving the archive', () => archive({ extra: [entry('../evil', 'x')] }), /leaves the archive/],
  ['absolute path', () => archive({ extra: [entry('/etc/evil', 'x')] }), /absolute path/],
  ['a link out of the archive', () => archive({ layers: ['l2/layer.tar'], extra: [entry('l2/layer.tar', { symlink: '../../etc/passwd' })] }), /leaves the archive/],
  ['a device', () => archive({ extra: [entry('dev', '', { type: 'char', devmajor: 1, devminor: 3 })] }), /is a char/],
  ['no manifest', () => tarOf([entry('x', 'y')]), /no manifest\.json or index\.json/],
];

for (const [what, make, err] of BAD) {
  test.serial(`refused, nothing stored: ${what}`, (t) => {
    const tsvol = world();
    t.regex(tsvol.fails(['image', 'load'], make()), err);
    t.deepEqual(JSON.parse(tsvol(['image', 'ls', '--json'])), []);
    t.deepEqual(JSON.parse(tsvol(['layer', 'ls', '--json'])), []);
  });
}

test.serial('a layer with the right digest but a hostile entry: refused, and the layers before it go again', (t) => {
  const tsvol = world();
  const good = tarOf([entry('ok.txt', 'fine\n')]);
  const evil = tarOf([entry('../escape.txt', 'out\n')]);
  const config = JSON.stringify({ rootfs: { type: 'layers', diff_ids: [`sha256:${sha(good)}`, `sha256:${sha(evil)}`] } });
  const manifest = JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: [`evil:${UNIQ}`], Layers: ['1/layer.tar', '2/layer.tar'] }]);
  const tar = tarOf([entry('manifest.json', manifest), entry(`${sha(config)}.json`, config), entry('1/layer.tar', good), entry('2/layer.tar', evil)]);
  t.regex(tsvol.fails(['image', 'load'], tar), /layer tar refused/);
  t.deepEqual(JSON.parse(tsvol(['image', 'ls', '--json'])), []);
  t.deepEqual(JSON.parse(tsvol(['layer', 'ls', '--json'])), []);
});

test.serial('an OCI layout with an unknown layer media type is refused', (t) => {
  const tsvol = world();
  const layer = zlib.gzipSync(tarOf([entry('a', 'b')]));
  const config = JSON.stringify({ rootfs: { type: 'layers', diff_ids: [`sha256:${sha(zlib.gunzipSync(layer))}`] } });
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: `sha256:${sha(layer)}`, size: layer.length }],
  });
  const index = (m: string) =>
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(m)}`, size: m.length, annotations: { 'io.containerd.image.name': `oci/x:${UNIQ}` } }] });
  const oci = (m: string) =>
    tarOf([
      entry('oci-layout', '{"imageLayoutVersion":"1.0.0"}'),
      entry('index.json', index(m)),
      entry(`blobs/sha256/${sha(m)}`, m),
      entry(`blobs/sha256/${sha(config)}`, config),
      entry(`blobs/sha256/${sha(layer)}`, layer),
    ]);
  t.regex(tsvol.fails(['image', 'load'], oci(manifest)), /unknown layer media type/);
  t.deepEqual(JSON.parse(tsvol(['layer', 'ls', '--json'])), []);
  // The same layout with a gzip media type loads.
  const good = manifest.replace('+zstd', '+gzip');
  t.is(tsvol(['image', 'load'], oci(good)), `Loaded image: oci/x:${UNIQ}`);
  const d = JSON.parse(tsvol(['image', 'inspect', `oci/x:${UNIQ}`])) as Details;
  t.is(d.digest, `sha256:${sha(good)}`);
});
