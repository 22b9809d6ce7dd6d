#!/usr/bin/env bash
# Builds test/fixtures/v01-data-root.tar.gz: a data root written by tsvol 0.1 itself, for the migration
# test (test/migrate-0.1.test.ts, issue #10). Needs root (overlay mounts) and the repository's
# node_modules. Usage: scripts/make-v01-fixture.sh [commit (default 13beab6, 0.1)] [output]
#
# What 0.1 writes here: three layers in a chain (the third deletes a file: a whiteout), tags on two of
# them, an overlay container layer with one commit (a layer adopted from its upper) and an uncommitted
# change, and, through 0.1's server on its socket, a named volume with a file and two layered volumes
# (each holding its layer: holds/<hex>/<holder>). The server is stopped (SIGTERM: the WAL is checkpointed),
# the container unmounted, and the data root packed with the original layer tars and a manifest of what
# the test must find.
set -euo pipefail
commit=${1:-13beab6}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out=${2:-$repo/test/fixtures/v01-data-root.tar.gz}
work=$(mktemp -d /var/tmp/tsvol-v01-XXXXXX)
src=$work/src
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  umount -l "$work/root/data/layers/containers/ctr/merged" 2>/dev/null || true
  git -C "$repo" worktree remove --force "$src" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

git -C "$repo" worktree add --detach "$src" "$commit" >/dev/null
ln -s "$(readlink -f "$repo/node_modules")" "$src/node_modules"
(cd "$src" && npm run build >/dev/null)

root=$work/root
data=$root/data
mkdir -p "$root/tars"
export TSVOL_DATA=$data
export TSVOL_LAYER_DRIVER=overlay
tsvol() { node "$src/dist/cli.js" "$@"; }

# Layer tars, reproducible (fixed owners and times), kept next to the data root for the export check.
mk() { # name dir
  tar --format=posix --numeric-owner --owner=0 --group=0 --mtime=@1700000000 --sort=name \
    --pax-option=delete=atime,delete=ctime -C "$2" -cf "$root/tars/$1.tar" .
}
t=$work/trees
mkdir -p "$t/base/etc" "$t/base/bin" "$t/app/srv" "$t/conf/etc"
printf 'base\n' > "$t/base/etc/motd"
printf 'old\n' > "$t/base/etc/old.conf"
printf '#!/bin/sh\necho hi\n' > "$t/base/bin/hello"
chmod 755 "$t/base/bin/hello"
printf 'app v1\n' > "$t/app/srv/app.txt"
head -c 70000 /dev/zero | tr '\0' 'a' > "$t/app/srv/big.bin"
printf 'color=blue\n' > "$t/conf/etc/app.conf"
: > "$t/conf/etc/.wh.old.conf"
for n in base app conf; do mk "$n" "$t/$n"; done

base=$(tsvol layer import "$root/tars/base.tar")
app=$(tsvol layer import --parent "$base" "$root/tars/app.tar")
conf=$(tsvol layer import --parent "$app" "$root/tars/conf.tar")
tsvol layer tag "$base" base
tsvol layer tag "$conf" app:1
merged=$(tsvol container create ctr --from app:1)
printf 'committed\n' > "$merged/committed.txt"
committed=$(tsvol container commit ctr)
printf 'pending\n' > "$merged/pending.txt"

# Volumes through 0.1's server, as dockerd would make them.
sock=$work/tsvol.sock
TSVOL_SOCKET=$sock node "$src/dist/main.js" > "$work/server.log" 2>&1 &
server_pid=$!
call() { # endpoint json
  node -e '
    const http = require("node:http");
    const [sock, ep, body] = process.argv.slice(1);
    const req = http.request({ socketPath: sock, method: "POST", path: ep, headers: { "Content-Length": Buffer.byteLength(body) } }, (res) => {
      let s = ""; res.on("data", (c) => (s += c)); res.on("end", () => {
        const err = JSON.parse(s).Err;
        if (res.statusCode !== 200 || (err !== "" && err !== undefined)) { console.error(ep, s); process.exit(1); }
        process.stdout.write(s);
      });
    });
    req.on("error", (e) => { console.error(e.message); process.exit(1); });
    req.end(body);' "$sock" "$1" "$2"
}
for _ in $(seq 1 200); do call /VolumeDriver.Capabilities 'null' >/dev/null 2>&1 && break; sleep 0.1; done
call /VolumeDriver.Create '{"Name":"plain"}' >/dev/null
printf 'kept\n' > "$data/volumes/plain/_data/file.txt"
call /VolumeDriver.Create "{\"Name\":\"lv\",\"Opts\":{\"layer\":\"app:1\"}}" >/dev/null
call /VolumeDriver.Create "{\"Name\":\"lv2\",\"Opts\":{\"layer\":\"$base\"}}" >/dev/null
# A layered volume written to: mounted (its overlay), a file written, unmounted (no mount is packed).
mp=$(call /VolumeDriver.Mount '{"Name":"lv","ID":"c1"}' | node -e 'let s="";process.stdin.on("data",(c)=>s+=c).on("end",()=>process.stdout.write(JSON.parse(s).Mountpoint))')
printf 'written\n' > "$mp/written.txt"
call /VolumeDriver.Unmount '{"Name":"lv","ID":"c1"}' >/dev/null
kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=
umount "$merged"
[ ! -e "$data/tsvol.db-wal" ] || { echo "the WAL was not checkpointed" >&2; exit 1; }

cat > "$root/manifest.json" <<JSON
{
  "commit": "$(git -C "$src" rev-parse HEAD)",
  "layers": { "base": "$base", "app": "$app", "conf": "$conf", "committed": "$committed" },
  "tags": { "base": "$base", "app:1": "$conf" },
  "holds": [["$conf", "volume \"lv\""], ["$base", "volume \"lv2\""]],
  "containers": { "ctr": "$committed" },
  "volumes": ["lv", "lv2", "plain"]
}
JSON
rm -rf "$data/tmp" "$data/layers/tmp" "$data/server.lock" "$data/control.sock"
mkdir -p "$(dirname "$out")"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -czf "$out" manifest.json tars data
echo "wrote $out ($(stat -c %s "$out") bytes)"
