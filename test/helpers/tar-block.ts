/** Hand-made tar headers for the tar tests. */
import { encodeHeader, padding, type TarHeader } from '../../src/layers/tar/format.js';

/** Recomputes a header block's checksum after a test changed its bytes. */
export function resum(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return block;
}

/** A tar of plain entries (root-owned, 0755 directories, 0644 files), each with its body, and the end marker. */
export function simpleTar(entries: readonly { path: string; type: TarHeader['type']; body?: Buffer }[]): Buffer {
  const parts: Buffer[] = [];
  for (const { path, type, body = Buffer.alloc(0) } of entries) {
    parts.push(
      encodeHeader({ path, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, size: body.length, mtime: 1_700_000_000, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map() }),
      body,
      Buffer.alloc(padding(body.length)),
    );
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}
