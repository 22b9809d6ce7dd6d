#!/usr/bin/env bash
# Installs the Debian packages tsvol needs (issue #9 §1): for every program of the asked groups in
# scripts/deps.txt that is not found, its package. Idempotent: when nothing is missing it changes nothing
# and reaches no network (no apt-get update).
#   scripts/install-deps.sh [--check] [build] [e2e] [cluster]
# build (the default): npm ci, the unit tests, benches, `make rootfs` and the product.
# e2e: the Docker engine, registry, compose and busybox-static of test/e2e-*.test.ts.
# cluster: GlusterFS and iproute2 for the Swarm cluster of test/e2e-cluster.test.ts and bench/cluster.ts.
# --check: only list what is missing; exit 1 if anything is.
set -euo pipefail
list=$(cd "$(dirname "$0")" && pwd)/deps.txt
check=false
groups=()
for arg in "$@"; do
  case $arg in
    --check) check=true ;;
    build | e2e | cluster) groups+=("$arg") ;;
    *) echo "usage: $0 [--check] [build] [e2e] [cluster]" >&2; exit 2 ;;
  esac
done
[ ${#groups[@]} -gt 0 ] || groups=(build)

# Many of these programs live in sbin (mkfs.xfs, losetup, dockerd): look there even if PATH leaves it out.
search=$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
found() { PATH=$search command -v "$1" >/dev/null; }

# Prints "program package" for each listed program of the asked groups.
wanted() {
  local program package group rest g
  while read -r program package group rest; do
    case $program in '' | '#'*) continue ;; esac
    for g in "${groups[@]}"; do
      if [ "$g" = "$group" ]; then echo "$program $package"; fi
    done
  done <"$list"
}

missing=()
while read -r program package; do
  if ! found "$program"; then
    echo "install-deps: $program is missing (package $package)" >&2
    missing+=("$package")
  fi
done < <(wanted)
[ ${#missing[@]} -gt 0 ] || exit 0
$check && exit 1

mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
[ "$(id -u)" = 0 ] || { echo "install-deps: run as root to apt-get install ${packages[*]}" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}"

# A package that installed but does not provide the program means this list is wrong: say so.
status=0
while read -r program package; do
  found "$program" || { echo "install-deps: $program still missing after installing $package (fix scripts/deps.txt)" >&2; status=1; }
done < <(wanted)
exit $status
