#!/usr/bin/env bash
# The Debian package's CI step (packaging/README.md): build the .deb with cargo-deb, verify the
# systemd unit, install the package with dpkg, check the installed configuration, then remove and
# purge it and make sure nothing is left behind. Needs root or sudo (dpkg; systemd-analyze comes
# from Debian's systemd package, installed when missing) and a machine where no botbridge package
# is installed. Exits non-zero on the first failure, purging the package if this run installed it.
#
#   packaging/ci.sh                 # cargo build --release --locked first (a no-op when up to date)
#   packaging/ci.sh --no-build      # package target/release/botbridge as it is
#   packaging/ci.sh --binary PATH   # package another build of it, e.g. target/debug/botbridge
#                                   # (what `cargo test` built): tests the packaging without
#                                   # the release build's minutes
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

cd "$(dirname "$0")/.."
started=$SECONDS
build=1
binary=""
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) build=0 ;;
        --binary) [ $# -ge 2 ] || { echo "$0: --binary needs a path" >&2; exit 64; }
            build=0; binary=$(realpath "$2"); shift ;;
        *) echo "usage: $0 [--no-build | --binary PATH]" >&2; exit 64 ;;
    esac
    shift
done
if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { echo "packaging/ci.sh: FAIL: $*" >&2; exit 1; }
verify_unit() { # systemd-analyze verify exits 0 on an unknown key or a bad value: fail on any output
    local out
    out=$(systemd-analyze verify "$1" 2>&1) || fail "systemd-analyze verify $1: $out"
    [ -z "$out" ] || fail "systemd-analyze verify $1: $out"
    echo "  systemd-analyze verify $1: ok"
}
status() { dpkg-query -W -f='${db:Status-Status}' botbridge 2>/dev/null || true; }
mode_is() { # mode_is MODE OWNER:GROUP PATH
    local got
    got=$(stat -c '%a %U:%G' "$3") || fail "$3 is missing"
    [ "$got" = "$1 $2" ] || fail "$3 is $got, expected $1 $2"
    echo "  $1 $2 $3"
}

installed=0
scratch=$(mktemp -d)
cleanup() {
    rm -rf "$scratch"
    if [ "$installed" = 1 ] && [ "$(status)" != "not-installed" ] && [ -n "$(status)" ]; then
        echo "packaging/ci.sh: purging the botbridge package this run installed" >&2
        "${SUDO[@]}" dpkg -P botbridge >/dev/null || true
    fi
}
trap cleanup EXIT

case "$(status)" in
    "" | not-installed) ;;
    *) fail "a botbridge package is already on this machine ($(status)); this test installs and purges its own" ;;
esac
if ! command -v systemd-analyze >/dev/null; then
    step "apt-get install systemd (for systemd-analyze)"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
fi

out_dir="${CARGO_TARGET_DIR:-target}/debian"
if [ -n "$binary" ]; then
    # cargo-deb takes the binary from <target dir>/release/: give it a target dir of its own.
    [ -x "$binary" ] || fail "$binary is missing"
    mkdir -p "$scratch/target/release"
    cp "$binary" "$scratch/target/release/botbridge"
    export CARGO_TARGET_DIR="$scratch/target"
fi
bin="${CARGO_TARGET_DIR:-target}/release/botbridge"
if [ "$build" = 1 ]; then
    step "cargo build --release --locked"
    cargo build --release --locked
fi
[ -x "$bin" ] || fail "$bin is missing: build it, or run without --no-build"

step "cargo-deb $CARGO_DEB_VERSION"
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
cargo deb --version

step "cargo deb --no-build"
mkdir -p "$out_dir"
deb=$(cargo deb --no-build --output "$out_dir/" | tail -n 1)
[ -f "$deb" ] || fail "cargo deb made no package ($deb)"
echo "$deb ($(stat -c %s "$deb") bytes)"
dpkg-deb -I "$deb"
dpkg-deb -c "$deb" | tee "$scratch/contents"
for path in ./usr/bin/botbridge ./etc/botbridge/proxy.toml ./usr/lib/systemd/system/botbridge.service \
    ./usr/share/botbridge/dashboards/botbridge.json \
    ./usr/share/botbridge/dashboards/prometheus/botbridge-rules.yml \
    ./usr/share/botbridge/dashboards/prometheus/prometheus.yml \
    ./usr/share/botbridge/dashboards/provisioning/dashboards/botbridge.yaml \
    ./usr/share/botbridge/dashboards/provisioning/datasources/botbridge.yaml; do
    awk '{print $6}' "$scratch/contents" | grep -qx "$path" || fail "the package lacks $path"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/botbridge/proxy.toml \
    || fail "/etc/botbridge/proxy.toml is not a conffile"
if dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst ./postrm ./prerm | grep -n 'DEBHELPER'; then
    fail "a maintainer script still holds the #DEBHELPER# token"
fi

step "systemd-analyze verify packaging/botbridge.service (ExecStart at $bin)"
# verify wants every command of the unit to exist: point it at the binary just built.
sed "s#/usr/bin/botbridge#$(realpath "$bin")#g" packaging/botbridge.service >"$scratch/botbridge.service"
verify_unit "$scratch/botbridge.service"

step "dpkg -i"
"${SUDO[@]}" dpkg -i "$deb"
installed=1
[ "$(status)" = installed ] || fail "dpkg says botbridge is $(status)"

step "the installed package"
/usr/bin/botbridge --version
"${SUDO[@]}" /usr/bin/botbridge check --config /etc/botbridge/proxy.toml
verify_unit /usr/lib/systemd/system/botbridge.service
cmp packaging/botbridge.service /usr/lib/systemd/system/botbridge.service
cmp packaging/proxy.toml /etc/botbridge/proxy.toml
mode_is 755 root:root /usr/bin/botbridge
mode_is 755 root:root /etc/botbridge
mode_is 644 root:root /etc/botbridge/proxy.toml
mode_is 700 root:root /etc/botbridge/secrets
mode_is 644 root:root /usr/lib/systemd/system/botbridge.service
mode_is 644 root:root /usr/share/botbridge/dashboards/prometheus/botbridge-rules.yml
verify=$("${SUDO[@]}" dpkg -V botbridge) || fail "dpkg -V botbridge failed"
[ -z "$verify" ] || fail "dpkg -V botbridge: $verify"
[ ! -e /etc/systemd/system/multi-user.target.wants/botbridge.service ] \
    || fail "the unit was enabled on install"
dpkg -L botbridge | tee "$scratch/files"

step "dpkg -r botbridge"
"${SUDO[@]}" dpkg -r botbridge
[ "$(status)" = config-files ] || fail "after dpkg -r, dpkg says botbridge is $(status)"
[ ! -e /usr/bin/botbridge ] || fail "/usr/bin/botbridge is still there after dpkg -r"
[ ! -e /usr/lib/systemd/system/botbridge.service ] || fail "the unit is still there after dpkg -r"
[ -f /etc/botbridge/proxy.toml ] || fail "dpkg -r removed the conffile"
echo "  binary and unit gone, /etc/botbridge/proxy.toml kept"

step "dpkg -P botbridge"
"${SUDO[@]}" dpkg -P botbridge
case "$(status)" in "" | not-installed) ;; *) fail "after dpkg -P, dpkg says botbridge is $(status)" ;; esac
installed=0
while read -r path; do
    case $path in
        /etc/botbridge* | /usr/share/botbridge* | /usr/share/doc/botbridge* | /usr/bin/botbridge | \
        /usr/lib/systemd/system/botbridge.service)
            [ ! -e "$path" ] || fail "$path is still there after dpkg -P" ;;
        *) [ -d "$path" ] || [ ! -e "$path" ] || fail "$path is still there after dpkg -P" ;;
    esac
done <"$scratch/files"
for path in /etc/botbridge /var/lib/botbridge /var/lib/private/botbridge \
    /etc/systemd/system/botbridge.service \
    /var/lib/systemd/deb-systemd-helper-enabled/botbridge.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-masked/botbridge.service; do
    [ ! -e "$path" ] && [ ! -L "$path" ] || fail "$path is still there after dpkg -P"
done
echo "  nothing left: $(wc -l <"$scratch/files") package paths, /etc/botbridge and the state directory gone"

printf '\npackaging/ci.sh: ok (%ds)\n' $((SECONDS - started))
