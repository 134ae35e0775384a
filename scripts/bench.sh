#!/usr/bin/env bash
# `make bench`: the checkout against this machine's ceiling, in one run.
#
# For each Redis fsync policy (always — the shipped default — and everysec) it starts the stack
# as `make run` does (release build, Redis with AOF), plus the stand-in (bench/src/bin/standin.rs)
# behind a second nginx rendered from the same nginx.conf, and drives each with the same load
# generator:
#   trivial   nginx → a handler that answers at once (one hop)
#   stand-in  nginx → a handler making the Redis round trips and three sequential internal
#             calls a checkout makes, and the charge's call to a provider simulator, without
#             its logic
#   checkout  nginx → order-service, the real thing (closed loop: peak throughput)
#   wallet    the checkout paid from customers' wallets (no provider call)
#   open      the checkout in open loop at half its peak rate (latency without coordinated omission)
#   stand-in-open  the stand-in in open loop at that same rate: the latency this machine allows
#   open-rw, stand-in-rw  both again with an AOF rewrite started 3 s in (BENCH_REWRITE=1, the
#             default): Redis rewrites by itself whenever its AOF has doubled (past 512 MB), so a
#             long-lived dataset has one from time to time; this is what a run with one looks like
#   checkout-hooks the checkout again with a merchant's webhook receiver subscribed to every
#             event (BENCH_WEBHOOKS=1, the default): fan-out and delivery running beside it
#   checkout-Nm    the checkout again (closed loop, the first fsync policy) on a Redis Cluster of
#             N local masters (BENCH_MASTERS, default 3; 1 skips it), each with its own thread
#             and AOF: what scaling Redis out buys on this machine
# and prints one table of ratios and absolute numbers.
#
# BENCH_DURATION (s, default 10), BENCH_CONNECTIONS (default 64), BENCH_FSYNC ("always everysec"),
# BENCH_MASTERS (default 3), BENCH_WEBHOOKS (1; 0 skips checkout-hooks), BENCH_REWRITE (1; 0 skips
# open-rw and stand-in-rw), BENCH_PORT (first of the ports used, default 19080), REPLICAS as for
# make run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
bin=$root/target/release
duration=${BENCH_DURATION:-10}
connections=${BENCH_CONNECTIONS:-64}
policies=${BENCH_FSYNC:-always everysec}
masters=${BENCH_MASTERS:-3}
webhooks=${BENCH_WEBHOOKS:-1}
rewrite=${BENCH_REWRITE:-1}
# 3 s in, or a third of a shorter run, so that the rewrite falls inside it.
rewrite_at=$(awk -v d="$duration" 'BEGIN { print (d / 3 < 3 ? d / 3 : 3) }')
base=${BENCH_PORT:-19080}
# One load generator is one caller: it is paced only by the limits it sets (the limiter still
# runs on every request, so its cost is measured).
export RATE_LIMIT_CHECKOUT=${RATE_LIMIT_CHECKOUT:-1000000} RATE_LIMIT_CHECKOUT_BURST=${RATE_LIMIT_CHECKOUT_BURST:-1000000}
export RATE_LIMIT_DEFAULT=${RATE_LIMIT_DEFAULT:-1000000} RATE_LIMIT_DEFAULT_BURST=${RATE_LIMIT_DEFAULT_BURST:-1000000}
work=$(mktemp -d /tmp/checkout-bench.XXXXXX)
results=$work/results
: >"$results"

require_binaries bench "$bin" order-service payment-service stock-service gateway-sim webhook-receiver loadgen standin || exit 1

