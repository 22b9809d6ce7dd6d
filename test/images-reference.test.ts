/**
 * Image references normalized and shown as Docker does (docker/distribution reference:
 * ParseNormalizedNamed, FamiliarString), as a table (#11).
 */
import test from 'ava';
import { familiarReference, normalizeReference, parseReference } from '../src/images/reference.js';

const HEX = 'a'.repeat(64);

const NORMALIZED: [string, string, string][] = [
  // input, normalized, familiar
  ['app', 'docker.io/library/app:latest', 'app:latest'],
  ['app:1.2', 'docker.io/library/app:1.2', 'app:1.2'],
  ['tsimg/app', 'docker.io/tsimg/app:latest', 'tsimg/app:latest'],
  ['docker.io/library/app:7', 'docker.io/library/app:7', 'app:7'],
  ['index.docker.io/tsimg/app', 'docker.io/tsimg/app:latest', 'tsimg/app:latest'],
  ['127.0.0.1:5000/x:t', '127.0.0.1:5000/x:t', '127.0.0.1:5000/x:t'],
  ['localhost/a/b', 'localhost/a/b:latest', 'localhost/a/b:latest'],
  ['registry.example.com/team/app', 'registry.example.com/team/app:latest', 'registry.example.com/team/app:latest'],
  [`app@sha256:${HEX}`, `docker.io/library/app@sha256:${HEX}`, `app@sha256:${HEX}`],
  [`127.0.0.1:5000/x:t@sha256:${HEX}`, `127.0.0.1:5000/x:t@sha256:${HEX}`, `127.0.0.1:5000/x:t@sha256:${HEX}`],
  ['a__b/c-d.e_f', 'docker.io/a__b/c-d.e_f:latest', 'a__b/c-d.e_f:latest'],
];

for (const [input, normalized, familiar] of NORMALIZED) {
  test(`reference ${input} → ${normalized}, shown as ${familiar}`, (t) => {
    t.is(normalizeReference(input), normalized);
    t.is(familiarReference(parseReference(input)), familiar);
    t.is(normalizeReference(normalized), normalized, 'normalizing is idempotent');
  });
}

const INVALID: [string, RegExp][] = [
  ['', /want NAME/],
  ['App', /repository name is lowercase/],
  ['app:', /a tag is/],
  ['app:-x', /a tag is/],
  ['app@sha256:abc', /a digest is sha256/],
  ['app@md5:' + 'a'.repeat(32), /a digest is sha256/],
  ['a//b', /repository name/],
  ['/app', /repository name/],
  ['app/', /repository name/],
  [HEX, /image ID: write sha256/],
  ['bad_host:5000/x', /is not a registry host/],
];

for (const [input, err] of INVALID) {
  test(`reference ${JSON.stringify(input)} is refused`, (t) => {
    t.throws(() => normalizeReference(input), { message: err });
  });
}
