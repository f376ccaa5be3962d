#!/usr/bin/env bash
# `make install` into a scratch prefix, then use it as a C programmer and an
# MCollective operator would: pkg-config, the header, the SONAME, mc0-keygen,
# and the Ruby plugin loading the installed library.
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix=$(mktemp -d /tmp/mc0-install.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
make -s install PREFIX="$prefix" >/dev/null
rm -f mc0.pc

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LD_LIBRARY_PATH="$prefix/lib"
[ "$(pkg-config --modversion mc0)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]
cat > "$prefix/v.c" <<'C'
#include <mc0.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    char pub[41], sec[41];
    if (mc0_curve_keypair(pub, sec) != MC0_OK || strlen(pub) != 40) return 1;
    if (mc0_connector_new(NULL, NULL) != MC0_ERR_INVALID_ARGUMENT || !*mc0_last_error()) return 2;
    printf("%s\n", mc0_version());
    return 0;
}
C
cc -std=c99 -Wall -Werror "$prefix/v.c" -o "$prefix/v" $(pkg-config --cflags --libs mc0)
readelf -d "$prefix/v" | grep -q 'NEEDED.*\[libmc0.so.0\]'
"$prefix/v" >/dev/null
"$prefix/bin/mc0-keygen" "$prefix/node" 2>/dev/null
[ "$(stat -c %a "$prefix/node.private")" = 600 ]
"$prefix/bin/mc0d" --version >/dev/null
ruby -I"$prefix/share/mcollective/plugins" -e '
  require "mc0"
  path = Mc0.load(ARGV[0])
  abort "loaded #{path}" unless path.start_with?(ARGV[1])
  abort "bad topic" unless Mc0.topic_node("mcollective", "web1") == "mcollective nodes web1"
' "$prefix/lib/libmc0.so.0" "$prefix"
echo "install check passed ($prefix)"
