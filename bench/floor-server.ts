/**
 * The floor for bench/volumes.ts: a raw node:http server on a Unix socket answering the same
 * VolumeDriver calls from an in-memory Map (no disk, no mounts, no validation, no logging).
 */
import fs from 'node:fs';
import http from 'node:http';

const socket = process.argv[2]!;
fs.rmSync(socket, { force: true });
const vols = new Map<string, { Name: string; Mountpoint: string; CreatedAt: string }>();
const holds = new Map<string, number>();

http
  .createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString() || 'null') as { Name?: string; ID?: string } | null;
      const name = body?.Name ?? '';
      let out: unknown = { Err: '' };
      switch (req.url) {
        case '/VolumeDriver.Create':
          if (!vols.has(name)) vols.set(name, { Name: name, Mountpoint: `/mnt/${name}`, CreatedAt: new Date().toISOString() });
          break;
        case '/VolumeDriver.Remove':
          vols.delete(name);
          break;
        case '/VolumeDriver.Mount':
          holds.set(name, (holds.get(name) ?? 0) + 1);
          out = { Mountpoint: `/mnt/${name}`, Err: '' };
          break;
        case '/VolumeDriver.Unmount':
          holds.set(name, Math.max(0, (holds.get(name) ?? 0) - 1));
          break;
        case '/VolumeDriver.Path':
          out = { Mountpoint: `/mnt/${name}`, Err: '' };
          break;
        case '/VolumeDriver.Get':
          out = { Volume: { ...vols.get(name), Status: {} }, Err: '' };
          break;
        case '/VolumeDriver.List':
          out = { Volumes: [...vols.values()], Err: '' };
          break;
        default:
          out = { Capabilities: { Scope: 'local' } };
      }
      const json = JSON.stringify(out);
      res.writeHead(200, { 'Content-Type': 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(json) });
      res.end(json);
    });
  })
  .listen(socket);
