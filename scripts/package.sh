#!/usr/bin/env bash
# Builds the Debian package (three binaries, man pages and shell completions generated from
# the clap definitions, the systemd unit and /etc/default/tablesnap) and checks its contents.
#
#   bash scripts/package.sh        -> target/debian/tablesnap_<version>_<arch>.deb
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --bins
cargo run --quiet --example gen_docs -- target/assets
cargo deb --no-build --strip
deb=$(ls -t target/debian/tablesnap_*.deb | head -1)

# The package must hold everything an operator needs.
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/tablesnap ./usr/bin/tableslurp ./usr/bin/tablechop \
    ./usr/share/man/man1/tablesnap.1.gz ./usr/share/man/man1/tableslurp.1.gz ./usr/share/man/man1/tablechop.1.gz \
    ./usr/share/bash-completion/completions/tablesnap ./usr/share/zsh/vendor-completions/_tablechop \
    ./usr/share/fish/vendor_completions.d/tableslurp.fish \
    ./lib/systemd/system/tablesnap.service ./etc/default/tablesnap ./usr/share/doc/tablesnap/README.md \
    ./usr/share/tablesnap/prometheus/tablesnap.rules.yml; do
    grep -q " $f\$" <<<"$contents" || { echo "package.sh: $f missing from $deb" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# An operator's /etc/default/tablesnap survives upgrades.
dpkg-deb -e "$deb" "$tmp/DEBIAN"
grep -qx /etc/default/tablesnap "$tmp/DEBIAN/conffiles" \
    || { echo "package.sh: /etc/default/tablesnap is not a conffile" >&2; exit 1; }
# The binaries in it run.
dpkg-deb -x "$deb" "$tmp"
"$tmp/usr/bin/tablesnap" --version
"$tmp/usr/bin/tableslurp" --version
"$tmp/usr/bin/tablechop" --version
grep -q 'ExecStart=/usr/bin/tablesnap -B $DAEMON_OPTS' "$tmp/lib/systemd/system/tablesnap.service"
# Documentation= names only what the package installs: its man pages and its README.
docs=$(sed -n 's/^Documentation=//p' "$tmp/lib/systemd/system/tablesnap.service")
for d in $docs; do
    case $d in
    man:*) p="$tmp/usr/share/man/man1/${d#man:}" p="${p%(1)}.1.gz" ;;
    file://*) p="$tmp${d#file://}" ;;
    *) echo "package.sh: Documentation=$d is not installed by the package" >&2; exit 1 ;;
    esac
    [[ -f $p ]] || { echo "package.sh: Documentation=$d: $p missing" >&2; exit 1; }
done
echo "package.sh: $deb OK ($(du -h "$deb" | cut -f1))"
