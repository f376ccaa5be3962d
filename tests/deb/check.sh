#!/usr/bin/env bash
# The Debian packages as an operator gets them (`make test-deb`, after
# `make deb`): lintian; install them with apt (dependencies from Debian);
# check the installed unit, user, modes, pkg-config, a C program, the Python
# module; run the end-to-end MCollective scenario against the installed
# files only (tests/e2e/lib.sh with E2E_INSTALLED=1: /usr/bin, Debian's
# plugin directory, libmc0 from the loader path); then purge and check that
# nothing is left but what policy keeps (the _mc0d user, removed here too
# when this test created it). Root only; it purges even when it fails, and
# refuses to run where mc0 packages are already installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEBS=("$ROOT"/target/debian/*.deb)
PACKAGES=(mc0d mc0-keygen libmc0-0 libmc0-dev mcollective-plugin-mc0 python3-mc0)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
# The multiarch libdir, as the loader names it (/lib is /usr/lib on merged-/usr).
LIBDIR_RE="(/usr)?/lib/$MULTIARCH"

log() { printf '%s [deb] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "FAIL [deb]: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "installs packages: run as root (CI does)"
[ -e "${DEBS[0]}" ] || die "no packages in target/debian: run 'make deb' first"
for p in "${PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok'; then
        die "$p is installed on this machine: this test would replace and purge it; remove it first"
    fi
done
user_existed=$(getent passwd _mc0d >/dev/null && echo yes || echo no)

# Every path the packages ship that is not on the machine yet (directories
# such as /usr/share/man are shared): none of them may outlive the purge.
shipped=$(for deb in "${DEBS[@]}"; do dpkg-deb --fsys-tarfile "$deb" | tar -t; done |
    sed 's|^\./|/|; s|/$||' | sort -u | while read -r f; do
        [ -z "$f" ] || [ -e "$f" ] || [ -L "$f" ] || echo "$f"
    done)

lintian_out=$(mktemp)
purge() {
    local rc=$?
    log "purging ${PACKAGES[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${PACKAGES[@]}" >/dev/null 2>&1 || dpkg --purge "${PACKAGES[@]}" >/dev/null 2>&1 || true
    [ "$user_existed" = yes ] || userdel _mc0d 2>/dev/null || true
    rm -f "$lintian_out"
    exit "$rc"
}
trap purge EXIT

# lintian takes a while on one core: let it run beside the install and e2e.
lintian --allow-root --fail-on error,warning "${DEBS[@]}" >"$lintian_out" 2>&1 &
lintian_pid=$!

log "installing ${DEBS[*]##*/}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${DEBS[@]}" >/dev/null

# mc0d: user, /etc/mc0 modes, the unit enabled (not started: no key yet).
getent passwd _mc0d >/dev/null || die "no system user _mc0d"
[ "$(stat -c %a /etc/mc0)" = 711 ] || die "/etc/mc0 is $(stat -c %a /etc/mc0), expected 711"
[ -L /etc/systemd/system/multi-user.target.wants/mc0d.service ] || die "mc0d.service is not enabled"
systemd-analyze verify /lib/systemd/system/mc0d.service || die "systemd-analyze verify mc0d.service failed"
grep -q '^ConditionPathExists=/etc/mc0/mc0d.private$' /lib/systemd/system/mc0d.service || die "the unit does not wait for the key"
grep -q '^StateDirectory=mc0d$' /lib/systemd/system/mc0d.service || die "the unit gives mc0d no writable /var/lib/mc0d for --queue-dir"
man -w mc0d >/dev/null && man -w mc0-keygen >/dev/null || die "man pages missing"
mc0-keygen /etc/mc0/mc0d >/dev/null 2>&1
[ "$(stat -c %a /etc/mc0/mc0d.private)" = 600 ] || die "mc0-keygen made a private key that is not 0600"

# libmc0-dev: pkg-config and a C program against the installed files only.
libs=$(pkg-config --libs mc0)
[ "$(echo $libs)" = "-lmc0" ] || die "pkg-config --libs mc0: [$libs], expected -lmc0"
[ "$(pkg-config --modversion mc0)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
    die "pkg-config --modversion mc0 differs from Cargo.toml's version"
tmp=$(mktemp -d)
cat >"$tmp/v.c" <<'C'
#include <mc0.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    char pub[41], sec[41];
    if (mc0_curve_keypair(pub, sec) != MC0_OK || strlen(pub) != 40) return 1;
    printf("%s\n", mc0_version());
    return 0;
}
C
(cd "$tmp" && cc v.c -o v $(pkg-config --cflags --libs mc0)) || die "cc against libmc0-dev failed"
env -u LD_LIBRARY_PATH "$tmp/v" >/dev/null || die "the C program built against libmc0-dev does not run"
# Not `ldd | grep -q`: grep -q leaves at the first match, and under pipefail
# ldd's SIGPIPE would fail the check.
linked=$(ldd "$tmp/v")
grep -q -E "libmc0.so.0 => $LIBDIR_RE/libmc0.so.0" <<<"$linked" || die "not linked to the installed libmc0: $linked"
rm -rf "$tmp"

# python3-mc0: from dist-packages, loading the installed libmc0.
# Debian's python3 (a pyenv or venv python3 first on PATH does not see dist-packages).
(cd / && env -u PYTHONPATH -u MC0_LIBRARY -u LD_LIBRARY_PATH /usr/bin/python3 -c '
import mc0
assert mc0.__file__ == "/usr/lib/python3/dist-packages/mc0.py", mc0.__file__
assert len(mc0.curve_keypair()[0]) == 40
assert mc0.topic_node("mcollective", "web1") == "mcollective nodes web1"
') || die "python3 -c 'import mc0' against the installed package failed"

# The MCollective scenario, installed files only.
log "end-to-end: mc0d from /usr/bin, mcollectived and mco with the packaged plugin"
(
    cd /
    export E2E_INSTALLED=1
    unset MC0_LIBRARY MC0_BIN_DIR LD_LIBRARY_PATH RUBYLIB
    source "$ROOT/tests/e2e/lib.sh"
    setup
    ! grep -l "$ROOT" "$WORK"/*.cfg || { echo "a config names the source tree" >&2; exit 1; }
    got=$(mco_ping_nodes "$WORK/client.cfg" -t 3)
    [ "$got" = "$(seq 1 "$SERVERS" | sed 's/^/node-/')" ] || { echo "mco ping answered by [$got]" >&2; exit 1; }
    grep -q -E "$LIBDIR_RE/libmc0.so.0" "/proc/${SERVER_PIDS[0]}/maps" ||
        { echo "mcollectived did not load /usr/lib/$MULTIARCH/libmc0.so.0" >&2; exit 1; }
    log "mco ping: $(echo $got)"
) || die "end-to-end scenario against the installed packages"

log "waiting for lintian"
if ! wait "$lintian_pid"; then
    cat "$lintian_out" >&2
    die "lintian reported errors or warnings"
fi
grep -v 'running with root privileges' "$lintian_out" || true

# Purge, then nothing of ours may be left.
trap - EXIT
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${PACKAGES[@]}" >/dev/null
left=$(for f in $shipped /etc/mc0 /etc/systemd/system/multi-user.target.wants/mc0d.service \
    /var/lib/systemd/deb-systemd-helper-enabled/mc0d.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/mc0d.service \
    /usr/lib/python3/dist-packages/__pycache__/mc0.cpython-3*.pyc; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || echo "$f"
done)
ldconfig -p | grep -q libmc0 && left="$left ldconfig cache: libmc0"
getent passwd _mc0d >/dev/null || die "purge removed the _mc0d user (policy keeps system users)"
[ "$user_existed" = yes ] || userdel _mc0d
rm -f "$lintian_out"
[ -z "$left" ] || die "left behind after purge: $left"
log "packages built, lintian clean, installed, e2e passed, purged clean"
