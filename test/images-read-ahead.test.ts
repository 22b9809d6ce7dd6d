/**
 * readAhead (src/images/channel.ts, #11): an upload keeps being read from its socket while the store
 * works on what came before. The consumer's work is synchronous between awaits that settle at once, so
 * without a turn of the event loop now and then the socket would be read only when the queue ran dry,
 * and the sender (the CLI, another process) would stall on a full socket buffer meanwhile.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import { readAhead } from '../src/images/channel.js';
import { cleanupDir, tempDir } from './helpers/server.js';

/** Blocks the thread for `ms` (the consumer's synchronous work: creating files, writing them). */
function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

test('readAhead reads the socket while its consumer works: the data queued ahead grows past a socket buffer', async (t) => {
  const dir = tempDir();
  const sock = path.join(dir, 's');
  const server = net.createServer();
  server.listen(sock);
  await once(server, 'listening');
  const TOTAL = 16 << 20;
  // Another process sends as fast as the socket takes it, as the CLI does.
  const child = spawn(process.execPath, ['-e', `const s = require('net').connect(${JSON.stringify(sock)}, () => { const b = Buffer.alloc(1 << 20, 7); let n = 0; const go = () => { while (n < ${TOTAL >> 20}) { n++; if (!s.write(b)) return s.once('drain', go); } s.end(); }; go(); });`], {
    stdio: 'ignore',
  });
  try {
    const [conn] = (await once(server, 'connection')) as [net.Socket];
    let received = 0;
    async function* counted(): AsyncGenerator<Buffer> {
      for await (const c of conn) {
        received += (c as Buffer).length;
        yield c as Buffer;
      }
    }
    let consumed = 0;
    let ahead = 0;
    for await (const c of readAhead(counted())) {
      consumed += c.length;
      ahead = Math.max(ahead, received - consumed);
      busy(0.5); // ~100 MB/s for 64 KiB chunks: slower than the socket
    }
    t.is(consumed, TOTAL);
    // A unix socket buffers a few hundred KiB; read only when the queue is dry, the lead stays about that.
    t.true(ahead > 4 << 20, `the reading ran ahead by ${ahead} bytes at most`);
    t.log(`ran ahead by up to ${ahead} bytes`);
  } finally {
    child.kill();
    server.close();
    cleanupDir(dir);
  }
});
