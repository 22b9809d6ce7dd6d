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
  /** Seconds since the epoch (pax keeps fractions, which a double holds only to about 0.2 µs today). */
  mtime: number;
  /**
   * The mtime in nanoseconds, exactly as a pax record wrote it (set by applyPax; encodeHeader writes it).
   * Absent: `mtime` is exact (whole seconds). Read both through mtimeNsOf.
   */
  mtimeNs?: bigint;
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

/** The largest uid or gid: 2^32 - 2 ((uid_t)-1 means "unchanged" to chown(2)). */
export const MAX_ID = 0xfffffffe;
/** Device numbers as Linux mknod(2) takes them: a 12-bit major and a 20-bit minor. */
export const MAX_DEVMAJOR = 0xfff;
export const MAX_DEVMINOR = 0xfffff;
/** Extended attributes per entry (the kernel lists at most 64 KiB of names per inode, so real ones stay far below). */
export const MAX_XATTRS = 1024;
/**
 * Pax records per entry: its xattrs and a few dozen standard or vendor keys fit many times over. Without
 * a count, 16 MiB of 12-byte records make 1.4 million Map entries (700 MB, 18 s).
 */
export const MAX_PAX_RECORDS = 4096;

/** A value quoted for an error message, cut short: it comes from the archive. */
function quote(value: string): string {
  return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
}

/**
 * Parses an octal or GNU base-256 numeric field, strictly (#9): octal is only octal digits, with spaces
 * or NULs before and after (an empty field is 0); base-256 is big-endian two's complement marked by a first
 * byte of 0x80 (positive) or 0xff (negative). Negatives only where `signed` (mtime); never beyond
 * Number.MAX_SAFE_INTEGER either way. `field` names the field for the error.
 */
