/**
 * End-to-end fixture: a real Docker engine (Debian's docker.io, installed if absent by scripts/install-deps.sh
 * e2e), a loopback registry
 * (Debian's docker-registry on 127.0.0.1:5000), a test image made offline from busybox-static with
 * `docker import`, and the tsvol managed plugin built from this checkout. Everything it starts it stops;
 * a dockerd that was already running is left running (unless a test restarts it).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { acquireLock } from '../../src/sys/lock.js';
import { ROOT, tempDir } from './server.js';

/**
 * One suite on the engine at a time, across ava's worker processes: the e2e suite restarts dockerd and
 * stops the one it started, which would cut a suite running beside it (the image suite) off mid-test. A
 * flock: the kernel drops it with its holder, so a killed suite never blocks the next.
 */
export const ENGINE_LOCK = '/run/tsvol-test-engine.lock';
/** How long a suite waits for the other to finish with the engine. */
export const ENGINE_WAIT_MS = 20 * 60_000;

/** Debian's client, matching its 20.10 engine (a newer client may sit earlier in PATH). */
export const DOCKER = fs.existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
export const DOCKERD = '/usr/sbin/dockerd';
export const IMAGE = 'tsvol-test:busybox';
export const REGISTRY = '127.0.0.1:5000';
export const PLUGIN = 'tsvol';

