/**
 * A streaming tar reader: pulls entries one at a time from any async byte source. For byte-exact
 * re-export (the tar-split idea) it hands back each entry's raw header bytes (pax/GNU blocks included),
 * its padding, and the archive's trailer.
 *
 * Memory is bounded whatever the archive claims (#9): a body streams chunk by chunk; an entry's metadata
 * records (pax, global pax, GNU long names) add up to at most MAX_METADATA bytes; the trailer is kept up
 * to MAX_TRAILER bytes and a longer one is refused after reading at most one chunk more. On any error the
 * input is closed (its iterator's `return()`: a stream is destroyed) before the error reaches the caller.
 */
import { BLOCK, MAX_PAX_RECORDS, TYPE, applyPax, assertNoNul, decodeHeader, isEntryType, isZeroBlock, padding, parsePax, unsupportedTypeError, type TarHeader } from './format.js';

/**
 * The most bytes accepted from the end-of-archive marker (the first zero block) to the end of the
 * input. They are kept for byte-exact export, so they must be bounded. GNU tar pads to a 10 KiB record
 * (trailers of 1 to 10.5 KiB); a blocking factor of 2048 (1 MiB records) still fits, with a block to spare
 * for the marker that did not fit the record before.
 */
export const MAX_TRAILER = (1 << 20) + BLOCK;

/**
 * The most metadata bytes one entry may carry: every pax, global pax and GNU long name/link header block,
 * record and padding before its own header, together.
 */
export const MAX_METADATA = 16 << 20;

/** Pulls exact byte counts from an async iterable of chunks. */
class ByteSource {
  private queue: Buffer[] = [];
  private queued = 0;
  private done = false;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(min: number): Promise<boolean> {
    while (this.queued < min && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (r.value.length > 0) {
        const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
        this.queue.push(chunk);
        this.queued += chunk.length;
      }
    }
    return this.queued >= min;
  }

  /** Exactly `n` bytes, or an error naming what was cut short. */
  async read(n: number, what: string): Promise<Buffer> {
    if (!(await this.fill(n))) throw new Error(`tar archive ends inside ${what}`);
    return this.take(n);
  }

  /** Up to `n` bytes (at least one), for streaming bodies. */
  async readSome(n: number, what: string): Promise<Buffer> {
    if (!(await this.fill(1))) throw new Error(`tar archive ends inside ${what}`);
    return this.take(Math.min(n, this.queue[0]!.length));
  }

  /**
   * Everything left if it is at most `limit` bytes; else undefined, having read past the limit by at
   * most one chunk, and the number of bytes seen so far.
   */
  async restUpTo(limit: number): Promise<{ rest: Buffer | undefined; seen: number }> {
    while (!this.done && this.queued <= limit) await this.fill(this.queued + 1);
    if (this.queued > limit) return { rest: undefined, seen: this.queued };
    return { rest: this.take(this.queued), seen: this.queued };
  }

  /** Stops reading: drops what is queued and returns the input iterator (a stream is destroyed). */
  async close(): Promise<void> {
    this.queue = [];
    this.queued = 0;
    if (this.done) return;
    this.done = true;
    await this.it.return?.();
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const head = this.queue[0]!;
    if (head.length === n) {
      this.queue.shift();
      this.queued -= n;
      return head;
    }
    if (head.length > n) {
      this.queue[0] = head.subarray(n);
      this.queued -= n;
      return head.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.queue[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.queue.shift();
      else this.queue[0] = c.subarray(k);
    }
    this.queued -= n;
    return out;
  }
}

/** One entry. Read its body (if any) with `body()` before asking for the next entry. */
export interface TarEntry {
  readonly header: TarHeader;
  /** The raw bytes of every header block of this entry (pax, GNU long names, the ustar block). */
  readonly raw: Buffer;
  /**
   * Bytes of body that follow the header in the archive: `header.size` for a regular file (and any type
   * read as one), 0 for the header-only types (directories, links, devices, fifos) whatever their size
   * field says, as Go's archive/tar reads them. Every one of these bytes is part of the DiffID.
   */
  readonly bodySize: number;
  /** The body's chunks; must be consumed fully (or skipped with `skip()`). */
  body(): AsyncGenerator<Buffer>;
  skip(): Promise<void>;
  /** The padding after the body, once it has been read (all zeros in every sane archive). */
  padding(): Buffer;
}

/**
 * What an unpacker pulls entries from: a TarReader, or a wrapper that hands back an entry it peeked at
 * (tree-archive.ts's root entry).
 */
export interface EntrySource {
  next(): Promise<TarEntry | undefined>;
  /** The archive's end bytes, once next() has returned undefined. */
  readonly trailer: Buffer;
}

/** Reads tar entries from `input`. After `next()` returns undefined, `trailer` holds the end bytes. */
export class TarReader implements EntrySource {
  private readonly src: ByteSource;
  /** Drains what is left of the current entry (body and padding), whether or not it was read. */
  private current: (() => Promise<void>) | undefined;
  private lastPadding: Buffer = Buffer.alloc(0);
  /**
   * The bytes after the last entry: metadata headers not followed by an entry (if any), the end-of-archive
   * zero blocks and any record padding, at most MAX_TRAILER bytes from the first zero block on.
   */
  trailer: Buffer = Buffer.alloc(0);

