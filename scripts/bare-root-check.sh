#!/usr/bin/env bash
# The bare-machine proof of issue #9 §1, as root on a Debian host: a fresh clone of this checkout's HEAD in a
# minimal Debian bookworm (debootstrap --variant=minbase) that has nothing but Node.js and npm, running
# .ci/run's steps with CI=true, then plugin/build-rootfs.sh. The e2e suite is left out (--match='!e2e*'):
# dockerd in a chroot is out of scope. Mounts made by the tests stay in a private mount namespace.
#   scripts/bare-root-check.sh [ROOT]          ROOT defaults to /work/bare-root; made if absent
#   TRACE=/tmp/x.trace scripts/bare-root-check.sh   the same under strace -f -e trace=execve (the audit)
#   scripts/bare-root-check.sh ROOT 'CMD'      CMD in the clone already there (e.g. a rerun of one test file)
# Node.js and npm come from this host (bookworm's nodejs is 18; package.json needs >= 20): the node binary,
# npm, Node's headers (node-gyp builds against them: nodedir=/usr, as on the host) and the host's CA bundle
# for npm's registry (NODE_EXTRA_CA_CERTS). Nothing else is put in the root: the rest is install-deps.sh's.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/work/bare-root}
custom=${2:-}
if [ ! -x "$root/usr/bin/apt-get" ]; then
  command -v debootstrap >/dev/null || { echo "bare-root-check: apt-get install debootstrap" >&2; exit 1; }
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
fi
if [ ! -x "$root/usr/bin/node" ]; then
  node_bin=$(readlink -f "$(command -v node)")
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  cp "$node_bin" "$root/usr/bin/node"
  mkdir -p "$root/usr/lib/node_modules" "$root/usr/include" "$root/etc/ssl"
  cp -a "$npm_dir" "$root/usr/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/bin/npx"
  cp -a /usr/include/node "$root/usr/include/node"
  printf 'nodedir=/usr\nfund=false\naudit=false\nupdate-notifier=false\n' >"$root/root/.npmrc"
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# A fresh clone of HEAD: no node_modules, no dist.
if [ -z "$custom" ]; then
  rm -rf "$root/root/tsvol"
  git clone -q "$(git -C "$top" rev-parse --path-format=absolute --git-common-dir)" "$root/root/tsvol"
  git -C "$root/root/tsvol" checkout -q "$(git -C "$top" rev-parse HEAD)"
fi

mounted=()
unmount_all() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R "${mounted[i]}" || umount -R -l "${mounted[i]}"; done
}
trap unmount_all EXIT
# The root a mount of its own, as / is on a real machine: tests that run a server in a private mount
# namespace (unshare --propagation private) must be able to change the propagation of /.
mount --bind "$root" "$root"
mounted+=("$root")
mount -t proc proc "$root/proc"
mounted+=("$root/proc")
mount --rbind /sys "$root/sys"
mounted+=("$root/sys")
mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev"
mounted+=("$root/dev")
mount --make-rslave "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mounted+=("$root/run")

steps='set -eux
cd /root/tsvol
scripts/install-deps.sh build
npm ci --no-audit --no-fund
npm run build && npm run typecheck && npm run lint:cycles
npx ava --match="!e2e*"
plugin/build-rootfs.sh /tmp/rootfs-check && rm -rf /tmp/rootfs-check'
[ -z "$custom" ] || steps="set -eux; cd /root/tsvol; $custom"
run=(unshare --mount --propagation private chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb CI=true
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca.crt
  bash -c "$steps")
if [ -n "${TRACE:-}" ]; then
  strace -f --seccomp-bpf -qq -e trace=execve -e signal=none -o "$TRACE" "${run[@]}"
else
  "${run[@]}"
fi