/** Runs docker; returns trimmed stdout, throws with stderr on failure. */
export function docker(...args: string[]): string {
  const r = spawnSync(DOCKER, args, { encoding: 'utf8', timeout: 180_000 });
  if (r.status !== 0) throw new Error(`docker ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
  return r.stdout.trim();
}

/** Runs docker expecting failure; returns stderr (throws if it succeeded). */
export function dockerFails(...args: string[]): string {
  const r = spawnSync(DOCKER, args, { encoding: 'utf8', timeout: 180_000 });
  if (r.status === 0) throw new Error(`docker ${args.join(' ')} unexpectedly succeeded: ${r.stdout}`);
  return r.stderr;
}

function engineUp(): boolean {
  return spawnSync(DOCKER, ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8', timeout: 20_000 }).status === 0;
}

async function waitFor(what: string, ok: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The end-to-end environment. */
export interface DockerEnv {
  /** Host directory bound at the plugin's TSVOL_DATA. */
  readonly dataDir: string;
  readonly workDir: string;
  /** Restarts dockerd (stopping a dockerd we did not start, and starting our own). */
  restartDockerd(): Promise<void>;
  /** (Re)creates the plugin from plugin/ with our data directory, enabled. */
  createPlugin(): void;
  teardown(): Promise<void>;
}

let dockerd: ChildProcess | undefined;

async function startDockerd(logFile: string): Promise<void> {
  const log = fs.openSync(logFile, 'a');
  const proc = spawn(DOCKERD, ['--bridge=none', '--iptables=false', '--ip-forward=false'], {
    stdio: ['ignore', log, log],
    detached: true,
  });
  let failed: Error | undefined;
  proc.once('error', (err) => (failed = err));
  dockerd = proc;
  await waitFor('dockerd to answer', () => {
    if (failed !== undefined) throw new Error(`cannot start ${DOCKERD}: ${failed.message}`);
    if (proc.exitCode !== null) throw new Error(`dockerd exited ${proc.exitCode}; see ${logFile}`);
    return engineUp();
  }, 60_000);
}

async function stopDockerd(): Promise<void> {
  const pid = dockerd?.pid ?? Number(fs.readFileSync('/var/run/docker.pid', 'utf8').trim());
  if (!pid) return;
  process.kill(pid, 'SIGTERM');
  await waitFor('dockerd to exit', () => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  }, 60_000);
  dockerd = undefined;
}

/**
 * A test image with a file at /seed (for Docker's populate-an-empty-volume step), made offline from
 * busybox-static with `docker import` as `tag`; built in `workDir` (a fresh directory per call). `host`:
 * another engine's socket (`unix:///…`, the cluster nodes of test/helpers/swarm.ts), not the default one.
 */
export function importTestImage(workDir: string, tag: string, host?: string): void {
  const img = path.join(workDir, 'image');
  fs.mkdirSync(path.join(img, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(img, 'bin', 'busybox'));
  fs.chmodSync(path.join(img, 'bin', 'busybox'), 0o755);
  for (const app of ['sh', 'cat', 'echo', 'ls', 'stat', 'sleep', 'dd', 'id', 'touch', 'mkdir', 'test', 'true', 'wc']) {
    fs.symlinkSync('busybox', path.join(img, 'bin', app));
  }
  fs.mkdirSync(path.join(img, 'seed'));
  fs.writeFileSync(path.join(img, 'seed', 'from-image.txt'), 'shipped in the image\n');
  fs.mkdirSync(path.join(img, 'tmp'));
  const tar = spawnSync('tar', ['-C', img, '-c', '.'], { maxBuffer: 64 << 20 });
  const hostArgs = host === undefined ? [] : ['-H', host];
  const imp = spawnSync(DOCKER, [...hostArgs, 'import', '-c', 'CMD ["/bin/sh"]', '-', tag], { input: tar.stdout });
  if (imp.status !== 0) throw new Error(`docker import failed: ${imp.stderr.toString()}`);
}

/** An engine shared with other suites (setupEngine): nothing of theirs is touched. */
export interface EngineEnv {
  readonly workDir: string;
  /** The busybox test image, under the caller's own tag. */
  readonly baseImage: string;
  /** Removes the caller's image and work directory; a dockerd is left running for the other suites. */
  teardown(): void;
}

/**
 * The engine only, shared with other suites running at the same time (#11's image tests alongside the
 * e2e suite): installs what is missing, starts dockerd if none answers (and leaves it running), and
 * imports the busybox test image as `baseImage`. No registry, no plugin, no removal of others' leftovers.
 */
export async function setupEngine(baseImage: string): Promise<EngineEnv> {
  if (process.getuid?.() !== 0) throw new Error('the image suite needs root to run dockerd');
  execFileSync(path.join(ROOT, 'scripts', 'install-deps.sh'), ['e2e'], { stdio: 'inherit', timeout: 1_500_000 });
  const releaseEngine = await acquireLock(ENGINE_LOCK, 'a test suite using dockerd', ENGINE_WAIT_MS);
  const workDir = tempDir('tsvol-engine-');
  if (!engineUp()) await startDockerd(path.join(workDir, 'dockerd.log'));
  importTestImage(workDir, baseImage);
  return {
    workDir,
    baseImage,
    teardown() {
      spawnSync(DOCKER, ['rmi', '-f', baseImage]);
      // A dockerd started here outlives the suite (others share it): it must not keep this process alive.
      dockerd?.unref();
      fs.rmSync(workDir, { recursive: true, force: true });
      void releaseEngine();
    },
  };
}

/** Installs what is missing, starts the engine and the registry, imports the image, builds the plugin. */
export async function setupDocker(): Promise<DockerEnv> {
  if (process.getuid?.() !== 0) throw new Error('the end-to-end suite needs root to run dockerd and mount volumes');
  // The e2e group of scripts/deps.txt (docker.io, docker-registry, docker-compose, busybox-static): the one list.
  execFileSync(path.join(ROOT, 'scripts', 'install-deps.sh'), ['e2e'], { stdio: 'inherit', timeout: 1_500_000 });
  const releaseEngine = await acquireLock(ENGINE_LOCK, 'a test suite using dockerd', ENGINE_WAIT_MS);
  const workDir = tempDir('tsvol-e2e-');
  const dataDir = path.join(workDir, 'plugin-data');
  fs.mkdirSync(dataDir);
  const logFile = path.join(workDir, 'dockerd.log');
  const startedEngine = !engineUp();
  if (startedEngine) await startDockerd(logFile);

  removeLeftovers();

  // The loopback registry, with its own storage.
  const regConf = path.join(workDir, 'registry.yml');
  fs.writeFileSync(
    regConf,
    `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${workDir}/registry\nhttp:\n  addr: ${REGISTRY}\n`,
  );
  const registry = spawn('/usr/bin/docker-registry', ['serve', regConf], { stdio: 'ignore' });
  // Probe with node itself: a bare machine may have no curl.
  const probe = `require('http').get('http://${REGISTRY}/v2/', (r) => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1))`;
  await waitFor('the registry', () => spawnSync(process.execPath, ['-e', probe]).status === 0 || registry.exitCode !== null, 30_000);
  if (registry.exitCode !== null) throw new Error(`docker-registry exited ${registry.exitCode} (is ${REGISTRY} taken?)`);

  importTestImage(workDir, IMAGE);

  execFileSync(path.join(ROOT, 'plugin', 'build-rootfs.sh'), [path.join(ROOT, 'plugin', 'rootfs')], { stdio: 'ignore' });
  fs.copyFileSync(path.join(ROOT, 'config.json'), path.join(ROOT, 'plugin', 'config.json'));

  const env: DockerEnv = {
    dataDir,
    workDir,
    async restartDockerd() {
      await stopDockerd();
      await startDockerd(logFile);
    },
    createPlugin() {
      removePlugin();
      docker('plugin', 'create', PLUGIN, path.join(ROOT, 'plugin'));
      docker('plugin', 'set', PLUGIN, `data.source=${dataDir}`);
      docker('plugin', 'enable', PLUGIN);
    },
    async teardown() {
      removeLeftovers();
      spawnSync(DOCKER, ['plugin', 'rm', '-f', `${REGISTRY}/${PLUGIN}:latest`]);
      spawnSync(DOCKER, ['rmi', '-f', IMAGE]);
      registry.kill();
      if (dockerd !== undefined) await stopDockerd();
      // Unmount anything the plugin left under our data dir before deleting it.
      spawnSync('sh', ['-c', `grep -o ' ${workDir}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l`]);
      fs.rmSync(workDir, { recursive: true, force: true });
      await releaseEngine();
    },
  };
  return env;
}

/** Removes this suite's containers (label tsvol-e2e), tsvol volumes and the plugin: a crashed run's too. */
function removeLeftovers(): void {
  const containers = spawnSync(DOCKER, ['ps', '-aq', '--filter', 'label=tsvol-e2e'], { encoding: 'utf8' }).stdout.trim();
  if (containers) spawnSync(DOCKER, ['rm', '-f', ...containers.split('\n')]);
  const vols = spawnSync(DOCKER, ['volume', 'ls', '-q', '--filter', `driver=${PLUGIN}:latest`], { encoding: 'utf8' }).stdout.trim();
  if (vols) spawnSync(DOCKER, ['volume', 'rm', '-f', ...vols.split('\n')]);
  removePlugin();
}

/** Disables and removes the plugin if present (volumes' data stays in the host directory). */
export function removePlugin(name = PLUGIN): void {
  spawnSync(DOCKER, ['plugin', 'disable', '-f', name]);
  spawnSync(DOCKER, ['plugin', 'rm', '-f', name]);
}

/** `docker run --rm --network none -l tsvol-e2e IMAGE sh -c CMD` with extra args before the image. */
export function run(args: string[], cmd: string): string {
  return docker('run', '--rm', '--network', 'none', '-l', 'tsvol-e2e', ...args, IMAGE, 'sh', '-c', cmd);
}