  constructor(input: AsyncIterable<Buffer>) {
    this.src = new ByteSource(input[Symbol.asyncIterator]());
  }

  /** The next entry, or undefined at the end of the archive. On an error, the input is closed first. */
  async next(): Promise<TarEntry | undefined> {
    return this.closingOnError(() => this.readNext());
  }

  /**
   * Stops reading and closes the input (its iterator's `return()`); for a caller that gives up before
   * the end. Safe to call more than once.
   */
  async close(): Promise<void> {
    this.current = undefined;
    await this.src.close();
  }

  private async closingOnError<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      // The archive's error is the one to report; closing the input is cleanup and rarely fails.
      await this.src.close().catch((closeErr: unknown) => {
        if (err instanceof Error && err.cause === undefined) err.cause = closeErr;
      });
      throw err;
    }
  }

  private async readNext(): Promise<TarEntry | undefined> {
    if (this.current) await this.current();
    this.current = undefined;
    const raws: Buffer[] = [];
    let metadata = 0;
    let paxRecords = 0;
    const pax = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const block = await this.src.read(BLOCK, 'a header');
      if (isZeroBlock(block)) {
        const { rest, seen } = await this.src.restUpTo(MAX_TRAILER - BLOCK);
        if (rest === undefined) {
          throw new Error(`at least ${BLOCK + seen} bytes follow the last entry of the tar archive; at most ${MAX_TRAILER} are accepted`);
        }
        // Metadata headers with no entry after them (git archive of an empty tree: one global header) have
        // no entry to carry their bytes, so the trailer does, for byte-exact export.
        this.trailer = Buffer.concat([...raws, block, rest]);
        return undefined;
      }
      raws.push(block);
      const { typeflag, header } = decodeHeader(block);
      if (typeflag === TYPE.paxHeader || typeflag === TYPE.paxGlobal || typeflag === TYPE.gnuLongName || typeflag === TYPE.gnuLongLink) {
        // Checked before the record is read: its size is the archive's claim.
        metadata += BLOCK + header.size + padding(header.size);
        if (metadata > MAX_METADATA) throw new Error(`tar metadata records before one entry (after "${header.path}") exceed ${MAX_METADATA} bytes`);
        const data = await this.src.read(header.size + padding(header.size), 'a metadata record');
        raws.push(data);
        const body = data.subarray(0, header.size);
        const where = `tar metadata header "${header.path}"`;
        if (typeflag === TYPE.paxHeader) {
          // Counted over all of this entry's pax headers, repeated keys included: parsing work is bounded too.
          const records = parsePax(body, where, MAX_PAX_RECORDS - paxRecords);
          paxRecords += records.length;
          for (const [k, v] of records) pax.set(k, v);
        }
        // Global pax headers set defaults for the rest of the archive; layers never rely on them.
        else if (typeflag === TYPE.gnuLongName) longName = gnuName(body, `${where}: GNU long name`);
        else if (typeflag === TYPE.gnuLongLink) longLink = gnuName(body, `${where}: GNU long link`);
        continue;
      }
      if (longName !== undefined) header.path = longName;
      if (longLink !== undefined) header.linkname = longLink;
      applyPax(header, pax);
      if (!isEntryType(typeflag)) throw unsupportedTypeError(typeflag, header.path);
      return this.entry(header, Buffer.concat(raws));
    }
  }

  private entry(header: TarHeader, raw: Buffer): TarEntry {
    const src = this.src;
    const state = { left: header.type === 'file' ? header.size : 0, padded: false, started: false };
    const size = state.left;
    const self = this;
    this.lastPadding = Buffer.alloc(0);
    async function finish(): Promise<void> {
      while (state.left > 0) state.left -= (await src.readSome(state.left, `the body of "${header.path}"`)).length;
      if (!state.padded) {
        state.padded = true;
        self.lastPadding = await src.read(padding(size), `the padding of "${header.path}"`);
      }
    }
    async function* body(): AsyncGenerator<Buffer> {
      if (state.started) throw new Error(`body of "${header.path}" was already read`);
      state.started = true;
      while (state.left > 0) {
        const chunk = await self.closingOnError(() => src.readSome(state.left, `the body of "${header.path}"`));
        state.left -= chunk.length;
        yield chunk;
      }
      await self.closingOnError(finish);
    }
    this.current = finish;
    return { header, raw, bodySize: size, body, skip: () => self.closingOnError(finish), padding: () => self.lastPadding };
  }
}

/** A GNU long name or link: the record is the name and its NUL terminator(s); a NUL inside is refused. */
function gnuName(body: Buffer, what: string): string {
  const name = body.toString('utf8').replace(/\0+$/, '');
  assertNoNul(name, what);
  return name;
}
