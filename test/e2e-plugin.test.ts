/**
 * tsvol as users run it: a managed plugin in a real Docker engine (Debian's dockerd 20.10), driven only by
 * the docker CLI and docker-compose. Needs root; under CI=true a missing capability fails the suite.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { ROOT } from './helpers/server.js';
import { DOCKER, IMAGE, PLUGIN, REGISTRY, docker, dockerFails, removePlugin, run, setupDocker, type DockerEnv } from './helpers/docker.js';

const test = anyTest as TestFn<{ env: DockerEnv }>;

test.before(async (t) => {
  t.context.env = await setupDocker();
  t.context.env.createPlugin();
});

test.after.always(async (t) => {
  await t.context.env?.teardown();
});

function inspectVolume(name: string): { Driver: string; Mountpoint: string; Status: Record<string, unknown> } {
  return (JSON.parse(docker('volume', 'inspect', name)) as { Driver: string; Mountpoint: string; Status: Record<string, unknown> }[])[0]!;
}

test.serial('e2e: push to a registry, remove, and install it back with --grant-all-permissions', (t) => {
  const { env } = t.context;
  const remote = `${REGISTRY}/${PLUGIN}:latest`;
  spawnSync(DOCKER, ['plugin', 'rm', '-f', remote]);
  removePlugin(); // dockerd refuses a second plugin with the same content
  docker('plugin', 'create', remote, path.join(ROOT, 'plugin'));
  docker('plugin', 'push', remote);
  docker('plugin', 'rm', '-f', remote);
  docker('plugin', 'install', '--grant-all-permissions', '--alias', PLUGIN, remote, `data.source=${env.dataDir}`);
  const ls = docker('plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}');
  t.regex(ls, new RegExp(`^${PLUGIN}:latest true$`, 'm'));
  docker('volume', 'create', '-d', PLUGIN, 'from-registry');
  t.is(run(['-v', 'from-registry:/d'], 'echo ok > /d/f && cat /d/f'), 'ok');
  docker('volume', 'rm', 'from-registry');
});

test.serial('e2e: one container writes, another reads the same bytes; inspect shows driver and status', (t) => {
  docker('volume', 'create', '-d', PLUGIN, 'shared');
  run(['-v', 'shared:/data'], 'printf "bytes\\001\\377" > /data/blob');
  t.is(run(['-v', 'shared:/data'], 'wc -c < /data/blob'), '7');
  const onDisk = fs.readFileSync(path.join(t.context.env.dataDir, 'volumes', 'shared', '_data', 'blob'));
  t.deepEqual([...onDisk], [...Buffer.from('bytes'), 1, 255]);
  const vol = inspectVolume('shared');
  t.is(vol.Driver, `${PLUGIN}:latest`);
  t.like(vol.Status, { kind: 'named', mounts: 0 });
  t.truthy(vol.Status.created);
});

test.serial('e2e: --mount with volume-driver and --volume-driver create volumes on the fly', (t) => {
  t.is(run(['--mount', `type=volume,source=viamount,target=/m,volume-driver=${PLUGIN}`], 'echo m > /m/f; cat /m/f'), 'm');
  t.is(run(['--volume-driver', PLUGIN, '-v', 'onthefly:/d'], 'echo x > /d/f; cat /d/f'), 'x');
  t.regex(docker('volume', 'ls', '--filter', `driver=${PLUGIN}:latest`, '--format', '{{.Name}}'), /onthefly/);
  t.regex(docker('volume', 'ls', '--format', '{{.Name}}'), /viamount/);
});

test.serial("e2e: an image's files at the mount path are copied into an empty new volume", (t) => {
  docker('volume', 'create', '-d', PLUGIN, 'populated');
  t.is(run(['-v', 'populated:/seed'], 'cat /seed/from-image.txt'), 'shipped in the image');
  const data = path.join(t.context.env.dataDir, 'volumes', 'populated', '_data', 'from-image.txt');
  t.is(fs.readFileSync(data, 'utf8'), 'shipped in the image\n');
});

test.serial('e2e: -o uid= -o gid= -o mode= take effect inside the container; an unknown -o is named', (t) => {
  docker('volume', 'create', '-d', PLUGIN, '-o', 'uid=1000', '-o', 'gid=1001', '-o', 'mode=0750', 'owned');
  t.is(run(['-v', 'owned:/o'], 'stat -c "%u %g %a" /o'), '1000 1001 750');
  const err = dockerFails('volume', 'create', '-d', PLUGIN, '-o', 'colour=blue', 'bad-opt');
  t.regex(err, /VolumeDriver.Create: invalid option: "colour"/);
  t.false(docker('volume', 'ls', '--format', '{{.Name}}').split('\n').includes('bad-opt'));
});

test.serial('e2e: two containers at once, docker cp into a running one, and rm of an in-use volume refused', (t) => {
  docker('volume', 'create', '-d', PLUGIN, 'live');
  const a = docker('run', '-d', '--network', 'none', '-l', 'tsvol-e2e', '-v', 'live:/live', IMAGE, 'sleep', '300');
  try {
    run(['-v', 'live:/live'], 'echo second > /live/second.txt');
    t.is(docker('exec', a, 'cat', '/live/second.txt'), 'second');
    const src = path.join(t.context.env.workDir, 'copied.txt');
    fs.writeFileSync(src, 'via docker cp');
    docker('cp', src, `${a}:/live/copied.txt`);
    t.is(docker('exec', a, 'cat', '/live/copied.txt'), 'via docker cp');
    // docker cp re-used the container's mount ID; the container must still hold the volume.
    t.regex(dockerFails('volume', 'rm', 'live'), /volume is in use/);
    t.like(inspectVolume('live').Status, { mounts: 1 });
  } finally {
    docker('rm', '-f', a);
  }
  docker('volume', 'rm', 'live');
});

test.serial('e2e: plugin disable + enable, and rm + reinstall, keep every volume and its data', (t) => {
  docker('volume', 'create', '-d', PLUGIN, 'durable');
  run(['-v', 'durable:/d'], 'echo kept > /d/k');
  docker('plugin', 'disable', '-f', PLUGIN);
  docker('plugin', 'enable', PLUGIN);
  t.is(run(['-v', 'durable:/d'], 'cat /d/k'), 'kept');
  t.context.env.createPlugin(); // disable -f, rm -f, create from plugin/ (a new plugin id), enable
  t.regex(docker('volume', 'ls', '--format', '{{.Name}}'), /durable/);
  t.is(run(['-v', 'durable:/d'], 'cat /d/k'), 'kept');
  t.like(inspectVolume('durable').Status, { kind: 'named' });
});

test.serial('e2e: a dockerd restart with a container running keeps the data; the volume can then be removed', async (t) => {
  docker('volume', 'create', '-d', PLUGIN, 'restarted');
  const c = docker('run', '-d', '--network', 'none', '-l', 'tsvol-e2e', '-v', 'restarted:/r', IMAGE, 'sh', '-c', 'echo before > /r/b; sleep 300');
  await new Promise((r) => setTimeout(r, 1000));
  await t.context.env.restartDockerd();
  t.is(run(['-v', 'restarted:/r'], 'cat /r/b'), 'before');
  docker('rm', '-f', c); // its Unmount (an ID from before the restart) must be accepted
  docker('volume', 'rm', 'restarted');
  t.false(docker('volume', 'ls', '--format', '{{.Name}}').split('\n').includes('restarted'));
  t.false(fs.existsSync(path.join(t.context.env.dataDir, 'volumes', 'restarted')));
});

test.serial('e2e: bind-style volumes: refused outside the allowlist; on /srv after plugin set; rm keeps host files', (t) => {
  const srv = '/srv/tsvol-e2e';
  fs.mkdirSync(path.join(srv, 'site'), { recursive: true });
  fs.writeFileSync(path.join(srv, 'site', 'index.html'), 'host content');
  try {
    t.regex(dockerFails('volume', 'create', '-d', PLUGIN, '-o', 'type=bind', '-o', `device=${srv}/site`, 'early'), /TSVOL_BIND_ROOTS is empty/);
    docker('plugin', 'disable', '-f', PLUGIN);
    docker('plugin', 'set', PLUGIN, 'TSVOL_BIND_ROOTS=/srv');
    docker('plugin', 'enable', PLUGIN);
    t.regex(
      dockerFails('volume', 'create', '-d', PLUGIN, '-o', 'type=bind', '-o', 'device=/etc', 'etc'),
      /device "\/etc" is outside TSVOL_BIND_ROOTS/,
    );
    docker('volume', 'create', '-d', PLUGIN, '-o', 'type=none', '-o', 'o=bind', '-o', `device=${srv}/site`, 'site');
    t.is(run(['-v', 'site:/w'], 'cat /w/index.html; echo written > /w/upload.txt'), 'host content');
    t.is(fs.readFileSync(path.join(srv, 'site', 'upload.txt'), 'utf8'), 'written\n');
    // o=bind,ro: read-only in the container by tsvol's own mount (mount_setattr inside the plugin).
    docker('volume', 'create', '-d', PLUGIN, '-o', 'type=none', '-o', 'o=bind,ro', '-o', `device=${srv}/site`, 'site-ro');
    const ro = run(['-v', 'site-ro:/w'], 'cat /w/index.html; echo; (echo no > /w/denied.txt) 2>/dev/null && echo written || echo refused');
    t.deepEqual(ro.split('\n'), ['host content', 'refused'], JSON.stringify(ro));
    t.false(fs.existsSync(path.join(srv, 'site', 'denied.txt')));
    docker('volume', 'rm', 'site-ro');
    docker('volume', 'rm', 'site');
    t.true(fs.existsSync(path.join(srv, 'site', 'index.html')), 'docker volume rm never deletes host files');
    t.true(fs.existsSync(path.join(srv, 'site', 'upload.txt')));
  } finally {
    fs.rmSync(srv, { recursive: true, force: true });
  }
});

test.serial('e2e: a compose file with driver: tsvol and driver_opts brings a service up with its volume', (t) => {
  const dir = path.join(t.context.env.workDir, 'compose');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'docker-compose.yml'),
    [
      "version: '3.8'",
      'services:',
      '  app:',
      `    image: ${IMAGE}`,
      '    network_mode: none',
      '    labels: [tsvol-e2e]',
      '    command: ["sh", "-c", "stat -c \'%u %a\' /data > /data/owner.txt"]',
      '    volumes: ["data:/data"]',
      'volumes:',
      '  data:',
      `    driver: ${PLUGIN}`,
      '    driver_opts: { uid: "1234", mode: "0700" }',
      '    labels: { team: web }',
      '',
    ].join('\n'),
  );
  const up = spawnSync('/usr/bin/docker-compose', ['-p', 'tsvole2e', 'up', '--abort-on-container-exit'], { cwd: dir, encoding: 'utf8', timeout: 180_000 });
  t.is(up.status, 0, up.stderr);
  t.is(fs.readFileSync(path.join(t.context.env.dataDir, 'volumes', 'tsvole2e_data', '_data', 'owner.txt'), 'utf8'), '1234 700\n');
  const vol = JSON.parse(docker('volume', 'inspect', 'tsvole2e_data')) as { Labels: Record<string, string> }[];
  t.is(vol[0]?.Labels.team, 'web');
  spawnSync('/usr/bin/docker-compose', ['-p', 'tsvole2e', 'down', '-v'], { cwd: dir });
  t.false(docker('volume', 'ls', '--format', '{{.Name}}').split('\n').includes('tsvole2e_data'));
});

test.serial('e2e: docker volume rm of a named volume removes it from ls and from disk', async (t) => {
  docker('volume', 'create', '-d', PLUGIN, 'doomed');
  run(['-v', 'doomed:/d'], 'echo x > /d/x');
  const dir = path.join(t.context.env.dataDir, 'volumes', 'doomed');
  t.true(fs.existsSync(dir));
  docker('volume', 'rm', 'doomed');
  t.false(docker('volume', 'ls', '--format', '{{.Name}}').split('\n').includes('doomed'));
  for (let i = 0; i < 50 && fs.existsSync(dir); i++) await new Promise((r) => setTimeout(r, 50));
  t.false(fs.existsSync(dir));
});

test.serial('e2e: -o size=64M is a hard limit: a container writing past it gets "No space left"; inspect shows limit and usage', async (t) => {
  docker('volume', 'create', '-d', PLUGIN, '-o', 'size=64M', 'capped');
  const out = spawnSync(DOCKER, ['run', '--rm', '--network', 'none', '-l', 'tsvol-e2e', '-v', 'capped:/c', IMAGE, 'sh', '-c', 'dd if=/dev/zero of=/c/fill bs=1M count=100'], { encoding: 'utf8' });
  t.not(out.status, 0);
  t.regex(out.stderr, /No space left on device/);
  // Other volumes are unaffected.
  docker('volume', 'create', '-d', PLUGIN, 'roomy');
  t.is(run(['-v', 'roomy:/r'], 'dd if=/dev/zero of=/r/fill bs=1M count=100 2>/dev/null; wc -c < /r/fill'), '104857600');
  // Usage is measured off the request path when the last container lets go: poll for the new figure.
  const filled = (st: Record<string, unknown>): boolean => ((st.usage as { bytes: number } | undefined)?.bytes ?? 0) > 50 << 20;
  let status: Record<string, unknown> = {};
  for (let i = 0; i < 50 && !filled(status); i++) {
    status = inspectVolume('capped').Status;
    if (!filled(status)) await new Promise((r) => setTimeout(r, 100));
  }
  t.like(status, { kind: 'sized', limit: 64 << 20 });
  const used = (status.usage as { bytes: number }).bytes;
  t.true(used > 50 << 20 && used <= 64 << 20, `usage ${used}`);
  docker('volume', 'rm', 'capped', 'roomy');
});

test.serial("e2e: tsvol volume export on the host reads a sized volume a running container holds, through the plugin's control socket", async (t) => {
  const { env } = t.context;
  docker('volume', 'create', '-d', PLUGIN, '-o', 'size=32M', 'held-export');
  const c = docker('run', '-d', '--network', 'none', '-l', 'tsvol-e2e', '-v', 'held-export:/h', IMAGE, 'sh', '-c', 'echo from-the-container > /h/proof.txt; sleep 300');
  try {
    for (let i = 0; i < 100 && spawnSync(DOCKER, ['exec', c, 'cat', '/h/proof.txt']).status !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    // The loop mount lives in the plugin's mount namespace: on the host, _data is an empty directory.
    t.deepEqual(fs.readdirSync(path.join(env.dataDir, 'volumes', 'held-export', '_data')), []);
    const cliEnv: NodeJS.ProcessEnv = { ...process.env, TSVOL_DATA: env.dataDir };
    delete cliEnv.TSVOL_SOCKET;
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), 'volume', 'export', 'held-export'], { env: cliEnv, maxBuffer: 1 << 28 });
    t.is(r.status, 0, r.stderr.toString());
    t.true(r.stdout.includes(Buffer.from('proof.txt')), 'the file the container wrote is in the export');
    t.true(r.stdout.includes(Buffer.from('from-the-container\n')));
    t.regex(r.stderr.toString(), /volume "held-export" is in use \(1 mount\(s\)\)/);
    t.like(inspectVolume('held-export').Status, { kind: 'sized', mounts: 1 });
  } finally {
    docker('rm', '-f', c);
  }
  docker('volume', 'rm', 'held-export');
});

test.serial('e2e: -o from= clones a volume for a container; -o layer= gives a container the layer files, copy-on-write', (t) => {
  const { env } = t.context;
  docker('volume', 'create', '-d', PLUGIN, 'origin');
  run(['-v', 'origin:/o'], 'echo original > /o/file && mkdir -p /o/sub && echo deep > /o/sub/d');
  docker('volume', 'create', '-d', PLUGIN, '-o', 'from=origin', 'copy');
  t.is(run(['-v', 'copy:/c'], 'cat /c/file /c/sub/d; echo changed > /c/file'), 'original\ndeep');
  t.is(run(['-v', 'origin:/o'], 'cat /o/file'), 'original', 'the clone is independent');
  t.like(inspectVolume('copy').Status, { kind: 'clone-of', from: 'origin' });

  // A layer imported with the host CLI into the plugin's data root.
  const tree = path.join(env.workDir, 'layer-tree');
  fs.mkdirSync(path.join(tree, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'etc', 'app.conf'), 'from the layer\n');
  const tar = spawnSync('tar', ['--format=posix', '-C', tree, '-c', '.']).stdout;
  const cli = (args: string[], input?: Buffer): string => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), ...args], { input, env: { ...process.env, TSVOL_DATA: env.dataDir }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`tsvol ${args.join(' ')}: ${r.stderr}`);
    return r.stdout.trim();
  };
  const layer = cli(['layer', 'import', '-'], tar);
  cli(['layer', 'tag', layer, 'appconf']);
  docker('volume', 'create', '-d', PLUGIN, '-o', 'layer=appconf', 'layered');
  t.is(run(['-v', 'layered:/l'], 'cat /l/etc/app.conf; echo mine > /l/etc/app.conf'), 'from the layer');
  t.is(run(['-v', 'layered:/l'], 'cat /l/etc/app.conf'), 'mine');
  t.like(inspectVolume('layered').Status, { kind: 'layered', layer });
  t.is(cli(['layer', 'export', layer]).includes('from the layer'), true, 'the layer is unchanged');
  const rm = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), 'layer', 'rm', layer], { env: { ...process.env, TSVOL_DATA: env.dataDir }, encoding: 'utf8' });
  t.regex(rm.stderr, /volume "layered"/);
  docker('volume', 'rm', 'origin', 'copy', 'layered');
  t.regex(cli(['layer', 'rm', 'appconf']), /deleted/);
});
