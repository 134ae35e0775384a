#!/usr/bin/env bash
# `make run`: starts Redis (unless REDIS_URL is given), the two card provider simulators, the
# three services and nginx on this machine, waits until each answers, prints the URLs and a
# checkout to paste, and stops all of it on Ctrl-C or SIGTERM. A service that dies (even kill -9) is restarted after a second, as a
# process supervisor would in production; its state is in Redis, so nothing is lost.
#
# REPLICAS=n (or ORDER_REPLICAS, PAYMENT_REPLICAS, STOCK_REPLICAS) runs n of a service behind
# nginx, replica i on its base port + 100·i; with several stock or payment replicas the order
# service reaches them through nginx. REDIS_MASTERS=n runs a Redis Cluster of n masters instead of
# one Redis (see below). Every other variable in the environment (see the README's
# configuration table) reaches the services as it is.
#
# Expects release binaries in target/release (the Makefile builds them first).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${BIN_DIR:-$root/target/release}
data_dir=${DATA_DIR:-$root/.data}
gateway_port=${GATEWAY_PORT:-8080}
redis_port=${REDIS_PORT:-6380}
order_port=${ORDER_PORT:-8081}
payment_port=${PAYMENT_PORT:-8082}
stock_port=${STOCK_PORT:-8083}
appendfsync=${REDIS_APPENDFSYNC:-always}
io_threads=${REDIS_IO_THREADS:-1}
aof_rewrite_min_size=${REDIS_AOF_REWRITE_MIN_SIZE:-512mb}
aof_rewrite_percentage=${REDIS_AOF_REWRITE_PERCENTAGE:-100}
order_replicas=${ORDER_REPLICAS:-${REPLICAS:-1}}
payment_replicas=${PAYMENT_REPLICAS:-${REPLICAS:-1}}
stock_replicas=${STOCK_REPLICAS:-${REPLICAS:-1}}
card_a_port=${CARD_A_PORT:-9101}
card_b_port=${CARD_B_PORT:-9102}
pix_port=${PIX_PORT:-9103}
# The Pix simulator signs its webhooks with this; payment verifies them by it. A development
# default, like the internal token: set PIX_WEBHOOK_SECRET (whsec_ + base64) for anything real.
pix_secret=${PIX_WEBHOOK_SECRET:-whsec_ZGV2LXBpeC13ZWJob29rLXNlY3JldC0wMDAx}
export INTERNAL_TOKEN=${INTERNAL_TOKEN:-dev-internal-token}
export HOST=${HOST:-127.0.0.1}

find_program() {
    command -v "$1" 2>/dev/null && return
    for dir in /usr/sbin /usr/local/sbin /sbin /usr/bin; do
        [ -x "$dir/$1" ] && { echo "$dir/$1"; return; }
    done
    echo "run: $1 is not installed (make deps, or: sudo apt-get install -y redis-server nginx)" >&2
    exit 1
}

for binary in order-service payment-service stock-service gateway-sim; do
    [ -x "$bin_dir/$binary" ] || { echo "run: $bin_dir/$binary missing; build with: make release" >&2; exit 1; }
done
find_program nginx >/dev/null

mkdir -p "$data_dir/redis" "$data_dir/nginx" "$data_dir/logs"
logs=$data_dir/logs

# Each supervisor runs in its own process group (job control), so stopping one group stops the
# supervisor loop and the process it watches together.
set -m
groups=()

