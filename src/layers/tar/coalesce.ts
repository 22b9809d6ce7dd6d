/**
 * Output coalescing for tar streams: headers, file contents and padding are copied into large buffers,
 * and only full buffers are yielded. A per-file buffer or a yield per 512-byte header costs more than the
 * I/O itself (measured: export 7× slower than `tar -c` before, on 10,000 files).
 */
import fs from 'node:fs';

/** Size of each yielded buffer. */
const OUT = 4 << 20;

/** Accumulates bytes; `take()` returns full buffers ready to yield. */
export class Coalescer {
  private buf = Buffer.allocUnsafe(OUT);
  private used = 0;
  private ready: Buffer[] = [];

  /** Appends bytes. */
  push(bytes: Buffer): void {
    let off = 0;
    while (off < bytes.length) {
      const n = Math.min(bytes.length - off, OUT - this.used);
      bytes.copy(this.buf, this.used, off, off + n);
      this.used += n;
      off += n;
      if (this.used === OUT) this.rotate();
    }
  }

  /** Appends `size` zero bytes. */
  zeros(size: number): void {
    if (size > 0) this.push(Buffer.alloc(size));
  }

  /** Appends exactly `size` bytes of the file `fd`, read straight into the output buffer. */
  file(fd: number, size: number, what: string): void {
    let left = size;
    while (left > 0) {
      const n = fs.readSync(fd, this.buf, this.used, Math.min(left, OUT - this.used), null);
      if (n === 0) throw new Error(`"${what}" is shorter than recorded (${size} bytes)`);
      this.used += n;
      left -= n;
      if (this.used === OUT) this.rotate();
    }
  }

  /** Full buffers since the last call. */
  take(): Buffer[] {
    const out = this.ready;
    this.ready = [];
    return out;
  }

  /** Everything left, including a partial buffer. */
  flush(): Buffer[] {
    if (this.used > 0) this.ready.push(this.buf.subarray(0, this.used));
    this.used = 0;
    this.buf = Buffer.allocUnsafe(OUT);
    return this.take();
  }

  private rotate(): void {
    this.ready.push(this.buf);
    this.buf = Buffer.allocUnsafe(OUT);
    this.used = 0;
  }
}
