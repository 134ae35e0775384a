#!/usr/bin/env bash
# Makes sure what `make run` and `make test` need is here: redis-server and nginx (through apt
# when we can: root, or sudo without a password prompt, else says exactly what to install), and
# for `make test` schemathesis, pinned, in the repository's own .venv (from PyPI; python3 and
# its venv module come from apt when missing). Idempotent and quiet when all is there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
SCHEMATHESIS_VERSION=4.32.5

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

# The services run their scripts as Redis Functions (shared/src/lua.rs), which Redis has had
# since 7.0 (Debian 12, Ubuntu 24.04); they also speak RESP3 and trim streams by MINID.
redis_new_enough() {
    local program version
    program=$(command -v redis-server || echo /usr/bin/redis-server)
    version=$("$program" --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
    if [ -n "$version" ] && [ "$version" -lt 7 ]; then
        echo "deps: $("$program" --version | cut -d' ' -f3) is too old: the services need Redis 7 or later" >&2
        exit 1
    fi
}

# apt_install PACKAGE...: installs through apt, or says what to run and fails.
apt_install() {
    echo "deps: missing $*" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "deps: no apt-get here; install these with your package manager: $*" >&2
        exit 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "deps: need root to install them; run:  sudo apt-get install -y $*" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists at all; a stale list makes installs 404.
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
    echo "deps: installed $*" >&2
}

missing=()
have redis-server || missing+=(redis-server)
have nginx || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
    for program in redis-server nginx; do
        have "$program" || { echo "deps: $program still missing after apt-get install" >&2; exit 1; }
    done
fi
redis_new_enough

# schemathesis, for the API fuzzing in `make test` (tests-e2e/tests/api_schema.rs). `make run`
# does not need it: DEPS_SKIP_PYTHON=1 skips it there.
[ -n "${DEPS_SKIP_PYTHON:-}" ] && exit 0
venv=$root/.venv
if [ -x "$venv/bin/st" ] && "$venv/bin/st" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
    exit 0
fi
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
echo "deps: installed schemathesis $SCHEMATHESIS_VERSION in .venv" >&2
