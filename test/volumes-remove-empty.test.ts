/**
 * Remove of a named volume whose directory is empty (#13): two rmdirs in place, nothing else. Anything
 * that is not an empty plain directory is left whole for the deleter (which walks beneath it and never
 * crosses a mount): a volume with data, a symlink planted as _data, a stray file beside _data.
 */
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { removeEmptyVolumeDir } from '../src/volumes/kinds/common.js';
import { tempDir } from './helpers/server.js';

/** Every directory these tests made: deleted when they are done. */
const made: string[] = [];
test.after.always(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true });
});

function volume(): { dir: string; data: string } {
  const base = tempDir('tsvol-rmempty-');
  made.push(base);
  const dir = path.join(base, 'v');
  fs.mkdirSync(path.join(dir, '_data'), { recursive: true });
  return { dir, data: path.join(dir, '_data') };
}

test('an empty volume directory goes in place; one whose _data is already gone too', async (t) => {
  const a = volume();
  t.true(await removeEmptyVolumeDir(a.dir, a.data));
  t.false(fs.existsSync(a.dir));
  const b = volume();
  fs.rmdirSync(b.data); // power loss took a fresh volume's _data
  t.true(await removeEmptyVolumeDir(b.dir, b.data));
  t.false(fs.existsSync(b.dir));
});

test('data, a symlink as _data, or a stray file: nothing is removed but what is empty, and the deleter gets the rest', async (t) => {
  const withData = volume();
  fs.writeFileSync(path.join(withData.data, 'keep'), 'x');
  t.false(await removeEmptyVolumeDir(withData.dir, withData.data));
  t.is(fs.readFileSync(path.join(withData.data, 'keep'), 'utf8'), 'x');

  const linked = volume();
  const target = tempDir('tsvol-rmempty-target-');
  made.push(target);
  fs.rmdirSync(linked.data);
  fs.symlinkSync(target, linked.data);
  t.false(await removeEmptyVolumeDir(linked.dir, linked.data));
  t.true(fs.lstatSync(linked.data).isSymbolicLink());
  t.true(fs.existsSync(target), 'a symlink is never followed');

  const stray = volume();
  fs.writeFileSync(path.join(stray.dir, 'stray'), 'x');
  t.false(await removeEmptyVolumeDir(stray.dir, stray.data));
  t.true(fs.existsSync(path.join(stray.dir, 'stray')));
});
