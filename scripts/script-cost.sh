#!/usr/bin/env bash
# `make script-cost`: what each of the checkout's Redis scripts costs, away from the noise of
# a loaded 2-CPU machine. For each BIN_DIR given (default: this checkout's target/release) it
# starts the stack as `make run` does, records with `redis-cli monitor` the scripts it loads
# and runs while the stock is set up and BENCH_CHECKOUTS_S (default 3) seconds of sequential
# checkouts go through (no declines, no duplicate keys), then stops it. `scriptcost`
# (bench/src/bin/scriptcost/) replays every capture on an idle Redis of its own (no
# persistence: the time inside scripts, not the fsync), in alternating rounds, and prints the
# scripts and commands per checkout, script µs per checkout and each script's share; then the
# same for its floor: each call replaced by a script running only the commands it ran, the
# time no Lua of the scripts' own could go below. And the stand-in's (bench/src/bin/standin),
# captured on the first stack's Redis: the reference `make bench` holds script time to.
#
#   scripts/script-cost.sh                                # this build
#   scripts/script-cost.sh /tmp/old/target/release target/release   # A/B, on the same minute
#
# SCRIPT_COST_ROUNDS (default 6), BENCH_PORT (first of the ports used, default 19180).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
bin=$root/target/release
seconds=${BENCH_CHECKOUTS_S:-3}
rounds=${SCRIPT_COST_ROUNDS:-6}
base=${BENCH_PORT:-19180}
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=("$bin")
require_binaries script-cost "$bin" loadgen scriptcost standin || exit 1
for dir in "${dirs[@]}"; do
    require_binaries script-cost "$dir" order-service payment-service stock-service gateway-sim || exit 1
done
export RATE_LIMIT_CHECKOUT=1000000 RATE_LIMIT_CHECKOUT_BURST=1000000
export RATE_LIMIT_DEFAULT=1000000 RATE_LIMIT_DEFAULT_BURST=1000000
work=$(mktemp -d /tmp/script-cost.XXXXXX)

set -m
pids=()
trap 'stop_groups; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

gateway=$base redis=$((base + 1)) idle=$((base + 2))
captures=()
for i in "${!dirs[@]}"; do
    dir=${dirs[$i]}
    mkdir -p "$work/$i"
    DATA_DIR=$work/$i GATEWAY_PORT=$gateway REDIS_PORT=$redis ORDER_PORT=$((base + 11)) \
        PAYMENT_PORT=$((base + 12)) STOCK_PORT=$((base + 13)) CARD_A_PORT=$((base + 14)) \
        CARD_B_PORT=$((base + 15)) PIX_PORT=$((base + 16)) SEED_DEMO=false RUST_LOG=warn \
        BIN_DIR=$dir "$root/scripts/run.sh" >"$work/run-$i.log" 2>&1 &
    pids+=($!)
    wait_ready "$gateway" /order/ready || { cat "$work/run-$i.log" >&2; exit 1; }
    # From here every script is loaded again (the services load a function Redis lacks, or
    # a build before #29's thirteenth pass a script on NOSCRIPT), so the capture holds each
    # source beside its calls.
    redis-cli -p "$redis" monitor >"$work/capture-$i" &
    monitor=$!
    redis-cli -p "$redis" script flush >/dev/null
    redis-cli -p "$redis" function flush >/dev/null
    "$bin/loadgen" --url "http://127.0.0.1:$gateway" --connections 1 --duration "$seconds" --warmup 0 \
        --setup-stock 1000000000 --decline-share 0 --duplicate-share 0 | grep '^RESULT' || true
    sleep 0.5
    kill "$monitor" 2>/dev/null || true
    wait "$monitor" 2>/dev/null || true
    if [ "$i" -eq 0 ]; then
        # The stand-in on this stack's Redis, its provider this stack's card-b.
        "$bin/standin" --port $((base + 17)) --redis-url "redis://127.0.0.1:$redis" \
            --provider-url "http://127.0.0.1:$((base + 15))" >"$work/standin.log" 2>&1 &
        pids+=($!)
        wait_ready $((base + 17)) /ready || { cat "$work/standin.log" >&2; exit 1; }
        redis-cli -p "$redis" monitor >"$work/capture-standin" &
        monitor=$!
        # The stack's chores run beside it: their sources too must be in this capture.
        redis-cli -p "$redis" script flush >/dev/null
        redis-cli -p "$redis" function flush >/dev/null
        requests=$("$bin/loadgen" --url "http://127.0.0.1:$((base + 17))" --path /checkout --connections 1 \
            --duration "$seconds" --warmup 0 --decline-share 0 --duplicate-share 0 |
            sed -n 's/^ *requests \([0-9]*\).*/\1/p')
        sleep 0.5
        kill "$monitor" 2>/dev/null || true
        wait "$monitor" 2>/dev/null || true
        standin=("--stand-in" "$work/capture-standin=$requests")
    fi
    stop_groups
    captures+=("$work/capture-$i")
    echo "capture $i: ${dir}"
done

redis-server --port "$idle" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$work" >"$work/idle-redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$idle" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/scriptcost" --redis-url "redis://127.0.0.1:$idle" --rounds "$rounds" --floor "${standin[@]}" "${captures[@]}"
