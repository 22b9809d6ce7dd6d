/**
 * A streaming tar reader: pulls entries one at a time from any async byte source, never holding more
 * than one chunk plus one header in memory. For byte-exact re-export (the tar-split idea) it hands back
 * each entry's raw header bytes (pax/GNU blocks included), its padding, and the archive's trailer.
 */
import { BLOCK, TYPE, applyPax, decodeHeader, isZeroBlock, padding, parsePax, type TarHeader } from './format.js';

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

  /** Everything left. */
  async rest(): Promise<Buffer> {
    await this.fill(Number.MAX_SAFE_INTEGER);
    return this.take(this.queued);
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
  /** The body's chunks; must be consumed fully (or skipped with `skip()`). */
  body(): AsyncGenerator<Buffer>;
  skip(): Promise<void>;
  /** The padding after the body, once it has been read (all zeros in every sane archive). */
  padding(): Buffer;
}

/** Reads tar entries from `input`. After `next()` returns undefined, `trailer` holds the end bytes. */
export class TarReader {
  private readonly src: ByteSource;
  /** Drains what is left of the current entry (body and padding), whether or not it was read. */
  private current: (() => Promise<void>) | undefined;
  private lastPadding: Buffer = Buffer.alloc(0);
  /** The bytes after the last entry (end-of-archive zero blocks and any record padding). */
  trailer: Buffer = Buffer.alloc(0);

  constructor(input: AsyncIterable<Buffer>) {
    this.src = new ByteSource(input[Symbol.asyncIterator]());
  }

  /** The next entry, or undefined at the end of the archive. */
  async next(): Promise<TarEntry | undefined> {
    if (this.current) await this.current();
    this.current = undefined;
    const raws: Buffer[] = [];
    let pax = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const block = await this.src.read(BLOCK, 'a header');
      if (isZeroBlock(block)) {
        this.trailer = Buffer.concat([block, await this.src.rest()]);
        return undefined;
      }
      raws.push(block);
      const { typeflag, header } = decodeHeader(block);
      if (typeflag === TYPE.paxHeader || typeflag === TYPE.paxGlobal || typeflag === TYPE.gnuLongName || typeflag === TYPE.gnuLongLink) {
        if (header.size > 16 << 20) throw new Error(`tar metadata record of ${header.size} bytes is too large`);
        const data = await this.src.read(header.size + padding(header.size), 'a metadata record');
        raws.push(data);
        const body = data.subarray(0, header.size);
        if (typeflag === TYPE.paxHeader) pax = new Map([...pax, ...parsePax(body)]);
        // Global pax headers set defaults for the rest of the archive; layers never rely on them.
        else if (typeflag === TYPE.gnuLongName) longName = body.toString('utf8').replace(/\0+$/, '');
        else if (typeflag === TYPE.gnuLongLink) longLink = body.toString('utf8').replace(/\0+$/, '');
        continue;
      }
      if (longName !== undefined) header.path = longName;
      if (longLink !== undefined) header.linkname = longLink;
      applyPax(header, pax);
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
        const chunk = await src.readSome(state.left, `the body of "${header.path}"`);
        state.left -= chunk.length;
        yield chunk;
      }
      await finish();
    }
    this.current = finish;
    return { header, raw, body, skip: finish, padding: () => self.lastPadding };
  }
}
