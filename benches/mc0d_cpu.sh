#!/usr/bin/env bash
# mc0d's own CPU time for a fixed amount of work, for two or more mc0d
# binaries run alternately: the reliable before/after measure on a shared
# machine, where throughput ratios swing by ±30 %.
#
#   benches/mc0d_cpu.sh [--rounds N] [--allowlist] [--json FILE] LABEL=MC0D LABEL=MC0D...
#   e.g. benches/mc0d_cpu.sh main=/tmp/mc0-main/target/release/mc0d new=target/release/mc0d
#
# Each run starts a fresh broker in open mode (CURVE, no allowlist) on a free
# loopback port, drives one mc0-bench scenario against it (--broker ...
# --no-raw), and reads utime+stime of the whole process and of its main
# thread from /proc before and after. Prints one line per run and the
# medians; then, from the same runs, mc0-bench's own figures (throughput,
# latency) as medians with their range and the ratio to the first label's
# (its --json lines are kept in FILE with --json FILE). With --allowlist
# every broker runs with --authorized-keys listing each load-generator
# client under its identity (mc0-bench allowlist, --key-seed), as a site
# with an allowlist does. Needs target/release/mc0-bench and mc0-keygen
# (cargo build --release) and ruby (to pick free ports, and for the
# figures).
set -u
cd "$(dirname "$0")/.."
rounds=5 allowlist= json=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --allowlist) allowlist=1; shift ;;
        --json) json=$2; shift 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { sed -n '2,22p' "$0"; exit 2; }
bench=target/release/mc0-bench
keys=$(mktemp -d "${TMPDIR:-/tmp}/mc0d-cpu.XXXXXX")
trap 'rm -rf "$keys"' EXIT
target/release/mc0-keygen "$keys/broker" >/dev/null
broker_args=() bench_args=()
if [ -n "$allowlist" ]; then
    seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
    $bench allowlist --key-seed "$seed" --clients 100 >"$keys/authorized"
    broker_args=(--authorized-keys "$keys/authorized")
    bench_args=(--key-seed "$seed")
fi
tick=$(getconf CLK_TCK)
scenarios=(
    "ack --clients 10 --round-trips 5000"
    "fanout --subs 10 --messages 20000 --size 1024"
    "fanout --subs 100 --messages 2000 --size 1024"
    "request --nodes 10 --requests 2000"
    "request --nodes 100 --requests 200"
)
# seconds of CPU of /proc/$1 (the whole process) or of its main thread
cpu() { awk -v t="$tick" '{ printf "%.2f", ($14 + $15) / t }' "$1"; }
free_port() { ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]'; }
results=$keys/results
for round in $(seq 1 "$rounds"); do
    for spec in "$@"; do
        label=${spec%%=*} binary=${spec#*=}
        for scenario in "${scenarios[@]}"; do
            port=$(free_port)
            "$binary" --bind 127.0.0.1 --port "$port" --curve-private-key "$keys/broker.private" \
                --log-level warn "${broker_args[@]}" 2>/dev/null &
            pid=$!
            sleep 0.5
            total0=$(cpu /proc/$pid/stat) main0=$(cpu /proc/$pid/task/$pid/stat)
            # shellcheck disable=SC2086 # the scenario is several words
            $bench $scenario --broker "127.0.0.1:$port" --broker-key "$keys/broker.public" --no-raw \
                --label "$label" --json "${bench_args[@]}" 2>/dev/null >>"$keys/bench.jsonl" ||
                echo "# $label $scenario: mc0-bench failed" >&2
            total1=$(cpu /proc/$pid/stat) main1=$(cpu /proc/$pid/task/$pid/stat)
            kill -TERM "$pid" && wait "$pid" 2>/dev/null
            line="$label|$scenario|$(awk -v a="$total1" -v b="$total0" -v c="$main1" -v d="$main0" \
                'BEGIN { printf "%.2f|%.2f", a - b, c - d }')|$(cut -d' ' -f1 /proc/loadavg)"
            echo "$line" | tee -a "$results"
        done
    done
done
echo "# medians over $rounds rounds: total / main thread / other threads (libzmq I/O), CPU seconds; total's range"
awk -F'|' '{ key = $2 "|" $1; n[key]++; t[key, n[key]] = $3; m[key, n[key]] = $4 }
    function median(a, k, c,   i, j, v, tmp) {
        for (i = 1; i <= c; i++) v[i] = a[k, i] + 0
        for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { tmp = v[i]; v[i] = v[j]; v[j] = tmp }
        lo = v[1]; hi = v[c]
        return c % 2 ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2
    }
    END { for (k in n) { tm = median(t, k, n[k]); range = sprintf("%.2f-%.2f", lo, hi); mm = median(m, k, n[k])
        printf "%-48s %.2f / %.2f / %.2f  (%s)\n", k, tm, mm, tm - mm, range } }' "$results" | sort
[ -z "$json" ] || cp "$keys/bench.jsonl" "$json"
echo "# mc0-bench's figures of the same runs: median (min-max) per label, ratio of medians to the first label's"
ruby -rjson -e '
    runs, metrics = Hash.new { |h, k| h[k] = [] }, {}
    File.foreach(ARGV.shift) do |line|
        r = JSON.parse(line) rescue next
        key = "#{r["scenario"]} #{r["case"]}"
        if r["summary"] then metrics[key] = r["summary"].keys else runs[key] << r end
    end
    median = ->(v) { v = v.sort; (v[(v.size - 1) / 2] + v[v.size / 2]) / 2.0 }
    fmt = ->(x) { x >= 100 ? x.round.to_s : format("%.2f", x) }
    metrics.each do |key, names|
        names.each do |m|
            first = nil
            cols = ARGV.map do |label|
                v = runs[key].select { |r| r["target"] == label }.map { |r| r[m] }.compact
                next "#{label} -" if v.empty?
                med = median.(v)
                first ||= med
                "#{label} #{fmt.(med)} (#{fmt.(v.min)}-#{fmt.(v.max)}) #{format("%.3f", med / first)}x"
            end
            puts "#{key} | #{m} | #{cols.join(" | ")}"
        end
    end' "$keys/bench.jsonl" "${@%%=*}"