set -m
pids=()
trap 'stop_groups; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# loadgen LABEL POLICY ARGS...: runs the generator, keeps its RESULT line tagged with the policy.
loadgen() {
    local label=$1 policy=$2
    shift 2
    echo
    echo "== $label (appendfsync $policy)"
    # CPU per request counts every process bench started (both stacks; the idle one adds next to
    # nothing) and their children, not the load generator. Every run waits for the AOF rewrite
    # the run before it caused, and reports the seconds one of its own ran.
    "$bin/loadgen" --label "$label" --duration "$duration" --cpu-of "$(IFS=,; echo "${pids[*]}")" \
        --redis-url "${redis_urls:-redis://127.0.0.1:$redis}" "$@" |
        tee "$work/out"
    grep '^RESULT' "$work/out" | sed "s/^RESULT /RESULT policy=$policy /" >>"$results"
}

field() { # field LINE NAME
    sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"
}

for policy in $policies; do
    gateway=$base redis=$((base + 1)) standin_port=$((base + 2)) standin_gateway=$((base + 3))
    data=$work/$policy
    mkdir -p "$data"
    DATA_DIR=$data GATEWAY_PORT=$gateway REDIS_PORT=$redis ORDER_PORT=$((base + 11)) \
        PAYMENT_PORT=$((base + 12)) STOCK_PORT=$((base + 13)) CARD_A_PORT=$((base + 14)) \
        CARD_B_PORT=$((base + 15)) PIX_PORT=$((base + 16)) REDIS_APPENDFSYNC=$policy \
        SEED_DEMO=false RUST_LOG=warn BIN_DIR=$bin "$root/scripts/run.sh" >"$work/run-$policy.log" 2>&1 &
    pids+=($!)
    wait_ready "$gateway" /order/ready || exit 1
    # The stand-in's charge also asks a provider (card-b of the same stack), as payment does.
    "$bin/standin" --port "$standin_port" --redis-url "redis://127.0.0.1:$redis" \
        --provider-url "http://127.0.0.1:$((base + 15))" >"$work/standin.log" 2>&1 &
    pids+=($!)
    # An access log like the stack's (run.sh logs every request to a file), so both nginx do the
    # same work per request.
    "$root/scripts/render-nginx.sh" "$data/standin-nginx" "$standin_gateway" "server 127.0.0.1:$standin_port;" \
        "server 127.0.0.1:$standin_port;" "server 127.0.0.1:$standin_port;" "$data/standin-access.log" \
        >"$work/standin-nginx.log" 2>&1 &
    pids+=($!)
    wait_ready "$standin_gateway" /order/ready || exit 1

    loadgen trivial "$policy" --url "http://127.0.0.1:$standin_gateway" --path /order/trivial \
        --connections "$connections"
    loadgen stand-in "$policy" --url "http://127.0.0.1:$standin_gateway" --path /order/checkout \
        --connections "$connections"
    loadgen checkout "$policy" --url "http://127.0.0.1:$gateway" --connections "$connections" \
        --setup-stock 1000000000 --check-books
    loadgen wallet "$policy" --url "http://127.0.0.1:$gateway" --connections "$connections" \
        --setup-stock 1000000000 --wallets 32 --check-books
    peak=$(field "$(grep "policy=$policy label=checkout " "$results")" rps)
    half=$(awk -v r="$peak" 'BEGIN { printf "%d", (r / 2 < 1 ? 1 : r / 2) }')
    loadgen open "$policy" --url "http://127.0.0.1:$gateway" --rate "$half" --warmup 0 --check-books
    loadgen stand-in-open "$policy" --url "http://127.0.0.1:$standin_gateway" --path /order/checkout \
        --rate "$half" --warmup 0
    if [ "$rewrite" = 1 ]; then
        loadgen open-rw "$policy" --url "http://127.0.0.1:$gateway" --rate "$half" --warmup 0 --check-books \
            --rewrite-after "$rewrite_at"
        loadgen stand-in-rw "$policy" --url "http://127.0.0.1:$standin_gateway" --path /order/checkout \
            --rate "$half" --warmup 0 --rewrite-after "$rewrite_at"
    fi
    if [ "$webhooks" = 1 ]; then
        # Last of the policy's runs: the deliveries it queues go on after it ends.
        RECEIVER_PORT=$((base + 17)) RECEIVER_LOG=$data/receiver.jsonl "$bin/webhook-receiver" \
            >"$work/receiver.log" 2>&1 &
        pids+=($!)
        wait_ready "$((base + 17))" /_recv/health || exit 1
        loadgen checkout-hooks "$policy" --url "http://127.0.0.1:$gateway" --connections "$connections" \
            --setup-stock 1000000000 --check-books --webhook "http://127.0.0.1:$((base + 17))/hooks"
    fi
    stop_groups
