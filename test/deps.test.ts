/**
 * The bare-machine promise (issue #9 §1): whatever the build, tests, benches and server run is listed in
 * scripts/deps.txt with its Debian package, scripts/install-deps.sh installs exactly what is missing, and
 * a test that misses a program fails naming the package.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { DEPS_FILE, readDeps, requireTools } from './helpers/require.js';
import { ROOT, tempDir } from './helpers/server.js';

/** Literal program names given to spawn-like calls (and to requireTools) in every .ts file under `dir`. */
function spawnedPrograms(dir: string): Map<string, string> {
  const found = new Map<string, string>();
  // In files that import node:child_process: spawn('tar', …), execFileSync('mkfifo', …), size-limit.ts's
  // run('debugfs', …), the benches' sh('cp', …); in all: every name given to requireTools. An absolute
  // path counts as its program (spawnSync('/usr/bin/docker-compose', …)).
  const call = /\b(?:spawn|spawnSync|execFile|execFileSync|run|sh)\(\s*'([^'\s]+)'/g;
  const required = /\brequireTools\(([^)]*)\)/g;
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
    const file = path.join(entry.parentPath, entry.name);
    const text = fs.readFileSync(file, 'utf8');
    const names = [...text.matchAll(required)].flatMap((m) => [...m[1]!.matchAll(/'([^'\s]+)'/g)].map((n) => n[1]!));
    if (text.includes("from 'node:child_process'")) names.push(...[...text.matchAll(call)].map((m) => m[1]!));
    for (const name of names) found.set(path.basename(name), path.relative(ROOT, file));
  }
  return found;
}

test('every program that src/, test/ and bench/ spawn by name is listed in scripts/deps.txt', (t) => {
  const deps = readDeps();
  const spawned = new Map([...spawnedPrograms(path.join(ROOT, 'src')), ...spawnedPrograms(path.join(ROOT, 'test')), ...spawnedPrograms(path.join(ROOT, 'bench'))]);
  t.true(spawned.has('mkfs.xfs') && spawned.has('debugfs') && spawned.has('tar'), `the scan finds the known spawns: ${[...spawned.keys()].join(' ')}`);
  const unlisted = [...spawned].filter(([program]) => !deps.has(program)).map(([program, file]) => `${program} (${file})`);
  t.deepEqual(unlisted, [], 'add these to scripts/deps.txt with their Debian package');
});

test("the README's table of what the setup installs is scripts/deps.txt", (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const table = readme.split('\n| program | package | group | who runs it |\n|---|---|---|---|\n')[1]?.split('\n\n')[0] ?? '';
  const rows = table.split('\n').map((row) => row.split('|').slice(1, -1).map((cell) => cell.trim().replace(/^`|`$/g, '')));
  const listed = [...readDeps().values()].map((d) => [d.program, d.pkg, d.group, d.who]);
  t.deepEqual(rows, listed);
});

test.serial('requireTools fails naming the package and the install command, or the missing list entry', (t) => {
  const saved = process.env.PATH;
  process.env.PATH = tempDir('tsvol-nopath-');
  try {
    t.throws(() => requireTools('tar'), { message: 'tar missing: run scripts/install-deps.sh (package tar)' });
    // In sbin but off PATH is a different fix: say so.
    t.throws(() => requireTools('mkfs.xfs'), {
      message: /^mkfs\.xfs (missing: run scripts\/install-deps\.sh \(package xfsprogs\)|is at \/usr\/sbin\/mkfs\.xfs, which is not on PATH .*: add its directory to PATH)$/,
    });
    t.throws(() => requireTools('docker-compose'), { message: 'docker-compose missing: run scripts/install-deps.sh e2e (package docker-compose)' });
  } finally {
    fs.rmSync(process.env.PATH, { recursive: true, force: true });
    process.env.PATH = saved;
  }
  const notListed = ['tsvol', 'not', 'listed'].join('-'); // not a literal: the scan above would take it for a spawn
  t.throws(() => requireTools(notListed), { message: /tsvol-not-listed is not listed in scripts\/deps.txt/ });
  t.notThrows(() => requireTools('sh', 'tar'));
});

/** Runs a copy of install-deps.sh beside `deps` as its list, with fake apt-get and id first on PATH. */
function installDeps(deps: string, args: string[]): { status: number | null; stderr: string; apt: string } {
  const dir = tempDir('tsvol-deps-');
  try {
    fs.mkdirSync(path.join(dir, 'bin'));
    fs.copyFileSync(path.join(ROOT, 'scripts', 'install-deps.sh'), path.join(dir, 'install-deps.sh'));
    fs.writeFileSync(path.join(dir, 'deps.txt'), deps);
    const log = path.join(dir, 'apt.log');
    fs.writeFileSync(path.join(dir, 'bin', 'apt-get'), `#!/bin/sh\necho "$DEBIAN_FRONTEND apt-get $*" >>${log}\n`, { mode: 0o755 });
    fs.writeFileSync(path.join(dir, 'bin', 'id'), '#!/bin/sh\necho 0\n', { mode: 0o755 });
    const r = spawnSync('bash', [path.join(dir, 'install-deps.sh'), ...args], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `${path.join(dir, 'bin')}:${process.env.PATH ?? ''}` },
    });
    return { status: r.status, stderr: r.stderr, apt: fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '' };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('install-deps installs only what is missing, runs apt-get update only then, and checks the result', (t) => {
  const present = 'sh  dash  build  x\ntar  tar  build  y\n';
  const all = installDeps(present, []);
  t.is(all.status, 0, all.stderr);
  t.is(all.apt, '', 'nothing missing: no apt-get at all, not even update');

  const missing = `${present}tsvol-absent-a  pkg-a  build  z\ntsvol-absent-b  pkg-a  build  z\ntsvol-absent-c  pkg-c  e2e  z\n`;
  const checked = installDeps(missing, ['--check']);
  t.is(checked.status, 1);
  t.is(checked.apt, '', '--check installs nothing');
  t.regex(checked.stderr, /tsvol-absent-a is missing \(package pkg-a\)/);
  t.notRegex(checked.stderr, /tsvol-absent-c/, 'the e2e group only when asked');

  const installed = installDeps(missing, ['build', 'e2e']);
  t.is(installed.apt, 'noninteractive apt-get update -qq\nnoninteractive apt-get install -y -qq pkg-a pkg-c\n');
  t.is(installed.status, 1, 'the fake apt-get installs nothing, so the programs are still missing');
  t.regex(installed.stderr, /tsvol-absent-a still missing after installing pkg-a \(fix scripts\/deps.txt\)/);
});

test('scripts/deps.txt lines all have a program, a package, a known group and who runs it', (t) => {
  for (const dep of readDeps().values()) {
    t.true(dep.group === 'build' || dep.group === 'e2e' || dep.group === 'cluster', `${dep.program}: group ${dep.group}`);
    t.not(dep.who, '', `${dep.program}: say who runs it`);
  }
  t.true(fs.statSync(DEPS_FILE).isFile());
});
