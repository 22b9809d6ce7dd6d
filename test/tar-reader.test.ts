/**
 * The tar reader against archives that lie (#9 §9): bytes after the end-of-archive marker are bounded
 * (measured in a child process, plain and through gzip), numbers are parsed strictly, metadata per entry is
 * bounded, names with NUL bytes are refused, and a fuzz of mutated valid archives either reads to the end
 * (reproducing its input byte for byte) or throws an Error, without hanging or reading without bound.
 * The GNU record padding still round-trips byte-exact through `tsvol layer import` and `export`.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, gzipSync } from 'node:zlib';
import test from 'ava';
import fc from 'fast-check';
import { MAX_PAX_RECORDS, MAX_XATTRS, decodeHeader, encodeHeader, mtimeNsOf, padding, type TarHeader } from '../src/layers/tar/format.js';
import { decompressed } from '../src/layers/tar/gzip.js';
import { MAX_METADATA, MAX_TRAILER, TarReader } from '../src/layers/tar/reader.js';
import { CLI, ROOT, tempDir } from './helpers/server.js';
import { resum } from './helpers/tar-block.js';

const MiB = 1 << 20;

function header(h: Partial<TarHeader> & { path: string }): TarHeader {
  return {
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 1_700_000_000, linkname: '', uname: '', gname: '',
    devmajor: 0, devminor: 0, xattrs: new Map(), ...h,
  };
}

/** One entry: its header blocks (from our encoder), body and padding. */
function entry(h: Partial<TarHeader> & { path: string }, body = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeHeader(header({ size: body.length, ...h })), body, Buffer.alloc(padding(body.length))]);
}
const END = Buffer.alloc(1024);

/** A single ustar block for `h` with the field at `off` replaced by `bytes`. */
function patched(h: Partial<TarHeader> & { path: string }, off: number, bytes: Buffer): Buffer {
  const block = Buffer.from(encodeHeader(header(h)));
  bytes.copy(block, off);
  return resum(block);
}

/** A metadata header block (typeflag `flag`: 'x', 'g', 'L', 'K') and its data, padded. */
function metadata(flag: string, data: Buffer, name = 'PaxHeaders/x'): Buffer {
  const block = Buffer.from(encodeHeader(header({ path: name, size: data.length })));
  block[156] = flag.charCodeAt(0);
  return Buffer.concat([resum(block), data, Buffer.alloc(padding(data.length))]);
}

