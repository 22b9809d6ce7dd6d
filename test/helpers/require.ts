/**
 * Programs a test runs (issue #9 §1). A test states what it spawns with `requireTools`; a missing program
 * fails the test with the package that has it and the command that installs it, never a skip: a missing
 * package is the machine's setup, not a capability of the kernel. The package comes from scripts/deps.txt,
 * the list scripts/install-deps.sh installs from, so a program that is not listed there fails too.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** scripts/deps.txt: one program per line, then its package, group and who runs it. */
export const DEPS_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'deps.txt');

/** A line of scripts/deps.txt. */
export interface Dep {
  readonly program: string;
  readonly pkg: string;
  readonly group: string;
  readonly who: string;
}

/** The programs of scripts/deps.txt, by name. */
export function readDeps(file = DEPS_FILE): Map<string, Dep> {
  const deps = new Map<string, Dep>();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const [program, pkg, group, ...who] = line.trim().split(/\s+/);
    if (program === undefined || pkg === undefined || group === undefined) throw new Error(`${file}: bad line: ${line}`);
    deps.set(program, { program, pkg, group, who: who.join(' ') });
  }
  return deps;
}

/** Where `program` is on PATH (as spawn looks it up), or undefined. */
export function onPath(program: string, pathVar = process.env.PATH ?? ''): string | undefined {
  for (const dir of pathVar.split(':')) {
    if (dir === '') continue;
    const file = path.join(dir, program);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch (err) {
      // ENOENT/EACCES: not in this directory; try the next.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && (err as NodeJS.ErrnoException).code !== 'EACCES') throw err;
    }
  }
  return undefined;
}

/**
 * Throws unless every program is on PATH: `mkfs.xfs missing: run scripts/install-deps.sh (package
 * xfsprogs)`. Under CI=true and elsewhere alike: a test that cannot run its programs fails.
 */
export function requireTools(...programs: string[]): void {
  const deps = readDeps();
  const problems: string[] = [];
  for (const program of programs) {
    const dep = deps.get(program);
    if (dep === undefined) {
      problems.push(`${program} is not listed in scripts/deps.txt: add it with its Debian package`);
      continue;
    }
    if (onPath(program) !== undefined) continue;
    const install = dep.group === 'build' ? 'scripts/install-deps.sh' : `scripts/install-deps.sh ${dep.group}`;
    const sbin = onPath(program, '/usr/local/sbin:/usr/sbin:/sbin');
    problems.push(
      sbin === undefined
        ? `${program} missing: run ${install} (package ${dep.pkg})`
        : `${program} is at ${sbin}, which is not on PATH (${process.env.PATH ?? ''}): add its directory to PATH`,
    );
  }
  if (problems.length > 0) throw new Error(problems.join('; '));
}
