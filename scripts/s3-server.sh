#!/usr/bin/env bash
# A throw-away Garage S3 server on 127.0.0.1 for the test suite.
#
#   scripts/s3-server.sh start    install Garage if needed, start it, create the test buckets
#                                 and an access key, write $STATE/env (idempotent)
#   scripts/s3-server.sh env      print the env file (export lines) of the running server
#   scripts/s3-server.sh status   exit 0 if the server is running
#   scripts/s3-server.sh stop     stop the server and remove its state
#
# Environment:
#   TABLESNAP_S3_STATE   state directory (default: <repo>/.ci/work/garage)
#   GARAGE_VERSION       version to `cargo install` when `garage` is missing (default 2.5.0)
#   GARAGE_BIN           garage binary to use (default: `garage` on PATH or in ~/.cargo/bin)
#   GARAGE_LOG_LEVEL     RUST_LOG for the server (default: garage=info)
#
# The env file exports TABLESNAP_TEST_S3_{ENDPOINT,ACCESS_KEY,SECRET_KEY,BUCKET,BUCKET2,REGION}.
# Garage is AGPL: we only run it as a separate test server, never link it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TABLESNAP_S3_STATE:-$REPO/.ci/work/garage}
CFG=$STATE/garage.toml
PIDFILE=$STATE/garage.pid
LOG=$STATE/garage.log
SETUP_LOG=$STATE/setup.log
ENVFILE=$STATE/env
GARAGE_VERSION=${GARAGE_VERSION:-2.5.0}
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
REGION=us-east-1
BUCKET=tablesnap-test
BUCKET2=tablesnap-test2
KEY_NAME=tablesnap-test
export PATH="$CARGO_BIN:$PATH"

say() { echo "s3-server: $*" >&2; }

die() {
    say "ERROR: $*"
    local f
    for f in "$SETUP_LOG" "$LOG"; do
        if [[ -s $f ]]; then
            echo "---- last lines of $f ----" >&2
            tail -n 25 "$f" >&2
        fi
    done
    kill_server
    exit 1
}

rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# ---- installing Garage ---------------------------------------------------------------------

install_pids() {
    # Another `cargo install garage` already running on this machine (e.g. a parallel CI step
    # or a developer's shell): wait for it rather than compiling twice on a small machine.
    pgrep -f 'cargo install( .*)? garage' 2>/dev/null || true
}

find_garage() {
    if [[ -n ${GARAGE_BIN:-} ]]; then
        [[ -x $GARAGE_BIN ]] || { say "GARAGE_BIN=$GARAGE_BIN is not executable"; exit 1; }
        return
    fi
    local waited=0
    while [[ -n $(install_pids) ]]; do
        ((waited % 60 == 0)) && say "waiting for a running 'cargo install garage' to finish ($waited s)"
        sleep 5
        waited=$((waited + 5))
        if ((waited > 1800)); then
            say "gave up waiting for the other garage install after 30 min"
            exit 1
        fi
    done
    if GARAGE_BIN=$(command -v garage); then
        return
    fi
    say "garage not found: cargo install garage@$GARAGE_VERSION (about 7 min on 2 cores)"
    local t0=$SECONDS
    cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
        --features bundled-libs,sqlite,lmdb </dev/null >&2
    say "garage installed in $((SECONDS - t0)) s"
    GARAGE_BIN=$(command -v garage) || { say "garage still not on PATH after install"; exit 1; }
}

g() { timeout 30 "$GARAGE_BIN" -c "$CFG" "$@" </dev/null; }

# ---- process management --------------------------------------------------------------------

server_pid() {
    # The pid from the pid file, only if that process is our garage (pids get reused).
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CFG" || return 1
    echo "$pid"
}

running() { server_pid >/dev/null && [[ -s $ENVFILE ]]; }

