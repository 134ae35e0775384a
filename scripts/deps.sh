#!/usr/bin/env bash
# Makes sure redis-server and nginx are installed: through apt when we can (root, or sudo without
# a password prompt), else says exactly what to install. Idempotent and quiet when all is there.
set -euo pipefail

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
have redis-server || missing+=(redis-server)
have nginx || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: missing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: no apt-get here; install these with your package manager: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "deps: need root to install them; run:  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists at all; a stale list makes installs 404.
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
for program in redis-server nginx; do
    have "$program" || { echo "deps: $program still missing after apt-get install" >&2; exit 1; }
done
echo "deps: installed ${missing[*]}" >&2
