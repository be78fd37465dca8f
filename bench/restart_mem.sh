#!/usr/bin/env bash
# Restart benchmark (issue #10, "memory that does not grow with the node"): a `tablesnap
# --once -B -r` run over a tree whose every file and index is already stored. Reports peak
# RSS and wall time (from /usr/bin/time -v) and, on S3, the requests the restart sent.
#
#   bench/restart_mem.sh                      # file://, 1,000,000 objects (~1 min to build; real listings)
#   RESTART_OBJECTS=200000 bench/restart_mem.sh
#   RESTART_S3=1 RESTART_OBJECTS=100000 bench/restart_mem.sh   # Garage, requests counted
#
# file://: the bucket is built by bench/restart_gen.py (hard links of the local files, empty
# indexes), so a million objects take seconds and ~0.5 GB. S3 (RESTART_S3=1): the running
# test Garage (TABLESNAP_S3_STATE, see scripts/s3-server.sh) under a fresh key prefix; the
# objects are stored by a first `tablesnap --once -r` run, then the restart goes through the
# logging proxy of bench/tools.py, which counts its requests.
# On S3 the restore side is measured too, through the same proxy: `tableslurp -r --dry-run`
# (the whole node's plan) and `tablechop ... 0` (RSS, wall, requests). RESTART_PREFIX=KEY/
# with RESTART_KEEP=1 from an earlier run reuses its objects (no first run) and its tree
# (made again if gone; RESTART_HOST names the host if $RESTART_DIR/host is gone too).
# Knobs: RESTART_OBJECTS, RESTART_DIR (default /tmp/tsrestart; removed at the end unless
# RESTART_KEEP=1), TABLESNAP_BIN (default: target/release/tablesnap, built unless
# BENCH_SKIP_BUILD=1), RESTART_ARGS (extra tablesnap arguments), RESTART_BEFORE_BIN (another
# build, e.g. of main, whose restart is measured too on the same data: before/after).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${RESTART_OBJECTS:-1000000}
DIR=${RESTART_DIR:-/tmp/tsrestart}
BIN=${TABLESNAP_BIN:-$ROOT/target/release/tablesnap}
S3=${RESTART_S3:-0}
if [[ -z ${TABLESNAP_BIN:-} && ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release --bin tablesnap)
fi
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
[[ -n ${RESTART_PREFIX:-} ]] || rm -rf "$DIR"
mkdir -p "$DIR"
cleanup() { [[ ${RESTART_KEEP:-0} == 1 ]] || rm -rf "$DIR"; [[ -n ${PROXY_PID:-} ]] && kill "$PROXY_PID" 2>/dev/null || true; }
trap cleanup EXIT
DATA=$DIR/data
HOST=bench$$

measure() { # label, then the command
    local label=$1; shift
    /usr/bin/time -v "$@" >"$DIR/$label.out" 2>&1 || { tail -20 "$DIR/$label.out" >&2; echo "$label failed" >&2; exit 1; }
    local rss wall summary
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$DIR/$label.out")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/$label.out")
    summary=$(grep -o 'tablesnap stopped: .*\|total: .*\|deleted .* objects' "$DIR/$label.out" | sed 's/\x1b\[[0-9;]*m//g' | tail -1 || true)
    echo "$label: peak RSS ${rss} MiB, wall $wall; $summary"
}

if [[ $S3 != 1 ]]; then
    read -r files objects < <(python3 "$ROOT/bench/restart_gen.py" "$DATA" "$DIR/bucket" "$HOST" "$N" --listings)
    echo "file://: $files local files, $objects stored objects ($(du -sh "$DIR" | cut -f1) on disk)"
    sync
    # shellcheck disable=SC2086
    measure restart "$BIN" --once -B -r -n "$HOST" ${RESTART_ARGS:-} "file://$DIR/bucket" "$DATA"
    if [[ -n ${RESTART_BEFORE_BIN:-} ]]; then
        # shellcheck disable=SC2086
        measure restart-before "$RESTART_BEFORE_BIN" --once -B -r -n "$HOST" ${RESTART_ARGS:-} "file://$DIR/bucket" "$DATA"
    fi
    # The restore side on the same bucket (its indexes are real listings).
    measure restore-plan "$(dirname "$BIN")/tableslurp" -r --dry-run -n "$HOST" "file://$DIR/bucket" "$DATA" "$DIR/restore"
    measure tablechop-dry "$(dirname "$BIN")/tablechop" --dry-run -n "$HOST" "file://$DIR/bucket" "$DATA" 0
    exit 0
fi

