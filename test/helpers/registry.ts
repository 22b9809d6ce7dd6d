/**
 * A real registry (Debian's docker-registry 2.8) on a loopback port of the test's own, and a counting
 * proxy in front of it: every request through the proxy is recorded (method, path, query, status), so a
 * test counts real blob GETs, mounts and uploads; it can also cut a blob download short, to exercise the
 * client's resume. Docker and tsvol both treat 127.0.0.0/8 registries as plain HTTP.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One request seen by the proxy. */
export interface Seen {
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  /** The Range header, if any (a resumed download). */
  readonly range: string | undefined;
  readonly status: number;
  /** When the proxy got the request and when its reply ended (ms). */
  readonly start: number;
  readonly end: number;
}

/** A registry behind a counting proxy. */
export interface TestRegistry {
  /** `127.0.0.1:<proxy port>`: the host every image name uses. */
  readonly host: string;
  /** `127.0.0.1:<registry port>`: the registry itself, without the proxy (benchmarks). */
  readonly direct: string;
  /** Requests seen since the last reset() (each once its reply was sent). */
  readonly seen: Seen[];
  reset(): void;
  /** Blob GETs (layer or config downloads) seen, by digest. */
  blobGets(): string[];
  /**
   * Cuts the next `times` GETs of blob `digest` after `after` bytes of their body (the socket is
   * destroyed mid-body, as a connection reset would).
   */
  cutBlob(digest: string, after: number, times: number): Promise<void>;
  /** Holds every blob GET `ms` before forwarding it. */
  delayBlobs(ms: number): Promise<void>;
  /** The most blob GETs that were in flight at once, since the last reset(). */
  maxBlobGetsAtOnce(): number;
  /** Docker-Content-Digest of `repo:tag`'s manifest, as the registry says (HEAD). */
  manifestDigest(repo: string, tag: string): Promise<string | undefined>;
  stop(): Promise<void>;
}

async function waitUp(url: string, proc: ChildProcess): Promise<void> {
  for (let i = 0; ; i++) {
    const up = await fetch(url).then((r) => r.status === 200, () => false);
    if (up) return;
    if (i > 100 || proc.exitCode !== null) throw new Error(`docker-registry did not start (${url})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Starts docker-registry storing under `workDir`, on `port`, and a proxy on `port + 1`. */
export async function startRegistry(workDir: string, port: number): Promise<TestRegistry> {
  const upstream = `127.0.0.1:${port}`;
  const conf = path.join(workDir, `registry-${port}.yml`);
  fs.writeFileSync(conf, `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${workDir}/registry-${port}\n  delete:\n    enabled: true\nhttp:\n  addr: ${upstream}\n`);
  const proc = spawn('/usr/bin/docker-registry', ['serve', conf], { stdio: 'ignore' });
  await waitUp(`http://${upstream}/v2/`, proc);
  const log = path.join(workDir, `proxy-${port}.log`);
  fs.writeFileSync(log, '');
  const proxy = spawn(process.execPath, ['--import', 'tsx', path.join(path.dirname(fileURLToPath(import.meta.url)), 'registry-proxy.ts'), String(port + 1), String(port), log], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    proxy.stdout?.once('data', () => resolve());
    proxy.once('exit', (code) => reject(new Error(`the registry proxy exited ${code}`)));
  });
  await waitUp(`http://127.0.0.1:${port + 1}/v2/`, proxy);
  let offset = 0;
  /** A control request to the proxy, on a fresh connection (fetch would reuse one the proxy may have closed as idle). */
  const control = (p: string): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: port + 1, method: 'POST', path: p, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve());
      });
      req.on('error', reject);
      req.end();
    });
  const seen = (): Seen[] =>
    fs
      .readFileSync(log, 'utf8')
      .slice(offset)
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => {
        const o = JSON.parse(l) as { method: string; path: string; query: string; range?: string; status: number; start: number; end: number };
        return { method: o.method, path: o.path, query: new URLSearchParams(o.query), range: o.range, status: o.status, start: o.start, end: o.end };
      });
  return {
    host: `127.0.0.1:${port + 1}`,
    direct: upstream,
    get seen() {
      return seen();
    },
    reset: () => void (offset = fs.readFileSync(log, 'utf8').length),
    blobGets: () =>
      seen()
        .filter((s) => s.method === 'GET' && /\/blobs\/sha256:/.test(s.path))
        .map((s) => s.path.slice(s.path.lastIndexOf('/') + 1)),
    cutBlob: (digest, after, times) => control(`/__cut?digest=${digest}&after=${after}&times=${times}`),
    delayBlobs: (ms) => control(`/__delay?ms=${ms}`),
    maxBlobGetsAtOnce() {
      const gets = seen().filter((s) => s.method === 'GET' && /\/blobs\/sha256:/.test(s.path));
      let most = 0;
      for (const g of gets) most = Math.max(most, gets.filter((o) => o.start <= g.start && o.end > g.start).length);
      return most;
    },
    async manifestDigest(repo, tag) {
      const r = await fetch(`http://${upstream}/v2/${repo}/manifests/${tag}`, {
        method: 'HEAD',
        headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' },
      });
      return r.headers.get('docker-content-digest') ?? undefined;
    },
    async stop() {
      proxy.kill();
      proc.kill();
    },
  };
}
