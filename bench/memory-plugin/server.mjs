// The in-memory VolumeDriver of bench/docker.ts, run as a managed plugin on tsvol's own rootfs (the same
// node binary, config.json shape and socket path): the floor of what any managed plugin can reach through
// dockerd. Plain JavaScript because it runs on the bare node inside the plugin, without tsx. It answers
// every call from a Map; Mount makes a real directory under the propagated mount so containers can use it.
// No validation, no logging, no durability: not a driver, a yardstick.
//
// With TSVOL_FLOOR_DURABLE=DIR (bench/cycle-cpu.ts's "durable floor") it also does the least any plugin
// must do to be durable the way Docker's local driver lays volumes out: Create makes DIR/NAME and its _data
// (two mkdirs on the thread pool, as moby's local driver makes them), Remove removes both, and each
// Create or Remove appends a line to a journal that is fdatasynced before the reply (group commit: the
// lines of one event-loop turn share one write and one fdatasync). Still no validation and no logging.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const durableDir = process.env.TSVOL_FLOOR_DURABLE;
/** The durable floor's group-committed journal: resolves once the line is on disk. */
const journal = (() => {
  if (!durableDir) return undefined;
  fs.mkdirSync(durableDir, { recursive: true });
  const fd = fs.openSync(path.join(durableDir, 'journal'), 'a');
  let queue = [];
  let busy = false;
  const flush = async () => {
    busy = true;
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      const bytes = Buffer.from(batch.map((b) => b.line).join(''));
      await new Promise((resolve, reject) => fs.write(fd, bytes, (err) => (err ? reject(err) : resolve())));
      await new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
      for (const b of batch) b.resolve();
    }
    busy = false;
  };
  return (line) =>
    new Promise((resolve) => {
      queue.push({ line: `${line}\n`, resolve });
      if (!busy) setImmediate(flush);
      busy = true;
    });
})();
const durableCreate = async (name) => {
  const dir = path.join(durableDir, name);
  await fs.promises.mkdir(dir, { mode: 0o701 });
  await fs.promises.mkdir(path.join(dir, '_data'), { mode: 0o755 });
  await journal(JSON.stringify({ op: 'create', name }));
};
const durableRemove = async (name) => {
  const dir = path.join(durableDir, name);
  await fs.promises.rmdir(path.join(dir, '_data'));
  await fs.promises.rmdir(dir);
  await journal(JSON.stringify({ op: 'remove', name }));
};

const socket = process.env.TSVOL_SOCKET ?? '/run/docker/plugins/tsvol.sock';
const mounts = process.env.TSVOL_MOUNTS ?? '/mnt/volumes';
const vols = new Map();
const json = (res, out) => {
  const body = JSON.stringify(out);
  res.writeHead(200, { 'Content-Type': 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
};
fs.rmSync(socket, { force: true });
http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString() || 'null');
      } catch {
        body = null;
      }
      const name = typeof body?.Name === 'string' ? body.Name : '';
      const mp = `${mounts}/${name}`;
      switch (req.url) {
        case '/Plugin.Activate':
          return json(res, { Implements: ['VolumeDriver'] });
        case '/VolumeDriver.Capabilities':
          return json(res, { Capabilities: { Scope: 'local' } });
        case '/VolumeDriver.Create':
          if (vols.has(name)) return json(res, { Err: '' });
          vols.set(name, { Name: name, Mountpoint: mp, CreatedAt: new Date().toISOString() });
          if (journal === undefined) return json(res, { Err: '' });
          return void durableCreate(name).then(
            () => json(res, { Err: '' }),
            (err) => json(res, { Err: String(err) }),
          );
        case '/VolumeDriver.Remove':
          if (!vols.delete(name) || journal === undefined) return json(res, { Err: '' });
          return void durableRemove(name).then(
            () => json(res, { Err: '' }),
            (err) => json(res, { Err: String(err) }),
          );
        case '/VolumeDriver.Mount':
          fs.mkdirSync(mp, { recursive: true });
          return json(res, { Mountpoint: mp, Err: '' });
        case '/VolumeDriver.Unmount':
          return json(res, { Err: '' });
        case '/VolumeDriver.Path':
          return json(res, { Mountpoint: mp, Err: '' });
        case '/VolumeDriver.Get': {
          const v = vols.get(name);
          return json(res, v ? { Volume: { ...v, Status: {} }, Err: '' } : { Err: `volume ${name} not found` });
        }
        case '/VolumeDriver.List':
          return json(res, { Volumes: [...vols.values()], Err: '' });
        default:
          return json(res, { Err: `unknown endpoint ${req.url}` });
      }
    });
  })
  .listen(socket);
