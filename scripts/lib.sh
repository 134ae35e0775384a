# Shared by scripts/bench.sh, scripts/chaos.sh and scripts/script-cost.sh (sourced, not run).

# wait_ready PORT PATH: waits up to 30 s until GET PATH on 127.0.0.1:PORT answers 200 (plain
# bash: no curl needed). Says so on stderr and fails if it never does.
wait_ready() {
    local port=$1 path=$2 reply
    for _ in $(seq 1 300); do
        if reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3 && head -n1 <&3) 2>/dev/null) &&
            [[ $reply == *" 200 "* ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing ready on port $port$path" >&2
    return 1
}

# require_binaries SCRIPT BIN_DIR NAME...: fails, naming the make target that builds them
# (`make SCRIPT`), unless every NAME is an executable in BIN_DIR.
require_binaries() {
    local script=$1 dir=$2 name
    shift 2
    for name in "$@"; do
        [ -x "$dir/$name" ] || { echo "$script: $dir/$name missing (make $script builds it)" >&2; return 1; }
    done
}

# stop_groups: stops every process group whose leader is in the array `pids` (each started in
# the background with job control on, `set -m`, so a group is a supervisor and what it runs),
# waits for them and empties `pids`.
stop_groups() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
