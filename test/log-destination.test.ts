/**
 * The log's destination (src/log.ts, #13): each line is written at once by the thread that logs it, and
 * only a full pipe (dockerd not draining the plugin's stdout yet) makes lines wait, in memory and in
 * order. Nothing is lost or reordered, the exit flush writes what is still waiting, and a reader that went
 * away ends the output without killing the server.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const LOG = JSON.stringify(path.join(ROOT, 'src', 'log.ts'));

/** Runs `body` in a child node with `log` = createLogger('info'); `onStart` gets its stdout. */
function child(body: string, onStart: (stdout: NodeJS.ReadableStream) => void): Promise<{ code: number | null; stderr: string }> {
  const code = `const { createLogger } = await import(${LOG}); const log = createLogger('info'); ${body}`;
  const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  onStart(p.stdout);
  return new Promise((resolve) => p.on('close', (exit) => resolve({ code: exit, stderr })));
}

test('lines logged while nobody reads the pipe all arrive, whole and in order, the last ones by the exit flush', async (t) => {
  const chunks: Buffer[] = [];
  // 3000 lines of ~200 bytes: ten times what the pipe holds, so most wait in memory (EAGAIN); the child
  // exits 100 ms later, while the parent still does not read: what is left goes out in the exit flush.
  const r = await child(
    `for (let i = 0; i < 3000; i++) log.info({ i, pad: 'x'.repeat(120) }, 'line'); setTimeout(() => { log.info('last'); process.exit(0); }, 100);`,
    (stdout) => {
      stdout.pause();
      setTimeout(() => {
        stdout.on('data', (c: Buffer) => chunks.push(c));
        stdout.resume();
      }, 400);
    },
  );
  t.is(r.code, 0, r.stderr);
  const lines = Buffer.concat(chunks).toString().split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { i?: number; msg: string });
  t.is(lines.length, 3001);
  t.deepEqual(
    lines.slice(0, 3000).map((l) => l.i),
    Array.from({ length: 3000 }, (_, i) => i),
  );
  t.is(lines.at(-1)?.msg, 'last');
});

test('a reader that went away (EPIPE) ends the output; the process goes on and exits normally', async (t) => {
  const r = await child(`setTimeout(() => { for (let i = 0; i < 100; i++) log.info({ i }, 'line'); process.stderr.write('still running'); process.exit(0); }, 300);`, (stdout) => {
    (stdout as NodeJS.ReadableStream & { destroy(): void }).destroy();
  });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /still running/);
});