export function parseNumber(buf: Buffer, off: number, len: number, field = 'numeric field', signed = false): number {
  const first = buf[off]!;
  let n: number;
  if (first & 0x80) {
    if (first !== 0x80 && first !== 0xff) throw new Error(`${field} is out of range (base-256 marker 0x${first.toString(16)})`);
    // 0xff: a negative number; BigInt shifts keep its two's complement exact over up to 12 bytes.
    let big = first === 0xff ? -1n : 0n;
    for (let i = 1; i < len; i++) big = (big << 8n) | BigInt(buf[off + i]!);
    if (big > BigInt(Number.MAX_SAFE_INTEGER) || big < -BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${field} is out of range (${big})`);
    n = Number(big);
  } else {
    const text = buf.toString('latin1', off, off + len);
    const m = /^[ \0]*([0-7]*)[ \0]*$/.exec(text);
    if (m === null) throw new Error(`${field} is not an octal number: ${quote(text)}`);
    n = m[1] === '' ? 0 : parseInt(m[1]!, 8);
  }
  if (n < 0 && !signed) throw new Error(`${field} is negative (${n})`);
  return n;
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

/** The typeflags an entry may carry (metadata headers aside): NUL (old tars), '0'–'7'. */
export function isEntryType(typeflag: number): boolean {
  return TYPES[typeflag] !== undefined;
}

/**
 * Why an entry's typeflag is refused: GNU sparse files ('S') and the other GNU and vendor types (dumpdir
 * 'D', volume label 'V', multi-volume 'M', ...) are not what their bytes say. Docker (Go's archive/tar, then
 * moby's pkg/archive) expands a sparse file's map into holes and refuses any other type ("unhandled tar
 * header type"); stored as a regular file, the entry's body would be its sparse map and data, not the
 * file a container sees under Docker. #11
 */
export function unsupportedTypeError(typeflag: number, path: string): Error {
  const c = String.fromCharCode(typeflag);
  const what = typeflag === 0x53 ? 'a GNU sparse file' : /^[ -~]$/.test(c) ? `type '${c}'` : `type byte ${typeflag}`;
  return new Error(`tar entry ${quote(path)} is ${what}, which tsvol does not store (regular files, directories, links, devices and fifos only)`);
}

/**
 * Decodes a ustar/GNU header block (no pax applied). Returns the raw typeflag too. Numbers are parsed
 * strictly and bounded (sizes and ids non-negative, ids ≤ MAX_ID, device numbers as mknod takes them);
 * errors name the entry.
 */
export function decodeHeader(block: Buffer): { typeflag: number; header: TarHeader } {
  if (!checksumOk(block)) throw new Error('tar header checksum mismatch: not a tar archive, or corrupt');
  const typeflag = block[156]!;
  const magic = block.toString('ascii', 257, 263);
  let name = cstring(block, 0, 100);
  if (magic === 'ustar\0') {
    const prefix = cstring(block, 345, 155);
    if (prefix !== '') name = `${prefix}/${name}`;
  }
  const what = `tar entry ${quote(name)}`;
  const num = (off: number, len: number, field: string, max: number, signed = false): number => {
    const n = parseNumber(block, off, len, `${what}: ${field}`, signed);
    if (n > max) throw new Error(`${what}: ${field} ${n} is out of range (at most ${max})`);
    return n;
  };
  return {
    typeflag,
    header: {
      path: name,
      type: TYPES[typeflag] ?? 'file',
      mode: num(100, 8, 'mode', Number.MAX_SAFE_INTEGER),
      uid: num(108, 8, 'uid', MAX_ID),
      gid: num(116, 8, 'gid', MAX_ID),
      size: num(124, 12, 'size', Number.MAX_SAFE_INTEGER),
      mtime: num(136, 12, 'mtime', Number.MAX_SAFE_INTEGER, true),
      linkname: cstring(block, 157, 100),
      uname: cstring(block, 265, 32),
      gname: cstring(block, 297, 32),
      devmajor: num(329, 8, 'devmajor', MAX_DEVMAJOR),
      devminor: num(337, 8, 'devminor', MAX_DEVMINOR),
      xattrs: new Map(),
    },
  };
}

/**
 * Parses pax records ("LEN key=value\n") in order, repeated keys included; values stay raw bytes. Strict
 * (#9): LEN is decimal digits and covers the whole record, which ends in a newline; the key is not empty;
 * at most `maxRecords` records (what is left of MAX_PAX_RECORDS for the entry). Trailing NULs after the
 * last record are tolerated (some writers pad the data). `where` names the header for the error.
 */
export function parsePax(data: Buffer, where = 'pax header', maxRecords = MAX_PAX_RECORDS): [string, Buffer][] {
  const out: [string, Buffer][] = [];
  const corrupt = (off: number, why: string): Error => new Error(`${where}: corrupt pax record at byte ${off}: ${why}`);
  let off = 0;
  while (off < data.length) {
    if (data[off] === 0 && data.subarray(off).every((b) => b === 0)) break;
    const space = data.indexOf(0x20, off);
    // 16 digits already exceed any length a metadata record may have.
    if (space < 0 || space === off || space - off > 16) throw corrupt(off, 'no length');
    const lenText = data.toString('latin1', off, space);
    if (!/^[0-9]+$/.test(lenText)) throw corrupt(off, `length ${quote(lenText)} is not a decimal number`);
    const len = Number(lenText);
    // The shortest record is "LEN k=\n": the length, a space, a key byte, "=" and the newline.
    if (len < space - off + 4 || off + len > data.length) throw corrupt(off, `length ${len} does not fit`);
    if (data[off + len - 1] !== 0x0a) throw corrupt(off, 'it does not end in a newline');
    const record = data.subarray(space + 1, off + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw corrupt(off, eq < 0 ? 'no "="' : 'empty key');
    if (out.length >= maxRecords) throw new Error(`${where}: too many pax records (at most ${MAX_PAX_RECORDS} for one entry)`);
    out.push([record.toString('utf8', 0, eq), record.subarray(eq + 1)]);
    off += len;
  }
  return out;
}

/** The value of pax record `key` as a number, matching `pattern`, within ±`max`; else an error naming the entry. */
function paxNumber(h: TarHeader, key: string, text: string, pattern: RegExp, max: number): number {
  const n = Number(text);
  if (!pattern.test(text) || !Number.isFinite(n) || Math.abs(n) > max) {
    const want = pattern === DECIMAL ? `an integer from 0 to ${max}` : `a decimal time within ±${max} seconds`;
    throw new Error(`tar entry ${quote(h.path)}: pax ${key} ${quote(text)} is not ${want}`);
  }
  return n;
}
const DECIMAL = /^[0-9]+$/;
const TIME = /^-?[0-9]+(\.[0-9]+)?$/;

/** A pax decimal time (TIME, already checked) → nanoseconds, exactly: digits beyond the ninth are dropped. */
function paxTimeNs(text: string): bigint {
  const negative = text.startsWith('-');
  const [whole = '0', fraction = ''] = (negative ? text.slice(1) : text).split('.');
  const ns = BigInt(whole) * 1_000_000_000n + BigInt(fraction.slice(0, 9).padEnd(9, '0'));
  return negative ? -ns : ns;
}

/** Nanoseconds → a pax decimal time, without trailing zeros ("1700000000.000000001", "-1.5"). */
function paxTimeText(ns: bigint): string {
  const abs = ns < 0n ? -ns : ns;
  const fraction = (abs % 1_000_000_000n).toString().padStart(9, '0').replace(/0+$/, '');
  const text = `${abs / 1_000_000_000n}${fraction === '' ? '' : `.${fraction}`}`;
  return ns < 0n ? `-${text}` : text;
}

/** A header's mtime in nanoseconds: exact from pax (mtimeNs), else from `mtime`. */
export function mtimeNsOf(h: Pick<TarHeader, 'mtime' | 'mtimeNs'>): bigint {
  if (h.mtimeNs !== undefined) return h.mtimeNs;
  const whole = Math.floor(h.mtime);
  return BigInt(whole) * 1_000_000_000n + BigInt(Math.round((h.mtime - whole) * 1e9));
}

/** A name from the archive with a NUL in it: the kernel would read it cut short at the NUL, so it is refused. */
export function assertNoNul(name: string, what: string): void {
  if (name.includes('\0')) throw new Error(`${what} ${quote(name)} contains a NUL byte`);
}

/**
 * Applies pax records to a header (path, linkpath, sizes, ids, names, mtime, xattrs), strictly (#9):
 * size, uid and gid are decimal integers (ids ≤ MAX_ID), mtime a decimal time (negative allowed), names
 * without NUL bytes, at most MAX_XATTRS xattrs. Errors name the record and the entry.
 */
export function applyPax(h: TarHeader, pax: Map<string, Buffer>): void {
  // Path first, so that every error below names the entry by its real path.
  const path = pax.get('path');
  if (path !== undefined) {
    h.path = path.toString('utf8');
    assertNoNul(h.path, 'tar entry: pax path');
  }
  for (const [key, value] of pax) {
    const text = (): string => value.toString('utf8');
    switch (key) {
      case 'path':
        break;
      case 'linkpath':
        h.linkname = text();
        assertNoNul(h.linkname, `tar entry ${quote(h.path)}: pax linkpath`);
        break;
      case 'size':
        h.size = paxNumber(h, key, text(), DECIMAL, Number.MAX_SAFE_INTEGER);
        break;
      case 'uid':
        h.uid = paxNumber(h, key, text(), DECIMAL, MAX_ID);
        break;
      case 'gid':
        h.gid = paxNumber(h, key, text(), DECIMAL, MAX_ID);
        break;
      case 'uname':
        h.uname = text();
        break;
      case 'gname':
        h.gname = text();
        break;
      case 'mtime':
        h.mtime = paxNumber(h, key, text(), TIME, Number.MAX_SAFE_INTEGER);
        h.mtimeNs = paxTimeNs(text());
        break;
      default: {
        // GNU tar's pax sparse formats (0.0, 0.1, 1.0): the body is a sparse map and data, not the file.
        if (key.startsWith('GNU.sparse.')) {
          throw new Error(`tar entry ${quote(h.path)} is a GNU sparse file (pax ${quote(key)}), which tsvol does not store (regular files, directories, links, devices and fifos only)`);
        }
        let name: string | undefined;
        let bytes: Buffer | undefined;
        if (key.startsWith('SCHILY.xattr.')) {
          name = key.slice('SCHILY.xattr.'.length);
          bytes = Buffer.from(value);
        } else if (key.startsWith('LIBARCHIVE.xattr.')) {
          try {
            name = decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length));
          } catch (err) {
            throw new Error(`tar entry ${quote(h.path)}: pax ${quote(key)} is not a URI-encoded xattr name`, { cause: err });
          }
          bytes = Buffer.from(text(), 'base64');
        }
        if (name === undefined || bytes === undefined) break;
        assertNoNul(name, `tar entry ${quote(h.path)}: xattr name`);
        h.xattrs.set(name, bytes);
        if (h.xattrs.size > MAX_XATTRS) throw new Error(`tar entry ${quote(h.path)} has more than ${MAX_XATTRS} xattrs`);
      }
    }
  }
}

/** Writes a numeric field: octal when it fits, else GNU base-256 (0x80 marker, or 0xff for a negative). */
function octal(buf: Buffer, off: number, len: number, value: number): void {
  const n = Math.floor(value);
  const s = n.toString(8);
  if (n < 0 || s.length > len - 1) {
    // Two's complement over the whole field: a negative number starts with 0xff, a positive one gets 0x80.
    let v = BigInt(n);
    if (v < 0n) v += 1n << BigInt(8 * len);
    for (let i = len - 1; i >= 0; i--) {
      buf[off + i] = Number(v & 0xffn);
      v >>= 8n;
    }
    if (n >= 0) buf[off] = 0x80;
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
 * A header for `path` with every other field empty or zero (owner root, mtime 0, no names, no xattrs),
 * then `fields`: the one place a header is built from scratch (the tree writer, image saves).
 */
export function blankHeader(path: string, type: TarHeader['type'], fields: Partial<TarHeader> = {}): TarHeader {
  return { path, type, mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0, linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0, xattrs: new Map(), ...fields };
}

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
  if (h.mtimeNs !== undefined && h.mtimeNs % 1_000_000_000n !== 0n) records.push(paxRecord('mtime', Buffer.from(paxTimeText(h.mtimeNs))));
  else if (!Number.isInteger(h.mtime)) records.push(paxRecord('mtime', Buffer.from(h.mtime.toFixed(9).replace(/\.?0+$/, ''))));
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
