// The in-memory VolumeDriver of bench/docker.ts, run as a managed plugin on tsvol's own rootfs (the same
// node binary, config.json shape and socket path): the floor of what any managed plugin can reach through
// dockerd. Plain JavaScript because it runs on the bare node inside the plugin, without tsx. It answers
// every call from a Map; Mount makes a real directory under the propagated mount so containers can use it.
// No validation, no logging, no durability: not a driver, a yardstick.
import fs from 'node:fs';
import http from 'node:http';

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
          if (!vols.has(name)) vols.set(name, { Name: name, Mountpoint: mp, CreatedAt: new Date().toISOString() });
          return json(res, { Err: '' });
        case '/VolumeDriver.Remove':
          vols.delete(name);
          return json(res, { Err: '' });
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
