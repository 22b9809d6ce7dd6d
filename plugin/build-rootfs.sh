#!/usr/bin/env bash
# Builds plugin/rootfs offline from this machine: the built bundle (dist/), the production node_modules
# (native addons already built for this Node), the Node runtime and the shared libraries it needs. No image
# registry, no compilers, no dev dependencies. Usage: plugin/build-rootfs.sh [OUT] (default plugin/rootfs).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/plugin/rootfs}
node_bin=$(command -v node)
node_bin=$(readlink -f "$node_bin")
[ -f "$top/dist/main.js" ] || { echo "build-rootfs: dist/ is missing: run npm run build first" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"/{usr/bin,opt/tsvol,etc,tmp,data,host,mnt/volumes,run/docker/plugins,proc,sys,dev}
chmod 1777 "$out/tmp"

# The runtime and what ldd says it and the native addons link against. e2fsprogs makes and reads the ext4
# images of sized volumes where the data root has no project quotas (mkfs.ext4, debugfs, dumpe2fs), and
# grows an unmounted one where the plugin may not resize online (e2fsck, resize2fs, on a copy made with
# coreutils' cp; #12).
cp "$node_bin" "$out/usr/bin/node"
strip --strip-all "$out/usr/bin/node"
e2fs=()
for tool in mke2fs debugfs dumpe2fs e2fsck resize2fs cp; do
  bin=$(PATH=/usr/sbin:/sbin:$PATH command -v "$tool") || { echo "build-rootfs: $tool is missing: apt-get install e2fsprogs coreutils" >&2; exit 1; }
  cp "$bin" "$out/usr/bin/$tool"
  e2fs+=("$bin")
done
ln -s mke2fs "$out/usr/bin/mkfs.ext4"
cp /etc/mke2fs.conf "$out/etc/mke2fs.conf"
libs() { ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'; }
{
  libs "$node_bin"
  libs "$top/node_modules/better-sqlite3/build/Release/better_sqlite3.node"
  for bin in "${e2fs[@]}"; do libs "$bin"; done
} | sort -u | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done

# The application: dist/ and the production dependencies, pruned of dev packages, sources and other
# platforms' binaries.
cp -a "$top/dist" "$top/package.json" "$top/package-lock.json" "$out/opt/tsvol/"
find "$out/opt/tsvol/dist" -name '*.map' -delete
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
nm=$stage/node_modules
# Exactly the production dependency tree, as npm resolves it (npm prune cannot run fully offline). Asked
# where node_modules really is: a git worktree may share another checkout's through a symlink, and npm then
# calls every package in it extraneous.
deps=$(dirname "$(readlink -f "$top/node_modules")")
(cd "$deps" && npm ls --omit=dev --parseable --all 2>/dev/null) | while read -r dir; do
  [ "$dir" = "$deps" ] && continue
  rel=${dir#"$deps"/}
  # Into the directory, not onto it: npm may list a nested package (a/node_modules/b) before its parent a,
  # and `cp -a a stage/a` would then copy a inside the stage/a that b's copy made (#12: proto-loader's yargs).
  mkdir -p "$stage/$rel"
  cp -a "$dir/." "$stage/$rel/"
done
rm -rf "$nm/better-sqlite3/deps" "$nm/better-sqlite3/src" "$nm/better-sqlite3/build/deps"
find "$nm/better-sqlite3/build" -mindepth 1 -maxdepth 1 ! -name Release -exec rm -rf {} +
find "$nm/better-sqlite3/build/Release" -mindepth 1 ! -name better_sqlite3.node -exec rm -rf {} +
rm -rf "$nm"/@koromix/koffi-*/musl_* "$nm/koffi/src/koffi/src/"*.cc "$nm/koffi/vendor" "$nm/koffi/doc"
rm -rf "$nm/zod/src" "$nm/zod/v3"
# tsvol imports zod as ESM; its CommonJS copies are never loaded.
find "$nm/zod" -name '*.cjs' -delete
find "$nm" -mindepth 2 -type d \( -name test -o -name tests -o -name docs -o -name doc -o -name example -o -name examples -o -name benchmarks -o -name .github \) -prune -exec rm -rf {} +
find "$nm" \( -name '*.md' -o -name '*.d.cts' -o -name '*.d.mts' -o -name '*.d.ts' -o -name '*.map' -o -name 'CHANGELOG*' \) -type f -delete
mv "$nm" "$out/opt/tsvol/node_modules"

printf 'root:x:0:0:root:/root:/bin/false\n' >"$out/etc/passwd"
printf 'root:x:0:\n' >"$out/etc/group"
du -sm "$out" | awk '{print "rootfs: " $1 " MB"}'
