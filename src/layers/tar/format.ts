/**
 * The tar format, exactly (POSIX.1-2001 pax over ustar, plus GNU long names and base-256 numbers). Written
 * here because the npm libraries are wrong for layers (issue #5): node-tar drops SCHILY.xattr records and
 * refuses character devices (whiteouts), and tar-stream decodes pax values as UTF-8, corrupting binary
 * xattrs. pax values stay Buffers from the wire to the filesystem.
 */

/** Size of a tar block. */
export const BLOCK = 512;

/** Entry types (typeflag). */
export const TYPE = {
  file: 0x30, // '0' (also NUL for old tars)
  hardlink: 0x31, // '1'
  symlink: 0x32, // '2'
  char: 0x33, // '3'
  block: 0x34, // '4'
  dir: 0x35, // '5'
  fifo: 0x36, // '6'
  contiguous: 0x37, // '7': a regular file
  paxHeader: 0x78, // 'x': pax records for the next entry
  paxGlobal: 0x67, // 'g'
  gnuLongName: 0x4c, // 'L'
  gnuLongLink: 0x4b, // 'K'
} as const;

/** One entry's metadata, after pax and GNU records are applied. */
export interface TarHeader {
  path: string;
  type: 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch (pax keeps fractions). */
  mtime: number;
  linkname: string;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes, binary-safe (SCHILY.xattr.NAME = raw bytes). */
  xattrs: Map<string, Buffer>;
}

function cstring(buf: Buffer, off: number, len: number): string {
  const end = buf.indexOf(0, off);
  return buf.toString('utf8', off, end < 0 || end > off + len ? off + len : end);
}

/** Parses an octal or GNU base-256 numeric field. */
export function parseNumber(buf: Buffer, off: number, len: number): number {
  const first = buf[off]!;
  if (first & 0x80) {
    // base-256: big-endian two's complement with the top bit as marker
    let n = first & 0x7f;
    for (let i = 1; i < len; i++) n = n * 256 + buf[off + i]!;
    return n;
  }
  const s = buf.toString('ascii', off, off + len).replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new Error(`bad numeric field "${s}"`);
  return parseInt(s, 8);
}

/** True if the 512-byte block is all zeros (end-of-archive marker). */
export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

/** Verifies a header block's checksum (unsigned sum with the checksum field as spaces). */
export function checksumOk(block: Buffer): boolean {
  let stored: number;
  try {
    stored = parseNumber(block, 148, 8);
  } catch {
    return false; // not even a number where the checksum belongs: not a tar header
  }
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  return sum === stored;
}

const TYPES: Record<number, TarHeader['type']> = {
  0: 'file',
  [TYPE.file]: 'file',
  [TYPE.contiguous]: 'file',
  [TYPE.hardlink]: 'hardlink',
  [TYPE.symlink]: 'symlink',
  [TYPE.char]: 'char',
  [TYPE.block]: 'block',
  [TYPE.dir]: 'dir',
  [TYPE.fifo]: 'fifo',
};

/** Decodes a ustar/GNU header block (no pax applied). Returns the raw typeflag too. */
export function decodeHeader(block: Buffer): { typeflag: number; header: TarHeader } {
  if (!checksumOk(block)) throw new Error('tar header checksum mismatch: not a tar archive, or corrupt');
  const typeflag = block[156]!;
  const magic = block.toString('ascii', 257, 263);
  let name = cstring(block, 0, 100);
  if (magic === 'ustar\0') {
    const prefix = cstring(block, 345, 155);
    if (prefix !== '') name = `${prefix}/${name}`;
  }
  return {
    typeflag,
    header: {
      path: name,
      type: TYPES[typeflag] ?? 'file',
      mode: parseNumber(block, 100, 8),
      uid: parseNumber(block, 108, 8),
      gid: parseNumber(block, 116, 8),
      size: parseNumber(block, 124, 12),
      mtime: parseNumber(block, 136, 12),
      linkname: cstring(block, 157, 100),
      uname: cstring(block, 265, 32),
      gname: cstring(block, 297, 32),
      devmajor: parseNumber(block, 329, 8),
      devminor: parseNumber(block, 337, 8),
      xattrs: new Map(),
    },
  };
}

/** Parses pax records ("LEN key=value\n"); values stay raw bytes. */
export function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < data.length) {
    const space = data.indexOf(0x20, off);
    if (space < 0) break;
    const len = parseInt(data.toString('ascii', off, space), 10);
    if (!Number.isFinite(len) || len <= 0 || off + len > data.length) throw new Error('corrupt pax record');
    const record = data.subarray(space + 1, off + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq < 0) throw new Error('corrupt pax record (no =)');
    out.set(record.toString('utf8', 0, eq), record.subarray(eq + 1));
    off += len;
  }
  return out;
}

