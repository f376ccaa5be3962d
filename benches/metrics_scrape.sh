#!/usr/bin/env bash
# What `mc0d --metrics` costs (README "Monitoring", docs/BENCHMARKS.md):
#
#   benches/metrics_scrape.sh [--clients N] [--rounds R] [--routing-only]
#
# 1. With N clients connected (default 10,000; mc0-bench conns holds them):
#    the time of a /metrics scrape and of a /connz page (limit=100, sorted by
#    msgs_in, each one after the last table is stale so the socket thread
#    builds a new one), and mc0d's CPU per request: the whole process and
#    its main (socket) thread, against an idle period of the same length.
#    (Skipped with --routing-only.)
# 2. Routing (mc0-bench fanout, 100 subscribers, 20,000 PUTs of 1 KiB) while
#    the N clients stay connected, with a scraper fetching /metrics and
#    /connz?limit=100 every second versus none, R times (default 6),
#    interleaved ABBA (odd rounds without first, even rounds with first) so
#    drift cancels: deliveries/s, and mc0d's CPU per delivery (main thread,
#    whole process), the steadier figure on a shared machine; medians.
#
# No CURVE (the handshakes of 10,000 clients would dominate the setup).
# Needs target/release/{mc0d,mc0-bench} (cargo build --release), curl, ruby.
set -u
cd "$(dirname "$0")/.."
clients=10000 rounds=6 requests=1
while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --routing-only) requests=; shift ;;
        *) sed -n '2,21p' "$0"; exit 2 ;;
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
$bench conns --broker "127.0.0.1:$port" --no-curve --no-raw --clients "$clients" --ttl 60000 --hold 900 \
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
if [ -n "$requests" ]; then
    size=$(curl -s "$metrics/metrics" | wc -c)
    measure "/metrics ($size bytes)" "$metrics/metrics" 0.2
    measure "/connz?sort=msgs_in&limit=100" "$metrics/connz?sort=msgs_in&limit=100" 1.05
    build=$(curl -s "$metrics/connz?limit=1" | ruby -rjson -e 'puts JSON.parse(STDIN.read)["build_ms"].round(2)')
    echo "# the last session table took the socket thread $build ms to build ($clients sessions)"
fi

scrape_loop() {
    while :; do
        curl -s -o /dev/null "$metrics/metrics"
        curl -s -o /dev/null "$metrics/connz?limit=100"
        sleep 1
    done
}
subs=100 puts=20000
# One fanout run: "deliveries/s main-thread-µs/delivery process-µs/delivery".
fanout() {
    local t0 m0 t1 m1 rate
    t0=$(cpu /proc/$pid/stat) m0=$(cpu /proc/$pid/task/$pid/stat)
    rate=$($bench fanout --subs $subs --messages $puts --size 1024 --broker "127.0.0.1:$port" --no-curve --no-raw \
        --json 2>/dev/null |
        ruby -rjson -e 'STDIN.each_line { |l| j = JSON.parse(l); puts j["deliveries_per_s"].round if j["deliveries_per_s"] }')
    t1=$(cpu /proc/$pid/stat) m1=$(cpu /proc/$pid/task/$pid/stat)
    awk -v r="$rate" -v a="$m0" -v b="$m1" -v c="$t0" -v d="$t1" -v n=$((subs * puts)) \
        'BEGIN { printf "%d %.3f %.3f\n", r, (b - a) / n * 1e6, (d - c) / n * 1e6 }'
}
scraped_fanout() {
    scrape_loop &
    scraper=$!
    fanout
    kill $scraper
    wait $scraper 2>/dev/null
    scraper=
}
plain=() scraped=()
echo "# load average before the routing rounds: $(cat /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then
        plain+=("$(fanout)")
        scraped+=("$(scraped_fanout)")
    else
        scraped+=("$(scraped_fanout)")
        plain+=("$(fanout)")
    fi
    echo "# round $r (deliveries/s, µs of mc0d CPU per delivery: main thread, process): without ${plain[-1]}; scraping ${scraped[-1]}"
done
echo "# load average after: $(cat /proc/loadavg)"
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
column() { printf '%s\n' "${@:2}" | cut -d' ' -f"$1" | median; }
for f in 1 2 3; do
    a=$(column $f "${plain[@]}") b=$(column $f "${scraped[@]}")
    what=$(echo "deliveries/s|µs mc0d main-thread CPU per delivery|µs mc0d process CPU per delivery" | cut -d'|' -f$f)
    awk -v a="$a" -v b="$b" -v r="$rounds" -v w="$what" -v c="$clients" \
        'BEGIN { printf "fanout %d subs x %d PUTs, %d clients held, medians of %d: %s %s without scraping, %s scraping every second (%+.1f %%)\n", '"$subs"', '"$puts"', c, r, w, a, b, (b - a) / a * 100 }'
done
# The same round's pair against each other (drift between rounds cancels).
for f in 1 2 3; do
    what=$(echo "deliveries/s|main-thread CPU per delivery|process CPU per delivery" | cut -d'|' -f$f)
    ratio=$(for r in $(seq 0 $((rounds - 1))); do
        echo "${plain[$r]} ${scraped[$r]}" | awk -v f=$f '{ print $(f + 3) / $f }'
    done | median)
    awk -v q="$ratio" -v w="$what" 'BEGIN { printf "median of the rounds'"'"' ratios, scraping / not: %s %+.1f %%\n", w, (q - 1) * 100 }'
done