stop_all() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    # nginx first so no new request reaches a service that is going away; Redis last.
    local i
    for ((i = ${#groups[@]} - 1; i >= 0; i--)); do
        kill -TERM -- "-${groups[i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    echo "stopped."
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# supervise NAME COMMAND...: runs COMMAND, restarting it a second after it exits. SIGTERM to the
# group stops the loop and forwards the signal to the process for a graceful shutdown. The loop
# also watches this script: if it dies without cleaning up (kill -9), the loop stops its process
# and ends instead of running on as an orphan.
main_pid=$$
# snooze SECONDS: sleeps without starting a process (read times out on a pipe nobody writes):
# the supervisors below check twice a second, and a `sleep` child each time cost a whole stack's
# worth of forks per second (measured: ~14 µs of CPU per checkout under load).
exec {snooze_fd}<> <(:)
snooze() {
    read -rt "$1" -u "$snooze_fd" || true
}
supervise() {
    local name=$1
    shift
    (
        child=
        trap 'kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM
        while kill -0 "$main_pid" 2>/dev/null; do
            "$@" >>"$logs/$name.log" 2>&1 &
            child=$!
            while kill -0 "$child" 2>/dev/null; do
                if ! kill -0 "$main_pid" 2>/dev/null; then
                    kill -TERM "$child" 2>/dev/null
                    wait "$child" 2>/dev/null
                    exit 0
                fi
                snooze 0.5
            done
            wait "$child" && status=0 || status=$?
            echo "run: $name exited with status $status; restarting in 1s (log: $logs/$name.log)" >&2
            snooze 1
        done
    ) &
    groups+=($!)
}

# ready NAME PORT PATH: waits until GET PATH answers 200 (plain bash: no curl needed).
ready() {
    local name=$1 port=$2 path=$3 reply
    for _ in $(seq 1 300); do
        if reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3 &&
            head -n1 <&3) 2>/dev/null) && [[ $reply == *" 200 "* ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "run: $name did not become ready on port $port within 30s; last log lines:" >&2
    tail -n 30 "$logs/$name.log" >&2 || true
    exit 1
}

# redis_ping PORT: true once Redis answers PING on PORT (within 30 s).
redis_ping() {
    local port=$1 reply=""
    for _ in $(seq 1 300); do
        reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'PING\r\n' >&3 && head -c5 <&3) 2>/dev/null) || true
        [ "$reply" = "+PONG" ] && return 0
        sleep 0.1
    done
    return 1
}

if [ -n "${REDIS_URL:-}" ]; then
    echo "using Redis at $REDIS_URL (REDIS_URL is set; starting none)"
else
    redis_bin=$(find_program redis-server)
    # AOF with fsync on every write (the default): an acknowledged reservation or charge
    # survives a crash of Redis itself. `everysec` is faster and can lose the last second.
    # Records keep response bodies of a few hundred bytes; past 64 bytes Redis would turn each
    # such hash into a hash table, about a third more memory per checkout (docs/benchmark.md).
    # The AOF rewrite writes its base uncompressed: 14 % more disk, and the rewrite's
    # CPU per checkout falls by more than half (docs/benchmark.md).
    # A rewrite forks a child that takes a core and, under `always`, makes every fsync queue
    # behind its writes (p99 ×5 – ×10 while it runs). Redis' 64mb floor rewrote a young dataset
    # every ~16 000 checkouts; 512mb waits for ~130 000 (4 KB of AOF each). The cost: up to
    # 512 MB more disk, and a restart replays up to 512 MB of commands (7 – 7.6 s measured here,
    # against ~1 s at 64mb). Past a 256 MB rewritten base the percentage governs, as before.
    redis_args=(--bind 127.0.0.1 --appendonly yes --appendfsync "$appendfsync" --save ""
        --hash-max-listpack-value 1024 --rdbcompression no --daemonize no
        --auto-aof-rewrite-min-size "$aof_rewrite_min_size" --auto-aof-rewrite-percentage "$aof_rewrite_percentage")
    # REDIS_IO_THREADS=n (n > 1): Redis reads and writes its sockets on n threads; commands,
    # scripts and the AOF stay on its one main thread. Only for machines with cores to spare:
    # on 2 CPUs, 2 threads cut the checkout by a quarter or more (docs/benchmark.md).
    if [ "$io_threads" -gt 1 ]; then
        redis_args+=(--io-threads "$io_threads" --io-threads-do-reads yes)
    fi
    # REDIS_MASTERS=n (n > 1): a Redis Cluster of n masters instead, master i on REDIS_PORT +
    # 1000·i, each with its own thread and AOF (for make bench's one-node-against-three run).
    masters=${REDIS_MASTERS:-1}
    if [ "$masters" -le 1 ]; then
        supervise redis "$redis_bin" --port "$redis_port" --dir "$data_dir/redis" "${redis_args[@]}"
        export REDIS_URL=redis://127.0.0.1:$redis_port
        redis_ping "$redis_port" || { echo "run: Redis did not start on port $redis_port:" >&2; tail -n 20 "$logs/redis.log" >&2; exit 1; }
    else
        nodes=() urls=()
        for ((i = 0; i < masters; i++)); do
            port=$((redis_port + 1000 * i))
            mkdir -p "$data_dir/redis-$i"
            supervise "redis-$i" "$redis_bin" --port "$port" --dir "$data_dir/redis-$i" "${redis_args[@]}" \
                --cluster-enabled yes --cluster-config-file nodes.conf
            nodes+=("127.0.0.1:$port") urls+=("redis://127.0.0.1:$port")
        done
        for node in "${nodes[@]}"; do
            redis_ping "${node#*:}" || { echo "run: Redis did not start at $node" >&2; exit 1; }
        done
        redis_cli=$(find_program redis-cli)
        # A cluster formed on an earlier run rejoins from its nodes.conf.
        if ! "$redis_cli" -p "$redis_port" cluster info | grep -q 'cluster_state:ok'; then
            "$redis_cli" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$logs/redis-cluster.log" 2>&1 ||
                { echo "run: redis-cli --cluster create failed:" >&2; tail -n 20 "$logs/redis-cluster.log" >&2; exit 1; }
        fi
        for _ in $(seq 1 300); do
            ok=0
            for node in "${nodes[@]}"; do
                "$redis_cli" -p "${node#*:}" cluster info | grep -q 'cluster_state:ok' && ok=$((ok + 1))
            done
            [ "$ok" -eq "$masters" ] && break
            sleep 0.1
        done
        [ "$ok" -eq "$masters" ] || { echo "run: the Redis Cluster did not become ready" >&2; exit 1; }
        export REDIS_CLUSTER=true
        REDIS_URL=$(IFS=,; echo "${urls[*]}")
        export REDIS_URL
    fi
fi

# start_replicas NAME BINARY PORT_VAR BASE_PORT COUNT: replica i listens on BASE_PORT + 100·i;
# prints the nginx upstream lines.
upstreams=""
start_replicas() {
    local name=$1 binary=$2 port_var=$3 base=$4 count=$5 i port
    upstreams=""
    for ((i = 0; i < count; i++)); do
        port=$((base + 100 * i))
        local label=$name
        [ "$count" -gt 1 ] && label=$name-$i
        export "$port_var=$port"
        supervise "$label" "$bin_dir/$binary"
        upstreams+="server 127.0.0.1:$port;"$'\n'
    done
    for ((i = 0; i < count; i++)); do
        port=$((base + 100 * i))
        label=$name
        [ "$count" -gt 1 ] && label=$name-$i
        ready "$label" "$port" /ready
    done
}

# The payment providers: two card simulators, each a process with its own ledger file in the
# data directory (what the provider believes it charged: GET /_sim/ledger).
mkdir -p "$data_dir/providers"
for sim in "card-a:$card_a_port" "card-b:$card_b_port"; do
    name=${sim%%:*} port=${sim#*:}
    SIM_NAME=$name SIM_PORT=$port SIM_LEDGER=$data_dir/providers/$name.jsonl supervise "$name" "$bin_dir/gateway-sim"
done
ready card-a "$card_a_port" /health
ready card-b "$card_b_port" /health
# The Pix provider: its webhooks go through nginx to whichever payment replica (re-sent until
# one answers 2xx, so starting before nginx is fine).
SIM_NAME=pix SIM_PORT=$pix_port SIM_LEDGER=$data_dir/providers/pix.jsonl \
    SIM_WEBHOOK_URL=http://127.0.0.1:$gateway_port/payment/webhooks/pix SIM_WEBHOOK_SECRET=$pix_secret \
    supervise pix "$bin_dir/gateway-sim"
ready pix "$pix_port" /health
export PAYMENT_GATEWAYS=${PAYMENT_GATEWAYS:-card-a=http://127.0.0.1:$card_a_port,card-b=http://127.0.0.1:$card_b_port,pix=http://127.0.0.1:$pix_port}
export PROVIDER_WEBHOOK_SECRETS=${PROVIDER_WEBHOOK_SECRETS:-pix=$pix_secret}
# Merchant webhooks may go to receivers on this machine under make run (a developer's own).
export WEBHOOK_ALLOW_PRIVATE=${WEBHOOK_ALLOW_PRIVATE:-true}

start_replicas stock stock-service STOCK_PORT "$stock_port" "$stock_replicas"
stock_upstreams=$upstreams
# One replica of a dependency is called directly; several are reached through nginx's upstreams.
# Payment asks stock who owns an item (splits); order calls both.
export STOCK_URL=http://127.0.0.1:$stock_port PAYMENT_URL=http://127.0.0.1:$payment_port
[ "$stock_replicas" -gt 1 ] && STOCK_URL=http://127.0.0.1:$gateway_port/stock
[ "$payment_replicas" -gt 1 ] && PAYMENT_URL=http://127.0.0.1:$gateway_port/payment
# Payment wakes an order whose Pix was paid.
export ORDER_URL=http://127.0.0.1:$order_port
[ "$order_replicas" -gt 1 ] && ORDER_URL=http://127.0.0.1:$gateway_port/order
start_replicas payment payment-service PAYMENT_PORT "$payment_port" "$payment_replicas"
payment_upstreams=$upstreams
start_replicas order order-service ORDER_PORT "$order_port" "$order_replicas"
order_upstreams=$upstreams

supervise nginx "$root/scripts/render-nginx.sh" "$data_dir/nginx" "$gateway_port" \
    "$order_upstreams" "$payment_upstreams" "$stock_upstreams" "$logs/nginx-access.log"
ready nginx "$gateway_port" /stock/ready

token_note=""
[ "$INTERNAL_TOKEN" = "dev-internal-token" ] && token_note="  (the development default; set INTERNAL_TOKEN for anything real)"
cat <<EOF

Checkout stack is up.
  gateway   http://localhost:$gateway_port/   (nginx; /order/, /payment/, /stock/)
  order     http://localhost:$gateway_port/order/docs      (API reference; /order/openapi.json)
  payment   http://localhost:$gateway_port/payment/docs    (/payment/openapi.json)
  stock     http://localhost:$gateway_port/stock/docs      (/stock/openapi.json; items at /stock/items)
  providers card-a http://127.0.0.1:$card_a_port, card-b http://127.0.0.1:$card_b_port, pix http://127.0.0.1:$pix_port
            (pay a Pix checkout: POST http://127.0.0.1:$pix_port/_sim/pix/<gatewayReference>/pay)
            (simulators: GET /_sim/ledger, PUT /_sim/faults; switch: PUT /payment/gateways/card-a)
  redis     $REDIS_URL  (appendfsync $appendfsync)
  replicas  order $order_replicas, payment $payment_replicas, stock $stock_replicas
  token     $INTERNAL_TOKEN$token_note
  logs      $logs/

Try a checkout:

  curl -i -X POST localhost:$gateway_port/order/checkout \\
    -H 'Content-Type: application/json' \\
    -H "Idempotency-Key: \$(cat /proc/sys/kernel/random/uuid)" \\
    -d '{"itemId": 1, "quantity": 2}'

Ctrl-C stops everything.
EOF

# Supervisors never exit on their own; wait until a signal ends the script.
while true; do
    wait || true
done
