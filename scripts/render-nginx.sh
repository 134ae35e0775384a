#!/usr/bin/env bash
# Renders the repository's nginx.conf template (the file docker-compose and the e2e tests render
# too) and starts nginx on it in the foreground, for scripts/run.sh and scripts/bench.sh.
#
#   render-nginx.sh PREFIX_DIR GATEWAY_PORT ORDER_UPSTREAMS PAYMENT_UPSTREAMS STOCK_UPSTREAMS ACCESS_LOG
#
# *_UPSTREAMS are `server host:port;` lines. Runs `nginx -t` first, then execs nginx.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$1 gateway_port=$2 order=$3 payment=$4 stock=$5 access_log=$6

nginx_bin=$(command -v nginx 2>/dev/null || true)
for dir in /usr/sbin /usr/local/sbin /sbin; do
    [ -z "$nginx_bin" ] && [ -x "$dir/nginx" ] && nginx_bin=$dir/nginx
done
[ -n "$nginx_bin" ] || { echo "nginx is not installed (make deps)" >&2; exit 1; }

mkdir -p "$prefix/temp"
conf=$(<"$root/nginx.conf")
conf=${conf//'${GATEWAY_PORT}'/$gateway_port}
conf=${conf//'${ORDER_UPSTREAMS}'/$order}
conf=${conf//'${PAYMENT_UPSTREAMS}'/$payment}
conf=${conf//'${STOCK_UPSTREAMS}'/$stock}
conf=${conf//'${NGINX_TEMP}'/$prefix/temp}
conf=${conf//'${NGINX_ACCESS_LOG}'/$access_log}
printf '%s\n' "$conf" >"$prefix/nginx.conf"

globals="daemon off; worker_processes ${NGINX_WORKERS:-auto}; pid $prefix/nginx.pid;"
# As root, workers would drop to `nobody`, which cannot use our private directories.
[ "$(id -u)" -eq 0 ] && globals="$globals user root;"
"$nginx_bin" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e stderr -g "$globals"
exec "$nginx_bin" -p "$prefix" -c "$prefix/nginx.conf" -e stderr -g "$globals"
