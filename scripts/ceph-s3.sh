#!/usr/bin/env bash
# A throw-away one-node Ceph (one monitor, one bluestore OSD on a sparse file, radosgw; no
# manager) on 127.0.0.1 for the test suite: the third real S3, and the only one here with
# Object Lock and versioning (tests/object_lock.rs; tests/backends.rs runs on it too).
#
#   scripts/ceph-s3.sh start    install Debian's ceph-mon, ceph-osd and radosgw when missing
#                               (about 30 s), bootstrap or start (about 17 s), create the test
#                               buckets (one with Object Lock), write $STATE/env (idempotent)
#   scripts/ceph-s3.sh env      print the env file of the running cluster
#   scripts/ceph-s3.sh status   exit 0 if radosgw answers
#   scripts/ceph-s3.sh stop     stop the daemons and remove the state
#
# Environment:
#   TABLESNAP_CEPH_STATE  state directory (default: <repo>/.ci/work/ceph)
#   CEPH_BASE_PORT        mon v2=BASE, v1=BASE+1, OSD BASE+10..BASE+79, radosgw BASE+80
#                         (default 17300, below the ephemeral range other servers pick from)
#
# The env file exports TABLESNAP_TEST_CEPH_{ENDPOINT,ACCESS_KEY,SECRET_KEY,REGION,BUCKET,
# LOCK_BUCKET}. Settings that matter (../shared/TESTING.md): auth none *and* `ms mon client
# mode = crc secure` (else radosgw hangs 300 s), pool size 1, chooseleaf type 0, everything
# bound to 127.0.0.1, `rgw gc obj min wait = 10`. Adapted from ../shared/tools/ceph-s3.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_ARG=${TABLESNAP_CEPH_STATE:-$REPO/.ci/work/ceph}
BASE=${CEPH_BASE_PORT:-17300}
STORE=bluestore
BLUESTORE_BYTES=${CEPH_BLUESTORE_BYTES:-21474836480}
MEMSTORE_BYTES=4294967296
AK=TABLESNAPCEPHACCESS01
SK=tablesnapcephsecret00000000000000000000
BUCKET=tablesnap-ceph
LOCK_BUCKET=tablesnap-ceph-lock
PKGS="ceph-mon ceph-osd radosgw"
BINS="ceph ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph-authtool"

log() { echo "ceph-s3.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

do_install() {
    local missing=0 b
    for b in $BINS; do command -v "$b" >/dev/null 2>&1 || missing=1; done
    [ "$missing" = 0 ] && return 0
    log "installing $PKGS"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends $PKGS >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends $PKGS >&2
    fi
}

setup_vars() {
    [ -n "${1:-}" ] || die "DIR argument required"
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd)
    CONF=$DIR/ceph.conf
    # settings chosen at bootstrap win over the environment on later calls
    if [ -f "$DIR/settings" ]; then . "$DIR/settings"; fi
    MON_V2=$BASE; MON_V1=$((BASE + 1)); OSD_MIN=$((BASE + 10)); OSD_MAX=$((BASE + 79)); RGW_PORT=$((BASE + 80))
    C="ceph -c $CONF --connect-timeout 10"
}

write_conf() {
    local fsid=$1
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind port min = $OSD_MIN
ms bind port max = $OSD_MAX
auth cluster required = none
auth service required = none
auth client required = none
# Debian's radosgw defaults ms_mon_client_mode to 'secure', which cannot work with auth none
ms mon client mode = crc secure
ms client mode = crc secure
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
keyring = $DIR/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $DIR/mon/\$cluster-\$id

[osd]
osd data = $DIR/osd/\$cluster-\$id
$(osd_store_conf)
osd op num shards = 2
osd op num threads per shard = 1
# memstore only writes its contents to osd data on a clean umount
osd fast shutdown = false

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $DIR/rgw
rgw thread pool size = 64
# reclaim deleted/overwritten object data quickly (default waits 2 h, period 1 h)
rgw gc obj min wait = 10
rgw gc processor period = 30
rgw gc processor max time = 30
EOF
}

osd_store_conf() {
    if [ "$STORE" = bluestore ]; then
        cat <<EOB
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $BLUESTORE_BYTES
osd memory target = 1073741824
EOB
    else
        cat <<EOB
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
EOB
    fi
}