/** One pax record with its self-counting length. */
function rec(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** Yields `buf` in chunks of `size` bytes. */
async function* chunks(buf: Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  for (let o = 0; o < buf.length; o += size) yield buf.subarray(o, o + size);
}

interface ReadResult {
  entries: TarHeader[];
  bodies: number;
  /** raw + body + padding of every entry, then the trailer: the bytes a split-file export replays. */
  replay: Buffer;
}

/** Reads every entry and its body; what export would replay. */
async function readAll(input: AsyncIterable<Buffer>): Promise<ReadResult> {
  const reader = new TarReader(input);
  const entries: TarHeader[] = [];
  const parts: Buffer[] = [];
  let bodies = 0;
  for (let e = await reader.next(); e !== undefined; e = await reader.next()) {
    entries.push(e.header);
    parts.push(e.raw);
    for await (const c of e.body()) {
      bodies += c.length;
      parts.push(Buffer.from(c));
    }
    parts.push(e.padding());
  }
  parts.push(reader.trailer);
  return { entries, bodies, replay: Buffer.concat(parts) };
}

const read = (tar: Buffer): Promise<ReadResult> => readAll(chunks(tar));
const small = Buffer.concat([entry({ path: 'a.txt' }, Buffer.from('hello\n')), END]);

// ---------------------------------------------------------------------------------------------------
// Trailer: bounded, refused beyond the limit, memory measured in a child process.

interface ChildResult {
  outcome: string;
  baseMb: number;
  maxRssMb: number;
  destroyed: boolean;
}

/**
 * Runs the reader in a child on `file` (through decompressed(), as imports do) and reports the outcome,
 * its peak RSS (after imports, and at the end), and whether the input stream was destroyed. The child must exit by itself: a pending
 * stream or promise would keep it alive until the timeout.
 */
function readInChild(t: { log: (...m: unknown[]) => void }, file: string): ChildResult {
  const code = `
    import fs from 'node:fs';
    const { TarReader } = await import(${JSON.stringify(path.join(ROOT, 'src/layers/tar/reader.ts'))});
    const { decompressed } = await import(${JSON.stringify(path.join(ROOT, 'src/layers/tar/gzip.ts'))});
    // The peak RSS of this process image. Not resourceUsage().maxRSS: Linux carries that over exec from the
    // forked parent (the ava worker), so it can report the parent's size.
    const hwmMb = () => Number(/VmHWM:\\s+(\\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
    const baseMb = hwmMb();
    const input = fs.createReadStream(process.env.TAR_FILE, { highWaterMark: 1 << 20 });
    const reader = new TarReader(decompressed(input));
    let outcome;
    try {
      for (let e = await reader.next(); e; e = await reader.next()) for await (const c of e.body()) void c;
      outcome = 'accepted, trailer ' + reader.trailer.length;
    } catch (err) {
      outcome = (err instanceof Error ? 'refused: ' : 'threw a non-Error: ') + String(err && err.message);
    }
    await new Promise((r) => setImmediate(r));
    console.log(JSON.stringify({ outcome, baseMb, maxRssMb: hwmMb(), destroyed: input.destroyed }));
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT, env: { ...process.env, TAR_FILE: file }, timeout: 120_000, encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`child failed (status ${r.status}, signal ${r.signal}): ${r.stderr}`);
  t.log(r.stdout.trim());
  return JSON.parse(r.stdout) as ChildResult;
}

/** Writes `head`, then `zeros` bytes of zeros, to `file`, gzip-compressed if asked, in 1 MiB steps. */
async function writeWithZeros(file: string, head: Buffer, zeros: number, gzip: boolean): Promise<void> {
  async function* data(): AsyncGenerator<Buffer> {
    yield head;
    const z = Buffer.alloc(MiB);
    for (let left = zeros; left > 0; left -= MiB) yield z.subarray(0, Math.min(MiB, left));
  }
  if (gzip) await pipeline(Readable.from(data()), createGzip({ level: 1 }), fs.createWriteStream(file));
  else await pipeline(Readable.from(data()), fs.createWriteStream(file));
}

test('64 MiB of zeros after a valid archive are refused, and memory stays bounded', async (t) => {
  const dir = tempDir('tsvol-tar-');
  try {
    const file = path.join(dir, 'zeros.tar');
    await writeWithZeros(file, small, 64 * MiB, false);
    const r = readInChild(t, file);
    t.regex(r.outcome, new RegExp(`^refused: at least \\d+ bytes follow the last entry of the tar archive; at most ${MAX_TRAILER} are accepted$`));
    // The old reader kept the whole 64 MiB (twice, with the concat): 289 MB peak. Node + tsx alone is ~80 MB.
    t.true(r.maxRssMb < 150, `peak RSS ${r.maxRssMb} MB`);
    t.true(r.maxRssMb - r.baseMb < 40, `RSS grew by ${r.maxRssMb - r.baseMb} MB while reading`);
    t.true(r.destroyed, 'the input stream is destroyed once the archive is refused');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a small gzip expanding to 256 MiB of zeros after the archive is refused early, memory bounded', async (t) => {
  const dir = tempDir('tsvol-tar-');
  try {
    const file = path.join(dir, 'zeros.tar.gz');
    await writeWithZeros(file, small, 256 * MiB, true);
    const gzBytes = fs.statSync(file).size;
    t.true(gzBytes < 4 * MiB, `${gzBytes} bytes of gzip`);
    const r = readInChild(t, file);
    t.regex(r.outcome, /^refused: at least \d+ bytes follow the last entry of the tar archive/);
    // The old gunzip path buffered the lot: 906 MB peak for 264 MiB.
    t.true(r.maxRssMb < 150, `peak RSS ${r.maxRssMb} MB`);
    t.true(r.maxRssMb - r.baseMb < 40, `RSS grew by ${r.maxRssMb - r.baseMb} MB while reading`);
    t.true(r.destroyed, 'the compressed input stream is destroyed too');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a trailer of exactly the limit is kept; one byte more is refused', async (t) => {
  const body = Buffer.concat([entry({ path: 'a' }, Buffer.from('x'))]);
  const atLimit = Buffer.concat([body, Buffer.alloc(MAX_TRAILER)]);
  const r = await read(atLimit);
  t.is(r.replay.length, atLimit.length);
  t.true(r.replay.equals(atLimit));
  // Non-zero bytes after the marker are kept as they are, too.
  const junk = Buffer.concat([body, END, Buffer.from('trailing junk from some writer')]);
  t.true((await read(junk)).replay.equals(junk));
  // A global header with no entry after it (git archive of an empty tree) is kept with the trailer.
  const lone = Buffer.concat([metadata('g', rec('comment', 'commit id')), END]);
  const loneRead = await read(lone);
  t.is(loneRead.entries.length, 0);
  t.true(loneRead.replay.equals(lone), 'a metadata header before the end marker is not lost');
  const err = await t.throwsAsync(read(Buffer.concat([atLimit, Buffer.alloc(1)])));
  t.regex(err.message, new RegExp(`at least ${MAX_TRAILER + 1} bytes follow the last entry of the tar archive; at most ${MAX_TRAILER} are accepted`));
});

test('a refused archive closes its input; so does close() on a half-read one', async (t) => {
  let closed = 0;
  async function* source(buf: Buffer): AsyncGenerator<Buffer> {
    try {
      yield* chunks(buf, 4096);
    } finally {
      closed++;
    }
  }
  const tooLong = Buffer.concat([small, Buffer.alloc(4 * MiB)]);
  await t.throwsAsync(readAll(source(tooLong)), { message: /follow the last entry/ });
  t.is(closed, 1, 'refused on the trailer');
  await t.throwsAsync(readAll(decompressed(source(gzipSync(tooLong)))), { message: /follow the last entry/ });
  t.is(closed, 2, 'refused on the trailer, through gzip');
  await t.throwsAsync(readAll(source(Buffer.concat([patched({ path: 'neg' }, 124, Buffer.from([0xff, ...Buffer.alloc(11, 0xff)])), END]))));
  t.is(closed, 3, 'refused on a header');
  const reader = new TarReader(decompressed(source(gzipSync(Buffer.concat([entry({ path: 'a' }, Buffer.alloc(1 << 20, 1)), END])))));
  t.is((await reader.next())?.header.path, 'a');
  await reader.close();
  t.is(closed, 4, 'closed half way through a gzip body');
});

// ---------------------------------------------------------------------------------------------------
// Byte-exact export of real trailers, through the CLI.

function tsvol(data: string, args: string[], input?: Buffer): { code: number | null; out: string; err: string; raw: Buffer } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, TSVOL_DATA: data }, input, maxBuffer: 1 << 28 });
  return { code: r.status, out: r.stdout.toString().trim(), err: r.stderr.toString(), raw: r.stdout };
}
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

test('GNU record padding (10 KiB, and 1 MiB records) round-trips byte-exact through layer import and export', (t) => {
  const dir = tempDir('tsvol-tar-');
  try {
    const data = path.join(dir, 'data');
    // Entries filling exactly one 10240-byte record, then a record of end marker and padding: the
    // trailer is exactly 10240 bytes.
    const entries = Buffer.concat([entry({ path: 'd', type: 'dir', mode: 0o755 }), entry({ path: 'd/f' }, Buffer.alloc(9216, 3))]);
    t.is(entries.length, 10240);
    const tars: [string, Buffer][] = [['10240-byte trailer', Buffer.concat([entries, Buffer.alloc(10240)])]];
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'file'), 'content\n');
    for (const b of ['20', '2048']) {
      const r = spawnSync('tar', ['--format=posix', '--numeric-owner', '-b', b, '-C', src, '-c', '.'], { maxBuffer: 1 << 28 });
      t.is(r.status, 0, r.stderr.toString());
      tars.push([`GNU tar -b ${b}`, r.stdout]);
    }
    t.is(tars[2]![1].length, MiB, 'GNU tar -b 2048 writes one 1 MiB record');
    for (const [label, tar] of tars) {
      const imp = tsvol(data, ['layer', 'import', '-'], tar);
      t.is(imp.code, 0, `${label}: ${imp.err}`);
      t.is(imp.out, sha(tar), `${label}: DiffID is the sha256 of the whole stream`);
      const exp = tsvol(data, ['layer', 'export', imp.out]);
      t.is(exp.code, 0, exp.err);
      t.true(exp.raw.equals(tar), `${label}: byte-identical re-export`);
    }
    const over = tsvol(data, ['layer', 'import', '-'], Buffer.concat([small, Buffer.alloc(2 * MiB)]));
    t.is(over.code, 1);
    t.regex(over.err, /layer tar refused: at least \d+ bytes follow the last entry of the tar archive; at most \d+ are accepted/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// Numbers, strictly.

const base256 = (len: number, value: bigint): Buffer => {
  const b = Buffer.alloc(len);
  let v = value < 0n ? value + (1n << BigInt(8 * len)) : value;
  for (let i = len - 1; i >= 0; i--) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  if (value >= 0n) b[0] = 0x80;
  return b;
};
const withPax = (records: Buffer[], h: Partial<TarHeader> & { path: string } = { path: 'victim' }): Buffer =>
  Buffer.concat([metadata('x', Buffer.concat(records)), entry(h), END]);

const refused: [string, Buffer, RegExp][] = [
  ['negative pax size', withPax([rec('size', '-1')]), /tar entry "victim": pax size "-1" is not an integer/],
  ['fractional pax size', withPax([rec('size', '1.5')]), /pax size "1.5"/],
  ['exponent pax size', withPax([rec('size', '1e3')]), /pax size "1e3"/],
  ['hex pax size', withPax([rec('size', '0x10')]), /pax size "0x10"/],
  ['empty pax size', withPax([rec('size', '')]), /pax size ""/],
  ['padded pax size', withPax([rec('size', ' 12')]), /pax size " 12"/],
  ['garbage pax size', withPax([rec('size', '12abc')]), /pax size "12abc"/],
  ['unsafe pax size', withPax([rec('size', '9007199254740993')]), /pax size "9007199254740993"/],
  ['pax size named by the pax path', withPax([rec('size', '-5'), rec('path', 'real/name')]), /tar entry "real\/name": pax size "-5"/],
  ['negative pax uid', withPax([rec('uid', '-1')]), /pax uid "-1" is not an integer from 0 to 4294967294/],
  ['pax uid 2^32-1', withPax([rec('uid', '4294967295')]), /pax uid "4294967295"/],
  ['negative pax gid', withPax([rec('gid', '-7')]), /pax gid "-7"/],
  ['huge pax gid', withPax([rec('gid', '99999999999999999999')]), /pax gid/],
  ['pax mtime garbage', withPax([rec('mtime', 'yesterday')]), /pax mtime "yesterday" is not a decimal time/],
  ['pax mtime exponent', withPax([rec('mtime', '1e9')]), /pax mtime "1e9"/],
  ['pax mtime trailing dot', withPax([rec('mtime', '1.')]), /pax mtime "1."/],
  ['pax mtime infinite', withPax([rec('mtime', '9'.repeat(400))]), /pax mtime/],
  ['base-256 negative size', Buffer.concat([patched({ path: 'f' }, 124, base256(12, -1n)), END]), /tar entry "f": size is negative \(-1\)/],
  ['base-256 negative uid', Buffer.concat([patched({ path: 'f' }, 108, base256(8, -2n)), END]), /tar entry "f": uid is negative/],
  ['base-256 negative gid', Buffer.concat([patched({ path: 'f' }, 116, base256(8, -(2n ** 40n))), END]), /gid is negative/],
  ['base-256 size beyond 2^53', Buffer.concat([patched({ path: 'f' }, 124, base256(12, 2n ** 60n)), END]), /size is out of range/],
  ['base-256 uid beyond 2^32-2', Buffer.concat([patched({ path: 'f' }, 108, base256(8, 2n ** 32n)), END]), /uid 4294967296 is out of range/],
  ['base-256 with a bad marker', Buffer.concat([patched({ path: 'f' }, 124, Buffer.from([0x81, ...Buffer.alloc(11)])), END]), /marker 0x81/],
  ['octal size with garbage', Buffer.concat([patched({ path: 'f' }, 124, Buffer.from('0000000001x\0')), END]), /size is not an octal number/],
  ['octal size with a space inside', Buffer.concat([patched({ path: 'f' }, 124, Buffer.from('  12 3     \0')), END]), /size is not an octal number/],
  ['octal size with 8 and 9', Buffer.concat([patched({ path: 'f' }, 124, Buffer.from('00000000089\0')), END]), /not an octal number/],
  ['devmajor beyond 12 bits', Buffer.concat([patched({ path: 'c', type: 'char' }, 329, Buffer.from('0010000\0')), END]), /devmajor 4096 is out of range/],
  ['devminor beyond 20 bits', Buffer.concat([patched({ path: 'c', type: 'char' }, 337, Buffer.from('4000000\0')), END]), /devminor 1048576 is out of range/],
  ['GNU long name with a NUL', Buffer.concat([metadata('L', Buffer.from('safe\0../../etc/passwd\0'), '././@LongLink'), entry({ path: 'x' }), END]), /GNU long name "safe\\u0000/],
  ['GNU long link with a NUL', Buffer.concat([metadata('K', Buffer.from('a\0b\0'), '././@LongLink'), entry({ path: 'x', type: 'symlink' }), END]), /GNU long link .* contains a NUL byte/],
  ['pax path with a NUL', withPax([rec('path', 'ok\0/../../x')]), /pax path "ok\\u0000.*" contains a NUL byte/],
  ['pax linkpath with a NUL', withPax([rec('linkpath', 'a\0b')], { path: 'l', type: 'symlink' }), /tar entry "l": pax linkpath .* contains a NUL byte/],
  ['xattr name with a NUL', withPax([rec('SCHILY.xattr.user.a\0trusted.b', 'v')]), /xattr name "user.a\\u0000trusted.b" contains a NUL byte/],
  ['bad URI in a LIBARCHIVE xattr', withPax([rec('LIBARCHIVE.xattr.user.%zz', 'dg==')]), /is not a URI-encoded xattr name/],
  ['pax length not decimal', withPax([Buffer.from('0x9 a=b\n')]), /corrupt pax record at byte 0: length "0x9" is not a decimal number/],
  ['pax length signed', withPax([Buffer.from('+8 a=bc\n')]), /length "\+8" is not a decimal number/],
  ['pax length too long', withPax([Buffer.from('99 a=b\n')]), /length 99 does not fit/],
  ['pax length too short', withPax([Buffer.from('3 a=b\n')]), /length 3 does not fit/],
  ['pax record without newline', withPax([Buffer.from('7 a=bcX')]), /does not end in a newline/],
  ['pax record without =', withPax([Buffer.from('7 abcd\n')]), /no "="/],
  ['pax record with an empty key', withPax([Buffer.from('7 =bcd\n')]), /empty key/],
  ['pax data with trailing junk', withPax([rec('uid', '1'), Buffer.from('junk')]), /corrupt pax record at byte 8: no length/],
];

for (const [label, tar, message] of refused) {
  test(`strict: ${label} is refused`, async (t) => {
    const err = await t.throwsAsync(read(tar));
    t.regex(err.message, message);
  });
}

test('strict: the largest values that are right are accepted', async (t) => {
  const cases: [Buffer, Partial<TarHeader>][] = [
    [withPax([rec('uid', '4294967294'), rec('gid', '0')]), { uid: 4294967294, gid: 0 }],
    [withPax([rec('mtime', '-1.5')]), { mtime: -1.5 }],
    [withPax([rec('mtime', '1700000000.123456789')]), { mtime: 1700000000.123456789 }],
    [withPax([rec('size', '0'), rec('path', 'p')]), { size: 0, path: 'p' }],
    [withPax([rec('LIBARCHIVE.xattr.user.%41', 'dg==')]), { xattrs: new Map([['user.A', Buffer.from('v')]]) }],
    // Trailing NULs after the last record (some writers pad the data) are not a record.
    [withPax([rec('uid', '5'), Buffer.alloc(7)]), { uid: 5 }],
    [Buffer.concat([patched({ path: 'f' }, 136, base256(12, -86400n)), END]), { mtime: -86400 }],
    [Buffer.concat([patched({ path: 'f' }, 108, base256(8, 4294967294n)), END]), { uid: 4294967294 }],
    [Buffer.concat([patched({ path: 'f' }, 124, Buffer.from('    \0      ')), END]), { size: 0 }],
    [Buffer.concat([patched({ path: 'c', type: 'char' }, 329, Buffer.from('   7777')), END]), { devmajor: 0o7777 }],
    [Buffer.concat([patched({ path: 'c', type: 'char' }, 337, Buffer.from(' 3777777')), END]), { devminor: 0xfffff }],
  ];
  for (const [tar, want] of cases) {
    const { entries } = await read(tar);
    t.like(entries[0], want);
  }
  // base-256 as the decoder sees it: big sizes on a directory (no body follows)
  const dir = patched({ path: 'd', type: 'dir' }, 124, base256(12, 2n ** 40n));
  t.is(decodeHeader(dir).header.size, 2 ** 40);
  t.is(decodeHeader(patched({ path: 'd', type: 'dir' }, 124, base256(12, BigInt(Number.MAX_SAFE_INTEGER)))).header.size, Number.MAX_SAFE_INTEGER);
  // The encoder writes negative times as base-256 the reader takes back (a pre-1970 file in adoptTree).
  t.is((await read(Buffer.concat([entry({ path: 'old', mtime: -1_000_000 }), END]))).entries[0]!.mtime, -1_000_000);
  t.is((await read(Buffer.concat([entry({ path: 'old', mtime: -2.25 }), END]))).entries[0]!.mtime, -2.25);
  t.is((await read(Buffer.concat([entry({ path: 'f', mtime: 1 + 1e-10 }), END]))).entries[0]!.mtime, 1);
});

test('pax mtimes are kept to the nanosecond (no double on the way) and written back exactly (#10)', async (t) => {
  const cases: [string, bigint][] = [
    ['1700000000.123456789', 1_700_000_000_123_456_789n],
    ['-1.5', -1_500_000_000n],
    ['-0.000000001', -1n],
    ['12.1234567899', 12_123_456_789n], // digits beyond the ninth are dropped
    ['42', 42_000_000_000n],
  ];
  for (const [text, ns] of cases) {
    const { entries } = await read(withPax([rec('mtime', text)]));
    t.is(entries[0]!.mtimeNs, ns, text);
    t.is(mtimeNsOf(entries[0]!), ns, text);
  }
  // A double cannot hold these digits: 1700000000.123456789 reads back as ...123456716 through Number.
  t.not(BigInt(Math.round((1700000000.123456789 - 1_700_000_000) * 1e9)), 123_456_789n);
  // Written from mtimeNs, read back to the same nanosecond (negative times too).
  for (const ns of [1_700_000_000_123_456_789n, -2_250_000_001n]) {
    const { entries } = await read(Buffer.concat([entry({ path: 'f', mtime: Number(ns) / 1e9, mtimeNs: ns }), END]));
    t.is(mtimeNsOf(entries[0]!), ns);
  }
  // Without pax, whole seconds from the ustar field.
  t.is(mtimeNsOf((await read(Buffer.concat([entry({ path: 'f', mtime: 5 }), END]))).entries[0]!), 5_000_000_000n);
});

// ---------------------------------------------------------------------------------------------------
// Metadata per entry, bounded.

test('metadata records before one entry add up to at most MAX_METADATA bytes, global pax headers included', async (t) => {
  const MB = Buffer.alloc(MiB - 512, 0x61);
  const comment = (): Buffer => rec('comment', MB.subarray(0, MB.length - 20));
  const slices = Math.ceil(MAX_METADATA / MiB) + 1;
  const pax = Array.from({ length: slices }, (_, i) => metadata(i % 2 === 0 ? 'x' : 'g', comment()));
  const err = await t.throwsAsync(read(Buffer.concat([...pax, entry({ path: 'a' }), END])));
  t.regex(err.message, new RegExp(`tar metadata records before one entry .* exceed ${MAX_METADATA} bytes`));
  // Each entry has its own budget: the same records spread over entries are fine.
  const spread: Buffer[] = [];
  for (let i = 0; i < slices; i++) spread.push(metadata('x', comment()), entry({ path: `e${i}` }));
  const r = await read(Buffer.concat([...spread, END]));
  t.is(r.entries.length, slices);
  // Many empty metadata headers are counted by their blocks.
  const empties = Array.from({ length: MAX_METADATA / 512 + 1 }, () => metadata('g', Buffer.alloc(0)));
  await t.throwsAsync(read(Buffer.concat([...empties, entry({ path: 'a' }), END])), { message: /exceed/ });
});

test(`an entry has at most ${MAX_XATTRS} xattrs`, async (t) => {
  const xattrs = (n: number): Buffer[] => Array.from({ length: n }, (_, i) => rec(`SCHILY.xattr.user.x${i}`, 'v'));
  t.is((await read(withPax(xattrs(MAX_XATTRS)))).entries[0]!.xattrs.size, MAX_XATTRS);
  const err = await t.throwsAsync(read(withPax(xattrs(MAX_XATTRS + 1))));
  t.is(err.message, `tar entry "victim" has more than ${MAX_XATTRS} xattrs`);
});

test(`an entry has at most ${MAX_PAX_RECORDS} pax records, counted over all its pax headers`, async (t) => {
  // 16 MiB of 12-byte records once made 1.4 million Map entries: 700 MB and 18 s for one entry.
  const records = (n: number, from = 0): Buffer => Buffer.concat(Array.from({ length: n }, (_, i) => rec(`k${from + i}`, '')));
  const half = MAX_PAX_RECORDS / 2;
  const ok = Buffer.concat([metadata('x', records(half)), metadata('x', records(half, half)), entry({ path: 'a' }), END]);
  t.is((await read(ok)).entries.length, 1);
  const over = Buffer.concat([metadata('x', records(half)), metadata('x', records(half + 1, half)), entry({ path: 'a' }), END]);
  await t.throwsAsync(read(over), { message: `tar metadata header "PaxHeaders/x": too many pax records (at most ${MAX_PAX_RECORDS} for one entry)` });
  // The same key over and over counts each time: parsing is bounded, not only the Map.
  await t.throwsAsync(read(withPax(Array.from({ length: MAX_PAX_RECORDS + 1 }, () => rec('comment', 'x')))), { message: /too many pax records/ });
});

// ---------------------------------------------------------------------------------------------------
// Fuzz.

const arbEntry = fc.oneof(
  fc.record({
    path: fc.stringMatching(/^[a-z]{1,8}(\/[a-z]{1,8}){0,2}$/),
    type: fc.constant('file' as const),
    body: fc.uint8Array({ maxLength: 1500 }),
    uid: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4294967294 })),
    mtime: fc.oneof(fc.constant(1_700_000_000), fc.double({ min: -1e10, max: 1e10, noNaN: true })),
    xattrs: fc.array(fc.tuple(fc.stringMatching(/^user\.[a-z]{1,5}$/), fc.uint8Array({ maxLength: 20 })), { maxLength: 3 }),
  }),
  fc.record({
    path: fc.oneof(fc.stringMatching(/^[a-z]{1,8}$/), fc.constant(`long/${'n'.repeat(150)}`)),
    type: fc.constantFrom('dir' as const, 'symlink' as const, 'hardlink' as const, 'fifo' as const, 'char' as const),
    body: fc.constant(new Uint8Array()),
    uid: fc.constant(0),
    mtime: fc.constant(1),
    xattrs: fc.constant([] as [string, Uint8Array][]),
  }),
);

/** A valid archive from our encoder, with a trailer of 2 to 20 zero blocks. */
const arbArchive = fc.tuple(fc.array(arbEntry, { maxLength: 6 }), fc.integer({ min: 2, max: 20 })).map(([entries, zeroBlocks]) =>
  Buffer.concat([
    ...entries.map((e) =>
      entry({ path: e.path, type: e.type, uid: e.uid, mtime: e.mtime, linkname: e.type === 'symlink' || e.type === 'hardlink' ? 'target' : '',
        xattrs: new Map(e.xattrs.map(([k, v]) => [k, Buffer.from(v)])) }, Buffer.from(e.body))),
    Buffer.alloc(zeroBlocks * 512),
  ]),
);

/** Values that lie, for numeric fields (base-256 or text) and for pax records. */
const NUMERIC_FIELDS: [number, number][] = [[100, 8], [108, 8], [116, 8], [124, 12], [136, 12], [329, 8], [337, 8]];
const arbFieldValue = fc.oneof(
  fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }).map((v) => ({ base256: v })),
  fc.constantFrom('-1', '1.5', '0x10', '1e9', '7 7', '  12  ', '99999999999', '\0\0\0', '8', '').map((text) => ({ text })),
);
const arbPaxRecord = fc.tuple(
  fc.constantFrom('size', 'uid', 'gid', 'mtime', 'path', 'linkpath', 'SCHILY.xattr.user.a', 'LIBARCHIVE.xattr.user.%ff', 'comment'),
  fc.oneof(
    fc.constantFrom('-1', '1.5', '-0', '1e3', '0x10', '9007199254740993', '4294967295', '99999999999999999999', 'a\0b', '../x', '', ' 5', '5 '),
    fc.string({ maxLength: 12 }),
    fc.nat().map(String),
  ),
);

type Mutation =
  | { kind: 'set'; at: number; byte: number }
  | { kind: 'cut'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  /** A numeric field of a 512-aligned block rewritten, and its checksum made right again. */
  | { kind: 'field'; at: number; field: number; value: { base256: bigint } | { text: string } }
  /** A pax header inserted at a 512-aligned offset. */
  | { kind: 'pax'; at: number; record: [string, string] };
const arbMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.constantFrom(0, 0x20, 0x30, 0x37, 0x0a, 0x2d, 0x78, 0x80, 0xff, 0x4c).chain((b) => fc.oneof(fc.constant(b), fc.nat(255))) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 600 }) }),
  fc.record({ kind: fc.constant('field' as const), at: fc.nat(), field: fc.nat(NUMERIC_FIELDS.length - 1), value: arbFieldValue }),
  fc.record({ kind: fc.constant('pax' as const), at: fc.nat(), record: arbPaxRecord }),
);

function mutate(input: Buffer, mutations: Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of mutations) {
    if (b.length === 0) break;
    const at = m.at % b.length;
    const block = at - (at % 512);
    if (m.kind === 'set') b[at] = m.byte;
    else if (m.kind === 'cut') b = b.subarray(0, at);
    else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    else if (m.kind === 'pax') b = Buffer.concat([b.subarray(0, block), metadata('x', rec(...m.record)), b.subarray(block)]);
    else if (block + 512 <= b.length) {
      const [off, len] = NUMERIC_FIELDS[m.field]!;
      const value = 'text' in m.value ? Buffer.from(m.value.text.padEnd(len, '\0').slice(0, len), 'latin1') : base256(len, m.value.base256);
      value.copy(b, block + off);
      resum(b.subarray(block, block + 512));
    }
  }
  return b;
}

/** What every header the reader hands out must satisfy, whatever the input. */
function insane(h: TarHeader): string | undefined {
  const within = (n: number, max: number): boolean => Number.isSafeInteger(n) && n >= 0 && n <= max;
  if (!within(h.size, Number.MAX_SAFE_INTEGER)) return `size ${h.size}`;
  if (!within(h.uid, 4294967294) || !within(h.gid, 4294967294)) return `uid/gid ${h.uid}/${h.gid}`;
  if (!within(h.mode, Number.MAX_SAFE_INTEGER)) return `mode ${h.mode}`;
  if (!within(h.devmajor, 0xfff) || !within(h.devminor, 0xfffff)) return `device ${h.devmajor}/${h.devminor}`;
  if (!Number.isFinite(h.mtime) || Math.abs(h.mtime) > Number.MAX_SAFE_INTEGER) return `mtime ${h.mtime}`;
  if (h.path.includes('\0') || h.linkname.includes('\0') || [...h.xattrs.keys()].some((k) => k.includes('\0'))) return 'a NUL in a name';
  if (h.xattrs.size > MAX_XATTRS) return `${h.xattrs.size} xattrs`;
  return undefined;
}

/** Rejects after `ms`: a reader that hangs fails the property instead of the whole run. */
async function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms: hung`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

// Serial: it runs alone, so its hang timeout measures the reader and not the other tests of this file.
test.serial('fuzz: a mutated archive reads to the end, reproducing its bytes, or throws an Error; never hangs or overreads', async (t) => {
  let accepted = 0;
  let refusedCount = 0;
  await fc.assert(
    fc.asyncProperty(arbArchive, fc.array(arbMutation, { maxLength: 4 }), fc.integer({ min: 1, max: 2048 }), fc.boolean(), async (archive, mutations, chunk, gzip) => {
      // gzip: mutate the compressed bytes, so gunzip's own errors are fuzzed too
      const input = mutate(gzip ? gzipSync(archive) : archive, mutations);
      let result: ReadResult | undefined;
      try {
        result = await within(10_000, readAll(decompressed(chunks(input, chunk))));
      } catch (err) {
        if (!(err instanceof Error)) throw new Error(`threw a non-Error: ${String(err)}`);
        if (err.message.startsWith('no answer in')) throw err;
        refusedCount++;
        return;
      }
      accepted++;
      for (const h of result.entries) {
        const why = insane(h);
        if (why !== undefined) throw new Error(`accepted an entry "${h.path}" with ${why}`);
      }
      // Body bytes are bounded by the input (gzip: by deflate's best ratio).
      if (result.bodies > input.length * (gzip ? 1032 : 1)) throw new Error(`${result.bodies} body bytes from ${input.length} input bytes`);
      if (!gzip && !result.replay.equals(input)) throw new Error('accepted, but raw + bodies + padding + trailer differ from the input');
    }),
    { numRuns: 4000, interruptAfterTimeLimit: 25_000 },
  );
  t.log(`accepted ${accepted}, refused ${refusedCount}`);
  t.true(accepted > 0 && refusedCount > 0, 'both outcomes were exercised');
});