done

# The checkout on a Redis Cluster of $masters masters (master i on the one-node port + 1000·i),
# under the first policy, for the one-node-against-N line of the table.
first_policy=${policies%% *}
cluster_label=checkout-${masters}m
if [ "$masters" -gt 1 ]; then
    gateway=$base redis=$((base + 1))
    data=$work/cluster
    mkdir -p "$data"
    DATA_DIR=$data GATEWAY_PORT=$gateway REDIS_PORT=$redis ORDER_PORT=$((base + 11)) \
        PAYMENT_PORT=$((base + 12)) STOCK_PORT=$((base + 13)) CARD_A_PORT=$((base + 14)) \
        CARD_B_PORT=$((base + 15)) PIX_PORT=$((base + 16)) REDIS_APPENDFSYNC=$first_policy REDIS_MASTERS=$masters SEED_DEMO=false RUST_LOG=warn BIN_DIR=$bin "$root/scripts/run.sh" \
        >"$work/run-cluster.log" 2>&1 &
    pids+=($!)
    wait_ready "$gateway" /order/ready || exit 1
    redis_urls=$(for ((i = 0; i < masters; i++)); do printf 'redis://127.0.0.1:%d,' $((redis + 1000 * i)); done)
    redis_urls=${redis_urls%,}
    loadgen "$cluster_label" "$first_policy" --url "http://127.0.0.1:$gateway" --connections "$connections" \
        --setup-stock 1000000000 --check-books
    unset redis_urls
    stop_groups
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
echo
echo "Machine: $(nproc) CPUs ($cpu), $mem; everything (load generator included) on this one machine."
echo "${duration}s per run, $connections connections in closed loop; latencies in ms; CPU µs: CPU time of"
echo "the stack per request (all its processes, not the load generator), steadier than req/s on a shared machine."
echo
printf '%-9s %-13s %10s %8s %8s %8s %8s %9s %9s %9s %9s %9s %7s %7s %9s %9s\n' fsync run 'req/s' p50 p90 p99 p99.9 'vs stand' 'vs trivial' 'CPU µs' 'Redis µs' 'script µs' cmds 'AOF B' 'AOF rw s' books
for policy in $policies; do
    trivial=$(field "$(grep "policy=$policy label=trivial " "$results")" rps)
    standin=$(field "$(grep "policy=$policy label=stand-in " "$results")" rps)
    for label in trivial stand-in checkout wallet open stand-in-open open-rw stand-in-rw checkout-hooks "$cluster_label"; do
        line=$(grep "policy=$policy label=$label " "$results") || continue
        rps=$(field "$line" rps)
        awk -v p="$policy" -v l="$label" -v r="$rps" -v s="$standin" -v t="$trivial" \
            -v p50="$(field "$line" p50)" -v p90="$(field "$line" p90)" -v p99="$(field "$line" p99)" \
            -v p999="$(field "$line" p999)" -v b="$(field "$line" books)" -v c="$(field "$line" cpu_us)" \
            -v w="$(field "$line" aof_rewrite_s)" -v rc="$(field "$line" redis_cpu_us)" -v sc="$(field "$line" script_us)" \
            -v cm="$(field "$line" cmds)" -v ab="$(field "$line" aof_bytes)" \
            'BEGIN { printf "%-9s %-13s %10.0f %8s %8s %8s %8s %8.0f%% %8.0f%% %9s %9s %9s %7s %7s %9s %9s\n", p, l, r, p50, p90, p99, p999, 100 * r / s, 100 * r / t, c, rc, sc, cm, ab, w, b }'
    done
