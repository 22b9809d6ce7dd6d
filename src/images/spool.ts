/**
 * An image archive (`docker save` output or an OCI layout tar) spooled to disk: every regular file of the
 * outer tar is written to its own file in a stage, so the archive may list manifest.json after the
 * layers and memory stays bounded whatever its size (#11). Paths are checked as entries arrive: an
 * absolute path, `..`, a link leaving the archive or a device is refused, and nothing is extracted under
 * its own name (files are `f<N>` in the stage), so no path in the archive ever reaches the filesystem.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, describeError } from '../errors.js';
import { decompressed } from '../layers/tar/gzip.js';
import { TarReader } from '../layers/tar/reader.js';

/** The most bytes a JSON document of the archive may have (manifests, configs, index). */
export const MAX_JSON = 8 << 20;
/** The most entries an archive may hold. */
const MAX_ENTRIES = 1 << 20;

/** A spooled archive. */
export interface Spool {
  /** True if the archive holds `name` (after links). */
  has(name: string): boolean;
  /** The spooled file of `name`, following the archive's own links; NotFound-like InvalidArgument otherwise. */
  file(name: string): string;
  /** The bytes of a small file (at most MAX_JSON). */
  read(name: string): Buffer;
  /** The file's sha256 (`sha256:<hex>`) of its stored bytes, computed once. */
  digest(name: string): Promise<string>;
}

/** An archive path, normalized: `./a//b` is `a/b`; absolute paths and `..` are refused. */
function clean(p: string): string {
  if (p.startsWith('/')) throw new InvalidArgumentError(`image archive refused: absolute path ${JSON.stringify(p)}`);
  const parts = p.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw new InvalidArgumentError(`image archive refused: path ${JSON.stringify(p)} leaves the archive`);
  return parts.join('/');
}

/** Reads `input` (a tar, plain or gzip) into `dir`, returning how to find its files. */
export async function spoolArchive(input: AsyncIterable<Buffer>, dir: string): Promise<Spool> {
  const files = new Map<string, string>();
  const links = new Map<string, string>();
  const reader = new TarReader(decompressed(input));
  let n = 0;
  try {
    for (let e = await reader.next(); e !== undefined; e = await reader.next()) {
      if (++n > MAX_ENTRIES) throw new InvalidArgumentError(`image archive refused: more than ${MAX_ENTRIES} entries`);
      const name = clean(e.header.path);
      if (files.has(name) || links.has(name)) throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} appears twice`);
      switch (e.header.type) {
        case 'dir':
          await e.skip();
          break;
        case 'file': {
          const f = path.join(dir, `f${n}`);
          const fd = fs.openSync(f, 'wx', 0o600);
          try {
            for await (const chunk of e.body()) fs.writeSync(fd, chunk);
          } finally {
            fs.closeSync(fd);
          }
          files.set(name, f);
          break;
        }
        case 'symlink': {
          // Relative to the link's directory, and inside the archive (docker save links a repeated layer).
          const target = e.header.linkname.startsWith('/') ? e.header.linkname : path.posix.join(path.posix.dirname(name), e.header.linkname);
          links.set(name, clean(target));
          await e.skip();
          break;
        }
        case 'hardlink':
          links.set(name, clean(e.header.linkname));
          await e.skip();
          break;
        default:
          throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is a ${e.header.type}; an image archive holds files, directories and links only`);
      }
    }
  } catch (err) {
    await reader.close();
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`image archive refused: ${describeError(err)}`, { cause: err });
  }
  const digests = new Map<string, Promise<string>>();
  function file(name: string): string {
    let p = clean(name);
    for (let hops = 0; hops < 16; hops++) {
      const f = files.get(p);
      if (f !== undefined) return f;
      const next = links.get(p);
      if (next === undefined) break;
      p = next;
    }
    throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is missing (or a link to nothing)`);
  }
  return {
    has(name) {
      try {
        file(name);
        return true;
      } catch {
        // Missing is the answer, not an error.
        return false;
      }
    },
    file,
    read(name) {
      const f = file(name);
      const size = fs.statSync(f).size;
      if (size > MAX_JSON) throw new InvalidArgumentError(`image archive refused: ${JSON.stringify(name)} is ${size} bytes; at most ${MAX_JSON} are accepted for metadata`);
      return fs.readFileSync(f);
    },
    digest(name) {
      const f = file(name);
      let d = digests.get(f);
      if (d === undefined) {
        d = (async () => {
          const h = createHash('sha256');
          for await (const chunk of fs.createReadStream(f, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
          return `sha256:${h.digest('hex')}`;
        })();
        digests.set(f, d);
      }
      return d;
    },
  };
}
