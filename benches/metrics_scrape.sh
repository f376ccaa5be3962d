#!/usr/bin/env bash
# What `mc0d --metrics` costs (README "Monitoring", docs/BENCHMARKS.md):
#
#   benches/metrics_scrape.sh [--clients N] [--rounds R]
#
# 1. With N clients connected (default 10,000; mc0-bench conns holds them):
#    the time of a /metrics scrape and of a /connz page (limit=100, sorted by
#    msgs_in, each one after the last table is stale so the socket thread
#    builds a new one), and mc0d's CPU per request: the whole process and
#    its main (socket) thread, against an idle period of the same length.
# 2. Routing throughput (mc0-bench fanout, 100 subscribers, 20,000 PUTs of
#    1 KiB) with a scraper fetching /metrics and /connz every second versus
#    none, alternately R times (default 3) in the same run; medians.
#
# No CURVE (the handshakes of 10,000 clients would dominate the setup).
# Needs target/release/{mc0d,mc0-bench} (cargo build --release), curl, ruby.
set -u
cd "$(dirname "$0")/.."
clients=10000 rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done
mc0d=target/release/mc0d bench=target/release/mc0-bench
tick=$(getconf CLK_TCK)
free_port() { ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]'; }
cpu() { awk -v t="$tick" '{ printf "%.4f", ($14 + $15) / t }' "$1"; }
ulimit -n "$(ulimit -Hn)"
port=$(free_port) mport=$(free_port)
"$mc0d" --no-curve --bind 127.0.0.1 --port "$port" --metrics "127.0.0.1:$mport" --log-level warn 2>/dev/null &
pid=$!
trap 'kill $pid $holder 2>/dev/null; kill $scraper 2>/dev/null; wait 2>/dev/null' EXIT
holder= scraper=
sleep 0.5
metrics=http://127.0.0.1:$mport
connections() { curl -s "$metrics/metrics" | awk '$1 == "mc0d_connections" { print $2 + 0 }'; }

echo "# $clients clients connecting..."
$bench conns --broker "127.0.0.1:$port" --no-curve --no-raw --clients "$clients" --ttl 60000 --hold 120 \
    >/dev/null 2>&1 &
holder=$!
for _ in $(seq 1 240); do
    [ "$(connections)" = "$clients" ] && break
    sleep 0.5
done
[ "$(connections)" = "$clients" ] || { echo "only $(connections) of $clients clients connected"; exit 1; }

# measure NAME URL PAUSE: 20 requests PAUSE s apart; median and max time,
# and CPU per request (process, main thread) above an idle period as long.
measure() {
    local name=$1 url=$2 pause=$3 n=20 times=() t0 m0 t1 m1 i0 im0 i1 im1
    i0=$(cpu /proc/$pid/stat) im0=$(cpu /proc/$pid/task/$pid/stat)
    sleep "$(awk -v n=$n -v p="$pause" 'BEGIN { print n * p }')"
    i1=$(cpu /proc/$pid/stat) im1=$(cpu /proc/$pid/task/$pid/stat)
    t0=$(cpu /proc/$pid/stat) m0=$(cpu /proc/$pid/task/$pid/stat)
    for _ in $(seq 1 $n); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' "$url")")
        sleep "$pause"
    done
    t1=$(cpu /proc/$pid/stat) m1=$(cpu /proc/$pid/task/$pid/stat)
    printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" -v n=$n \
        -v cpu="$(awk -v a="$t0" -v b="$t1" -v c="$i0" -v d="$i1" 'BEGIN { print ((b - a) - (d - c)) * 1000 }')" \
        -v main="$(awk -v a="$m0" -v b="$m1" -v c="$im0" -v d="$im1" 'BEGIN { print ((b - a) - (d - c)) * 1000 }')" \
        '{ v[NR] = $1 } END { printf "%-40s median %.1f ms, max %.1f ms; mc0d CPU per request %.2f ms (socket thread %.2f ms)\n",
            name, v[int((n + 1) / 2)] * 1000, v[n] * 1000, cpu / n, main / n }'
}
size=$(curl -s "$metrics/metrics" | wc -c)
measure "/metrics ($size bytes)" "$metrics/metrics" 0.2
measure "/connz?sort=msgs_in&limit=100" "$metrics/connz?sort=msgs_in&limit=100" 1.05
build=$(curl -s "$metrics/connz?limit=1" | ruby -rjson -e 'puts JSON.parse(STDIN.read)["build_ms"].round(2)')
echo "# the last session table took the socket thread $build ms to build ($clients sessions)"
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
holder=

scrape_loop() {
    while :; do
        curl -s -o /dev/null "$metrics/metrics"
        curl -s -o /dev/null "$metrics/connz?limit=100"
        sleep 1
    done
}
fanout() {
    $bench fanout --subs 100 --messages 20000 --size 1024 --broker "127.0.0.1:$port" --no-curve --no-raw --json \
        2>/dev/null | ruby -rjson -e 'STDIN.each_line { |l| j = JSON.parse(l); puts j["deliveries_per_s"].round if j["deliveries_per_s"] }'
}
plain=() scraped=()
for r in $(seq 1 "$rounds"); do
    plain+=("$(fanout)")
    scrape_loop &
    scraper=$!
    scraped+=("$(fanout)")
    kill $scraper
    wait $scraper 2>/dev/null
    scraper=
    echo "# round $r: ${plain[-1]} deliveries/s without scraping, ${scraped[-1]} while scraping every second"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
a=$(median "${plain[@]}") b=$(median "${scraped[@]}")
awk -v a="$a" -v b="$b" -v r="$rounds" \
    'BEGIN { printf "fanout 100 subs x 20000 PUTs (medians of %d): %d/s without scraping, %d/s scraping every second (%+.1f %%)\n", r, a, b, (b - a) / a * 100 }'
