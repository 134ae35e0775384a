#!/usr/bin/env bash
# `make chaos`: the release stack, as `make run` starts it, under open-loop checkouts while a
# killer sends `kill -9` to a random one of the three services, a card provider or Redis every 1–3 s. The
# supervisor in run.sh restarts what died a second later, as one would in production. When the
# load stops, the load generator waits until no order is processing and checks the books: stock
# conserved, nothing left reserved, charged − refunded = completed. Exit status 1 if they do not
# hold.
#
# CHAOS_DURATION (s, default 60), CHAOS_RATE (checkouts/s, default 150), CHAOS_PORT (first of
# the ports used, default 19280), REDIS_APPENDFSYNC as for make run (default always).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
bin=$root/target/release
duration=${CHAOS_DURATION:-60}
rate=${CHAOS_RATE:-150}
base=${CHAOS_PORT:-19280}
# One load generator is one caller: it is paced only by the limits it sets (the limiter still
# runs on every request, so its cost is measured).
export RATE_LIMIT_CHECKOUT=${RATE_LIMIT_CHECKOUT:-1000000} RATE_LIMIT_CHECKOUT_BURST=${RATE_LIMIT_CHECKOUT_BURST:-1000000}
export RATE_LIMIT_DEFAULT=${RATE_LIMIT_DEFAULT:-1000000} RATE_LIMIT_DEFAULT_BURST=${RATE_LIMIT_DEFAULT_BURST:-1000000}
gateway=$base redis=$((base + 1))
work=$(mktemp -d /tmp/checkout-chaos.XXXXXX)

require_binaries chaos "$bin" order-service payment-service stock-service gateway-sim loadgen || exit 1

set -m
DATA_DIR=$work GATEWAY_PORT=$gateway REDIS_PORT=$redis ORDER_PORT=$((base + 11)) PAYMENT_PORT=$((base + 12)) \
    STOCK_PORT=$((base + 13)) CARD_A_PORT=$((base + 14)) CARD_B_PORT=$((base + 15)) PIX_PORT=$((base + 16)) SEED_DEMO=false RUST_LOG=warn BIN_DIR=$bin "$root/scripts/run.sh" \
    >"$work/run.log" 2>&1 &
stack=$!
killer=
stop() {
    [ -n "$killer" ] && kill "$killer" 2>/dev/null
    kill -TERM -- "-$stack" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${CHAOS_KEEP:-}" ] || rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_ready "$gateway" /order/ready || { echo "chaos: the stack did not start; see $work/run.log" >&2; exit 1; }

# victim NAME: the pid of this stack's process called NAME (run.sh → its supervisor → NAME),
# so that no other stack on the machine is touched.
# Prints nothing while NAME is down, waiting for its restart.
victim() {
    local supervisor
    for supervisor in $(pgrep -P "$stack"); do
        pgrep -P "$supervisor" -x "$1" && return
    done
    return 0
}

# The killer stops 5 s before the load does, so the last checkouts meet a whole stack.
# gateway-sim: one of the two card providers (each keeps its ledger in a file and comes back).
victims=(order-service stock-service payment-service redis-server gateway-sim)
(
    end=$((SECONDS + duration - 5))
    while [ "$SECONDS" -lt "$end" ]; do
        sleep "$((RANDOM % 3 + 1))"
        name=${victims[RANDOM % ${#victims[@]}]}
        pid=$(victim "$name" | head -n1) || true
        if [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; then
            echo "$name" >>"$work/kills"
        fi
    done
) &
killer=$!

status=0
"$bin/loadgen" --url "http://127.0.0.1:$gateway" --rate "$rate" --duration "$duration" --warmup 0 \
    --setup-stock 1000000 --items 1-3 --max-quantity 3 --check-books || status=$?
wait "$killer" 2>/dev/null || true
killer=
echo "kill -9 sent, by victim:"
sort "$work/kills" 2>/dev/null | uniq -c || echo "  none"
exit "$status"