done
echo
echo "CPU µs per request by process ($first_policy):"
for label in stand-in checkout; do
    line=$(grep "policy=$first_policy label=$label " "$results") || continue
    printf '  %-9s %s\n' "$label" "$(field "$line" cpu_by | sed 's/,/, /g; s/:/ /g')"
done
if one=$(grep "policy=$first_policy label=checkout " "$results") &&
    many=$(grep "policy=$first_policy label=$cluster_label " "$results"); then
    awk -v o="$(field "$one" rps)" -v m="$(field "$many" rps)" -v n="$masters" \
        'BEGIN { printf "\nRedis Cluster: the checkout on %d masters makes %.2f× its throughput on one node.\n", n, m / o }'
fi
# The targets of #29 (less work inside Redis per checkout), each as this run measured it under the
# first fsync policy: the checkout against the stand-in, which makes the same round trips.
got() { # got LABEL NAME: the field of the first policy's run LABEL, empty when absent
    local line
    line=$(grep "policy=$first_policy label=$1 " "$results") || return 0
    field "$line" "$2"
}
target() { # target WHAT VALUE BOUND (ge|le) UNIT
    awk -v w="$1" -v v="$2" -v b="$3" -v dir="$4" -v u="$5" 'BEGIN {
        if (v == "" || v == "-") { printf "  %-44s %8s\n", w, "-"; exit }
        ok = (dir == "ge") ? v >= b : v <= b
        printf "  %-44s %7.2f%s (%s %s%s) %s\n", w, v, u, dir == "ge" ? "≥" : "≤", b, u, ok ? "met" : "not met"
    }'
}
ratio() { # ratio A B: A / B, empty when either is missing or not a number
    awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b }'
}
aof=$(got open aof_bytes)
[ "$aof" = - ] && aof=$(got checkout aof_bytes)
echo
echo "Targets ($first_policy, against the stand-in, which makes the checkout's round trips without its work):"
target "checkout throughput / stand-in's" "$(ratio "$(got checkout rps)" "$(got stand-in rps)")" 0.75 ge ×
target "script time per checkout / stand-in's" "$(ratio "$(got checkout script_us)" "$(got stand-in script_us)")" 2 le ×
target "AOF bytes per checkout / stand-in's" "$(ratio "$aof" "$(got stand-in aof_bytes)")" 2 le ×
target "open-loop p99 / stand-in's at the same rate" "$(ratio "$(got open p99)" "$(got stand-in-open p99)")" 2 le ×
if [ "$rewrite" = 1 ]; then
    # Only a pair in which a rewrite ran says what one costs; "-" otherwise.
    with_rewrite=
    if awk -v a="$(got open-rw aof_rewrite_s)" -v b="$(got stand-in-rw aof_rewrite_s)" \
        'BEGIN { exit !(a + 0 > 0 && b + 0 > 0) }'; then
        with_rewrite=$(ratio "$(got open-rw p99)" "$(got stand-in-rw p99)")
    fi
    target "  the same, an AOF rewrite in both runs" "$with_rewrite" 2 le ×
fi
if [ "$masters" -gt 1 ]; then
    target "checkout on $masters masters / on one node" "$(ratio "$(got "$cluster_label" rps)" "$(got checkout rps)")" 2 ge ×
fi
echo
echo "stand-in-open runs the stand-in at the checkout's open-loop rate: the latency the machine allows there."
echo "open-rw and stand-in-rw: the same two with an AOF rewrite started 3 s in (a third in, in a shorter run)."
echo "Redis µs: the part of CPU µs that was Redis' (with its AOF-rewrite child); script µs: time Redis spent"
echo "running scripts per request (INFO commandstats; wall time, the commands they call included); cmds: Redis"
echo "commands per request, inside scripts or on their own (INFO commandstats); AOF B: bytes appended to the AOF"
echo "per request (- when a rewrite ran during the run)."
echo "AOF rw s: seconds of the run during which Redis rewrote its AOF (a forked child busy on a core)."