/** Applies pax records to a header (path, linkpath, sizes, ids, names, mtime, xattrs). */
export function applyPax(h: TarHeader, pax: Map<string, Buffer>): void {
  for (const [key, value] of pax) {
    const text = (): string => value.toString('utf8');
    switch (key) {
      case 'path':
        h.path = text();
        break;
      case 'linkpath':
        h.linkname = text();
        break;
      case 'size':
        h.size = Number(text());
        break;
      case 'uid':
        h.uid = Number(text());
        break;
      case 'gid':
        h.gid = Number(text());
        break;
      case 'uname':
        h.uname = text();
        break;
      case 'gname':
        h.gname = text();
        break;
      case 'mtime':
        h.mtime = Number(text());
        break;
      default:
        if (key.startsWith('SCHILY.xattr.')) h.xattrs.set(key.slice('SCHILY.xattr.'.length), Buffer.from(value));
        else if (key.startsWith('LIBARCHIVE.xattr.')) {
          h.xattrs.set(decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length)), Buffer.from(text(), 'base64'));
        }
    }
  }
}

function octal(buf: Buffer, off: number, len: number, value: number): void {
  const s = Math.floor(value).toString(8);
  if (s.length > len - 1) {
    // GNU base-256 for values that do not fit in octal
    buf[off] = 0x80;
    let v = value;
    for (let i = len - 1; i > 0; i--) {
      buf[off + i] = v % 256;
      v = Math.floor(v / 256);
    }
    return;
  }
  buf.write(s.padStart(len - 1, '0'), off, 'ascii');
  buf[off + len - 1] = 0;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function ustarBlock(h: TarHeader, name: string, typeflag: number, size: number, linkname: string): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'utf8');
  octal(b, 100, 8, h.mode & 0o7777);
  octal(b, 108, 8, h.uid);
  octal(b, 116, 8, h.gid);
  octal(b, 124, 12, size);
  octal(b, 136, 12, h.mtime);
  b[156] = typeflag;
  b.write(linkname, 157, 100, 'utf8');
  b.write('ustar\x0000', 257, 8, 'binary');
  b.write(h.uname, 265, 32, 'utf8');
  b.write(h.gname, 297, 32, 'utf8');
  octal(b, 329, 8, h.devmajor);
  octal(b, 337, 8, h.devminor);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0'), 148, 'ascii');
  b[154] = 0;
  b[155] = 0x20;
  return b;
}

const TYPEFLAG: Record<TarHeader['type'], number> = {
  file: TYPE.file,
  hardlink: TYPE.hardlink,
  symlink: TYPE.symlink,
  char: TYPE.char,
  block: TYPE.block,
  dir: TYPE.dir,
  fifo: TYPE.fifo,
};

/**
 * Encodes the header blocks of one entry: a pax header first when a field does not fit ustar (long
 * path or link, non-ASCII names, large ids or sizes, fractional mtime) or when there are xattrs.
 */
export function encodeHeader(h: TarHeader): Buffer {
  const records: Buffer[] = [];
  const fits = (s: string, max: number): boolean => Buffer.byteLength(s) <= max && /^[\x20-\x7e]*$/.test(s);
  if (!fits(h.path, 100)) records.push(paxRecord('path', Buffer.from(h.path)));
  if (!fits(h.linkname, 100)) records.push(paxRecord('linkpath', Buffer.from(h.linkname)));
  if (h.size > 0o77777777777) records.push(paxRecord('size', Buffer.from(String(h.size))));
  if (h.uid > 0o7777777) records.push(paxRecord('uid', Buffer.from(String(h.uid))));
  if (h.gid > 0o7777777) records.push(paxRecord('gid', Buffer.from(String(h.gid))));
  if (!Number.isInteger(h.mtime)) records.push(paxRecord('mtime', Buffer.from(h.mtime.toFixed(9).replace(/0+$/, ''))));
  for (const [name, value] of [...h.xattrs].sort(([a], [b]) => (a < b ? -1 : 1))) {
    records.push(paxRecord(`SCHILY.xattr.${name}`, value));
  }
  const main = ustarBlock(h, truncate(h.path, 100), TYPEFLAG[h.type], h.type === 'file' ? h.size : 0, truncate(h.linkname, 100));
  if (records.length === 0) return main;
  const data = Buffer.concat(records);
  const paxHdr = ustarBlock({ ...h, mode: 0o644, uid: 0, gid: 0, mtime: Math.floor(h.mtime), uname: '', gname: '', devmajor: 0, devminor: 0 }, truncate(`PaxHeaders/${h.path}`, 100), TYPE.paxHeader, data.length, '');
  return Buffer.concat([paxHdr, data, Buffer.alloc(padding(data.length)), main]);
}

function truncate(s: string, max: number): string {
  const b = Buffer.from(s);
  return b.length <= max ? s : b.subarray(0, max).toString('utf8').replace(/\uFFFD$/, '');
}

/** Bytes of zero padding after a body of `size` bytes. */
export function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}
