#!/usr/bin/env bash
# Makes sure redis-server and nginx are installed: through apt when we can (root, or sudo without
# a password prompt), else says exactly what to install. Idempotent and quiet when all is there.
set -euo pipefail

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

# The services speak RESP3 to Redis (shared/src/redis_pool.rs), which Redis has had since 6.
redis_new_enough() {
    local program version
    program=$(command -v redis-server || echo /usr/bin/redis-server)
    version=$("$program" --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
    if [ -n "$version" ] && [ "$version" -lt 6 ]; then
        echo "deps: $("$program" --version | cut -d' ' -f3) is too old: the services need Redis 6 or later" >&2
        exit 1
    fi
}

missing=()
have redis-server || missing+=(redis-server)
have nginx || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
    redis_new_enough
    exit 0
fi

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
redis_new_enough
echo "deps: installed ${missing[*]}" >&2