kill_server() {
    local pid
    pid=$(server_pid) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    say "garage ($pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

remove_state() {
    # Only what we created: the state directory may have been pointed anywhere.
    rm -rf "$STATE/meta" "$STATE/data"
    rm -f "$CFG" "$PIDFILE" "$LOG" "$SETUP_LOG" "$ENVFILE" "$ENVFILE.tmp"
    rmdir "$STATE" 2>/dev/null || true
}

free_ports() {
    # Ask the kernel for N distinct free ports on 127.0.0.1 (held together, then released).
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

s3_answers() {
    # Any HTTP answer below 500 (an anonymous request gets 403) means the S3 API is serving;
    # 503 means the layout is not active yet. Bypass any HTTP proxy from the environment.
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    opener.open(sys.argv[1], timeout=2)
    code = 200
except urllib.error.HTTPError as e:
    code = e.code
except Exception:
    sys.exit(1)
sys.exit(0 if code < 500 else 1)
EOF
}

# Garage logs a bind failure of its S3 API and shuts down slowly (or not at all): look for it.
port_conflict() { grep -qi 'address already in use' "$LOG" 2>/dev/null; }

wait_for() {
    # wait_for SECONDS WHAT COMMAND...: retries COMMAND while garage is alive.
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >>"$SETUP_LOG" 2>&1; do
        if port_conflict; then
            kill_server
            return 2
        fi
        server_pid >/dev/null || die "garage exited while waiting for $what"
        ((SECONDS < deadline)) || die "timed out after $limit s waiting for $what"
        sleep 0.2
    done
}

# ---- start ---------------------------------------------------------------------------------

write_config() {
    local s3_port=$1 rpc_port=$2 admin_port=$3
    cat >"$CFG" <<EOF
# Written by scripts/s3-server.sh: a single-node Garage for tests. Delete with 'stop'.
metadata_dir = "$STATE/meta"
data_dir = "$STATE/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(rand_hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(rand_hex 32)"
metrics_token = "$(rand_hex 32)"
EOF
    chmod 600 "$CFG"
}

launch() {
    # One attempt: returns 2 if a port was taken between picking and binding.
    remove_state
    mkdir -p "$STATE/meta" "$STATE/data"
    : >"$SETUP_LOG"
    local s3_port rpc_port admin_port
    # (errexit is off inside a function called from `||`: check each step.)
    local ports
    ports=$(free_ports 3) || die "cannot pick free ports (python3 missing?)"
    read -r s3_port rpc_port admin_port <<<"$ports"
    write_config "$s3_port" "$rpc_port" "$admin_port" || die "cannot write $CFG"
    # fd 9 (the lock) must not be inherited, or the server would hold the lock forever.
    NO_COLOR=1 RUST_LOG=${GARAGE_LOG_LEVEL:-garage=info} \
        "$GARAGE_BIN" -c "$CFG" server </dev/null >"$LOG" 2>&1 9>&- &
    echo $! >"$PIDFILE"
    local t0
    t0=$(date +%s%N)
    local deadline=$((SECONDS + 60))
    until g status >>"$SETUP_LOG" 2>&1; do
        if port_conflict; then
            kill_server
            return 2
        fi
        server_pid >/dev/null || die "garage exited during startup"
        ((SECONDS < deadline)) || die "garage did not answer 'status' within 60 s"
        sleep 0.2
    done

    local node_id
    node_id=$(g node id -q 2>>"$SETUP_LOG") || die "garage node id failed"
    node_id=${node_id%%@*}
    [[ $node_id =~ ^[0-9a-f]{16,}$ ]] || die "unexpected node id '$node_id'"
    g layout assign -z dc1 -c 1G "$node_id" >>"$SETUP_LOG" 2>&1 || die "layout assign failed"
    g layout apply --version 1 >>"$SETUP_LOG" 2>&1 || die "layout apply failed"

    local key_id secret
    key_id=GK$(rand_hex 12)
    secret=$(rand_hex 32)
    g key import --yes -n "$KEY_NAME" "$key_id" "$secret" >>"$SETUP_LOG" 2>&1 ||
        die "key import failed"
    local b
    for b in "$BUCKET" "$BUCKET2"; do
        wait_for 30 "bucket create $b" g bucket create "$b" || return $?
        g bucket allow --read --write --owner "$b" --key "$KEY_NAME" >>"$SETUP_LOG" 2>&1 ||
            die "bucket allow $b failed"
    done
    wait_for 30 "the S3 API on port $s3_port" s3_answers "http://127.0.0.1:$s3_port/$BUCKET" ||
        return $?

    {
        echo "# Garage test server (scripts/s3-server.sh); source this file."
        echo "export TABLESNAP_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port"
        echo "export TABLESNAP_TEST_S3_ACCESS_KEY=$key_id"
        echo "export TABLESNAP_TEST_S3_SECRET_KEY=$secret"
        echo "export TABLESNAP_TEST_S3_BUCKET=$BUCKET"
        echo "export TABLESNAP_TEST_S3_BUCKET2=$BUCKET2"
        echo "export TABLESNAP_TEST_S3_REGION=$REGION"
    } >"$ENVFILE.tmp"
    chmod 600 "$ENVFILE.tmp"
    mv "$ENVFILE.tmp" "$ENVFILE"
    say "garage $("$GARAGE_BIN" --version 2>/dev/null | head -n1 | awk '{print $2}') ready on" \
        "http://127.0.0.1:$s3_port in $((($(date +%s%N) - t0) / 1000000)) ms (state: $STATE)"
}

start() {
    if running; then
        say "already running (state: $STATE)"
        return 0
    fi
    find_garage
    kill_server # a half-started server from an earlier failure
    local attempt rc
    for attempt in 1 2 3; do
        rc=0
        launch || rc=$?
        [[ $rc == 0 ]] && return 0
        [[ $rc == 2 ]] || die "start failed"
        say "a port was taken before garage could bind it (attempt $attempt); retrying"
    done
    die "could not bind free ports after 3 attempts"
}

# ---- main ----------------------------------------------------------------------------------

cmd=${1:-}
mkdir -p "$(dirname "$STATE")"
# Serialize start/stop on one state directory (two test runs started at once in one tree).
exec 9>"$STATE.lock"
if command -v flock >/dev/null; then
    flock 9
fi

case $cmd in
start) start ;;
stop)
    kill_server
    remove_state
    ;;
env)
    running || { say "not running: run '$0 start' first"; exit 1; }
    cat "$ENVFILE"
    ;;
status)
    if running; then
        say "running, pid $(server_pid), $(grep ENDPOINT "$ENVFILE" | cut -d= -f2)"
    else
        say "not running"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|env|status" >&2
    exit 2
    ;;
esac
