#!/usr/bin/env bash
# The test command: starts a local Garage S3 server (installing it on first use, about 7 min),
# the Azure and GCS emulators (Azurite, fake-gcs-server: scripts/emulators.sh, about 20 s to
# install) and a one-node Ceph RADOS Gateway with Object Lock (scripts/ceph-s3.sh: Debian's
# packages, about 30 s to install, 17 s to start), runs the whole test suite against them, and
# stops them.
#
#   bash scripts/test.sh                      # cargo test --all-targets -- --test-threads=4
#   bash scripts/test.sh --test s3_store      # cargo args go before `--` ...
#   bash scripts/test.sh -- multipart         # ... test-binary args (filters) after it
#
# Servers already started (`scripts/s3-server.sh start`, `scripts/emulators.sh start`) are
# reused and left running. TABLESNAP_KEEP_S3=1 leaves servers started here running too.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export TABLESNAP_S3_STATE=${TABLESNAP_S3_STATE:-$REPO/.ci/work/garage}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Split our arguments at the first `--`: cargo's, then the test binaries'.
cargo_args=()
test_args=()
seen_sep=0
for a in "$@"; do
    if [[ $seen_sep == 0 && $a == -- ]]; then
        seen_sep=1
    elif [[ $seen_sep == 0 ]]; then
        cargo_args+=("$a")
    else
        test_args+=("$a")
    fi
done
# Default to every target unless the caller picked some.
select_all=1
for a in "${cargo_args[@]+"${cargo_args[@]}"}"; do
    case $a in
    --lib | --bin | --bin=* | --bins | --test | --test=* | --tests | --bench | --bench=* | \
        --benches | --example | --example=* | --examples | --doc | --all-targets)
        select_all=0
        ;;
    esac
done
((select_all)) && cargo_args=(--all-targets "${cargo_args[@]+"${cargo_args[@]}"}")

export TABLESNAP_EMU_STATE=${TABLESNAP_EMU_STATE:-$REPO/.ci/work/emulators}

# Prometheus and promtool (Debian's package, about 10 s) for tests/prometheus.rs: the
# shipped alert rules and a real scrape. Installed when missing and we are root (CI);
# elsewhere those tests say they were skipped.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing prometheus (Debian package) for the alert-rule tests" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "test.sh: prometheus/promtool not installed (apt-get install prometheus): tests/prometheus.rs will skip" >&2
    fi
fi
# The stock age tool (Debian's package) for tests/sealed.rs: a sealed object decrypted
# without tablesnap, as the README tells operators to. Installed when missing and root.
if ! command -v age >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing age (Debian package) for the sealed-backup tests" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends age >/dev/null
    else
        echo "test.sh: age not installed (apt-get install age): tests/sealed.rs checks decryption with the age crate only" >&2
    fi
fi
# What to stop on exit: only the servers started here.
stop_here=()
cleanup() {
    local s
    for s in "${stop_here[@]+"${stop_here[@]}"}"; do
        bash "$REPO/scripts/$s" stop || true
    done
}
if [[ ${TABLESNAP_KEEP_S3:-} != 1 ]]; then
    trap cleanup EXIT
    # Make sure a signal ends the script through the EXIT trap (stopping the servers).
    trap 'exit 130' INT
    trap 'exit 143' TERM
fi
export TABLESNAP_CEPH_STATE=${TABLESNAP_CEPH_STATE:-$REPO/.ci/work/ceph}
for s in s3-server.sh emulators.sh ceph-s3.sh; do
    if bash "scripts/$s" status 2>/dev/null; then
        echo "test.sh: reusing the servers of scripts/$s" >&2
    else
        stop_here+=("$s")
        if [[ $s == ceph-s3.sh && ${CI:-} != true && -z ${TABLESNAP_REQUIRE_BACKENDS:-} ]]; then
            # Ceph needs root to install its Debian packages: outside CI, its tests skip
            # (saying so) when it cannot start.
            bash "scripts/$s" start ||
                echo "test.sh: Ceph RGW did not start (see above): the Object Lock and Ceph tests will skip" >&2
        else
            bash "scripts/$s" start
        fi
    fi
done

# Hermetic: credentials, endpoints or profiles from the caller's environment must not leak
# into the clients under test (the tests pass everything explicitly).
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_SECURITY_TOKEN \
    AWS_ENDPOINT AWS_ENDPOINT_URL AWS_REGION AWS_DEFAULT_REGION AWS_PROFILE \
    AZURE_STORAGE_USE_EMULATOR GOOGLE_SERVICE_ACCOUNT GOOGLE_SERVICE_ACCOUNT_KEY GOOGLE_BASE_URL
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
# shellcheck disable=SC1091
source "$TABLESNAP_S3_STATE/env"
# shellcheck disable=SC1091
source "$TABLESNAP_EMU_STATE/env"
if [[ -f $TABLESNAP_CEPH_STATE/env ]]; then
    # shellcheck disable=SC1091
    source "$TABLESNAP_CEPH_STATE/env"
fi

threads=(--test-threads=4)
for a in "${test_args[@]+"${test_args[@]}"}"; do
    [[ $a == --test-threads* ]] && threads=()
done

t0=$SECONDS
rc=0
cargo test "${cargo_args[@]}" -- "${threads[@]+"${threads[@]}"}" "${test_args[@]+"${test_args[@]}"}" || rc=$?
echo "test.sh: cargo test exited with $rc after $((SECONDS - t0)) s" >&2
exit "$rc"