pid_alive() { # name
    local f=$DIR/run/$1.pid
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_for() { # timeout_s description command...
    local t=$1 what=$2 i; shift 2
    for ((i = 0; i < t * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out after ${t}s waiting for $what (see $DIR/log)"
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
osd_up() { $C osd dump 2>/dev/null | grep -q '^osd.0 up'; }
rgw_up() { curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/"; }

bootstrap() {
    log "bootstrapping new cluster in $DIR"
    rm -rf "$DIR"/{mon,osd,rgw,run,crash,monmap,mon.keyring,keyring,ceph.conf,settings,user.json}
    mkdir -p "$DIR"/{mon/ceph-a,osd/ceph-0,rgw,run,log,crash}
    local fsid osd_uuid id
    fsid=$(uuidgen)
    printf 'BASE=%q\nAK=%q\nSK=%q\nSTORE=%q\n' "$BASE" "$AK" "$SK" "$STORE" >"$DIR/settings"
    write_conf "$fsid"
    : >"$DIR/keyring"
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >&2
    monmaptool --create --addv a "[v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]" \
        --fsid "$fsid" "$DIR/monmap" >&2
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" >&2
    start_mon
    osd_uuid=$(uuidgen)
    id=$($C osd new "$osd_uuid")
    [ "$id" = 0 ] || die "unexpected osd id '$id'"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >&2 2>>"$DIR/log/mkfs.log"
    touch "$DIR/.bootstrapped"
}

start_mon() {
    pid_alive mon.a || ceph-mon -c "$CONF" -i a >&2
    wait_for 60 "monitor" $C mon stat
}

do_start() {
    setup_vars "$1"
    do_install
    if pid_alive client.rgw && rgw_up; then
        log "already running"
    else
        local p
        pid_alive mon.a || for p in $MON_V2 $MON_V1; do port_free $p || die "port $p already in use"; done
        pid_alive client.rgw || port_free $RGW_PORT || die "port $RGW_PORT already in use"
        # on any failure below, stop whatever this call started and leave logs in DIR/log
        trap 'rc=$?; log "start failed (rc=$rc), stopping daemons; logs in $DIR/log"; do_stop "$DIR"; exit $rc' EXIT
        if [ -f "$DIR/.bootstrapped" ]; then start_mon; else bootstrap; fi
        pid_alive osd.0 || ceph-osd -c "$CONF" -i 0 >&2
        wait_for 90 "osd.0 up" osd_up
        pid_alive client.rgw || radosgw -c "$CONF" -n client.rgw >&2
        wait_for 120 "radosgw on 127.0.0.1:$RGW_PORT" rgw_up
        if ! radosgw-admin -c "$CONF" user info --uid=test >/dev/null 2>&1; then
            radosgw-admin -c "$CONF" user create --uid=test --display-name="test user" \
                --access-key="$AK" --secret-key="$SK" >"$DIR/user.json"
        fi
        trap - EXIT
        log "ready: rgw pid $(cat "$DIR/run/client.rgw.pid"), osd pid $(cat "$DIR/run/osd.0.pid"), mon pid $(cat "$DIR/run/mon.a.pid")"
    fi
    echo "CEPH_S3_URL=http://127.0.0.1:$RGW_PORT"
    echo "CEPH_S3_ACCESS_KEY=$AK"
    echo "CEPH_S3_SECRET_KEY=$SK"
    echo "CEPH_S3_REGION=us-east-1"
}

stop_one() { # name
    local f=$DIR/run/$1.pid pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then log "$1 ($pid) did not exit, SIGKILL"; kill -KILL "$pid"; fi
    fi
    rm -f "$f"
}

do_stop() {
    setup_vars "$1"
    # strictly in order: rgw unwatches its RADOS objects on exit (stalls if the osd is gone),
    # and the osd waits for the mon to ack its shutdown
    stop_one client.rgw
    stop_one osd.0
    stop_one mon.a
    log "stopped"
}

do_status() {
    setup_vars "$1"
    local n
    for n in mon.a osd.0 client.rgw; do
        if pid_alive $n; then echo "$n running pid $(cat "$DIR/run/$n.pid")"; else echo "$n not running"; fi
    done
    $C -s || true
}

aws_ceph() {
    AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_DEFAULT_REGION=us-east-1 \
        AWS_EC2_METADATA_DISABLED=true aws --endpoint-url "http://127.0.0.1:$RGW_PORT" "$@"
}

make_buckets() {
    command -v aws >/dev/null 2>&1 || python3 -m pip install --quiet awscli >&2
    aws_ceph s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1 ||
        aws_ceph s3api create-bucket --bucket "$BUCKET" >/dev/null
    aws_ceph s3api head-bucket --bucket "$LOCK_BUCKET" >/dev/null 2>&1 ||
        aws_ceph s3api create-bucket --bucket "$LOCK_BUCKET" --object-lock-enabled-for-bucket >/dev/null
    cat >"$DIR/env.tmp" <<EOF
export TABLESNAP_TEST_CEPH_ENDPOINT=http://127.0.0.1:$RGW_PORT
export TABLESNAP_TEST_CEPH_ACCESS_KEY=$AK
export TABLESNAP_TEST_CEPH_SECRET_KEY=$SK
export TABLESNAP_TEST_CEPH_REGION=us-east-1
export TABLESNAP_TEST_CEPH_BUCKET=$BUCKET
export TABLESNAP_TEST_CEPH_LOCK_BUCKET=$LOCK_BUCKET
EOF
    mv "$DIR/env.tmp" "$DIR/env"
}

case ${1:-} in
start)
    do_start "$STATE_ARG" >/dev/null
    make_buckets
    log "ready on http://127.0.0.1:$RGW_PORT (buckets $BUCKET, and $LOCK_BUCKET with Object Lock)"
    ;;
env)
    setup_vars "$STATE_ARG"
    { pid_alive client.rgw && [ -s "$DIR/env" ]; } || { log "not running: run '$0 start' first"; exit 1; }
    cat "$DIR/env"
    ;;
status)
    setup_vars "$STATE_ARG"
    if pid_alive client.rgw && rgw_up && [ -s "$DIR/env" ]; then
        log "running, radosgw on 127.0.0.1:$RGW_PORT"
    else
        log "not running"
        exit 1
    fi
    ;;
stop)
    do_stop "$STATE_ARG"
    case "$DIR" in /|/tmp|/root|"") die "refusing to remove '$DIR'" ;; esac
    rm -rf "$DIR"
    ;;
*)
    echo "usage: $0 start|stop|env|status" >&2
    exit 2
    ;;
esac
