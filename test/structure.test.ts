/**
 * The structure issue's (#10) rules that no compiler or import linter checks: the service stays small, and
 * only the kinds table knows the kinds (a new kind is one file under src/volumes/kinds/ and one table line).
 * The import rules are `npm run lint:cycles` (madge) and `npm run lint:deps` (.dependency-cruiser.cjs).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src');

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

test('volume-service.ts stays under 250 lines', (t) => {
  const lines = fs.readFileSync(path.join(SRC, 'volumes', 'volume-service.ts'), 'utf8').split('\n').length - 1;
  t.true(lines < 250, `src/volumes/volume-service.ts has ${lines} lines: move what is not common to every kind out of it`);
});

test('no code outside src/volumes/kinds/ branches on a volume kind', (t) => {
  // `spec.kind === 'named'`, `kind !== "bind"`, `case 'layered':`… on a kind's name.
  const kinds = ['named', 'bind', 'sized', 'clone', 'layered'].join('|');
  const branch = new RegExp(`(\\.kind\\s*[!=]==?\\s*['"](${kinds})['"])|(['"](${kinds})['"]\\s*[!=]==?\\s*[\\w.]*\\.kind\\b)|(case\\s+['"](${kinds})['"]\\s*:)`);
  const allowed = new Set([
    // 0.1's raw specs, read before the kinds exist (store/ may not import volumes/).
    path.join(SRC, 'store', 'migrate.ts'),
  ]);
  const offenders: string[] = [];
  for (const file of sources(SRC)) {
    if (file.startsWith(path.join(SRC, 'volumes', 'kinds') + path.sep) || allowed.has(file)) continue;
    fs.readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (branch.test(line)) offenders.push(`${path.relative(SRC, file)}:${i + 1}: ${line.trim()}`);
      });
  }
  t.deepEqual(offenders, []);
});