: "${TABLESNAP_S3_STATE:=/work/main/.ci/work/garage}"
# shellcheck disable=SC1091
source "$TABLESNAP_S3_STATE/env"
export AWS_ACCESS_KEY_ID=$TABLESNAP_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$TABLESNAP_TEST_S3_SECRET_KEY
export AWS_REGION=${TABLESNAP_TEST_S3_REGION:-garage}
if [[ -n ${RESTART_PREFIX:-} ]]; then
    PREFIX=$RESTART_PREFIX
    HOST=${RESTART_HOST:-$(cat "$DIR/host")}
    echo "$HOST" >"$DIR/host"
    if [[ ! -d $DATA ]]; then
        # The generator is deterministic (names, sizes, mtimes): the same tree again.
        python3 "$ROOT/bench/restart_gen.py" "$DATA" "$DIR/unused" "$HOST" "$N" >/dev/null
        rm -rf "$DIR/unused"
    fi
    echo "S3: reusing $DATA and s3://$TABLESNAP_TEST_S3_BUCKET/$PREFIX"
else
    # The tree only (no file:// bucket): the first run stores it.
    read -r files objects < <(python3 "$ROOT/bench/restart_gen.py" "$DATA" "$DIR/unused" "$HOST" "$N")
    rm -rf "$DIR/unused"
    echo "$HOST" >"$DIR/host"
    PREFIX="restart-bench-$$/"
    echo "S3: $files local files, $objects objects expected under s3://$TABLESNAP_TEST_S3_BUCKET/$PREFIX"
    # shellcheck disable=SC2086
    measure first "$BIN" --once -r -n "$HOST" -p "$PREFIX" --endpoint-url "$TABLESNAP_TEST_S3_ENDPOINT" ${RESTART_ARGS:-} "$TABLESNAP_TEST_S3_BUCKET" "$DATA"
fi
PORT=$((20000 + $$ % 20000))
python3 "$ROOT/bench/tools.py" proxy "$PORT" "$TABLESNAP_TEST_S3_ENDPOINT" "$DIR/proxy.log" 2>"$DIR/proxy.err" &
PROXY_PID=$!
sleep 1
# shellcheck disable=SC2086
measure restart "$BIN" --once -B -r -n "$HOST" -p "$PREFIX" --endpoint-url "http://127.0.0.1:$PORT" ${RESTART_ARGS:-} "$TABLESNAP_TEST_S3_BUCKET" "$DATA"
echo "restart requests (proxy): $(python3 "$ROOT/bench/tools.py" count "$DIR/proxy.log")"
if [[ -n ${RESTART_BEFORE_BIN:-} ]]; then
    from=$(wc -l <"$DIR/proxy.log")
    # shellcheck disable=SC2086
    measure restart-before "$RESTART_BEFORE_BIN" --once -B -r -n "$HOST" -p "$PREFIX" --endpoint-url "http://127.0.0.1:$PORT" ${RESTART_ARGS:-} "$TABLESNAP_TEST_S3_BUCKET" "$DATA"
    echo "restart-before requests (proxy): $(python3 "$ROOT/bench/tools.py" count "$DIR/proxy.log" "$from")"
fi
SLURP=${TABLESLURP_BIN:-$(dirname "$BIN")/tableslurp}
CHOP=${TABLECHOP_BIN:-$(dirname "$BIN")/tablechop}
from=$(wc -l <"$DIR/proxy.log")
measure restore-plan "$SLURP" -r --dry-run -n "$HOST" --prefix "$PREFIX" --endpoint-url "http://127.0.0.1:$PORT" "$TABLESNAP_TEST_S3_BUCKET" "$DATA" "$DIR/restore"
echo "restore-plan: $(grep -c '\[fetch\]' "$DIR/restore-plan.out") files planned; requests (proxy): $(python3 "$ROOT/bench/tools.py" count "$DIR/proxy.log" "$from")"
from=$(wc -l <"$DIR/proxy.log")
measure tablechop "$CHOP" -n "$HOST" --prefix "$PREFIX" --endpoint-url "http://127.0.0.1:$PORT" "$TABLESNAP_TEST_S3_BUCKET" "$DATA" 0
echo "tablechop requests (proxy): $(python3 "$ROOT/bench/tools.py" count "$DIR/proxy.log" "$from")"
echo "note: the objects stay under s3://$TABLESNAP_TEST_S3_BUCKET/$PREFIX; remove them with"
echo "  s5cmd --endpoint-url $TABLESNAP_TEST_S3_ENDPOINT rm 's3://$TABLESNAP_TEST_S3_BUCKET/$PREFIX*'"
