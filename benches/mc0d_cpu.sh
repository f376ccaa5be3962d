#!/usr/bin/env bash
# mc0d's own CPU time for a fixed amount of work, for two or more mc0d
# binaries run alternately: the reliable before/after measure on a shared
# machine, where throughput ratios swing by ±30 %.
#
#   benches/mc0d_cpu.sh [--rounds N] [--allowlist] [--callgrind] [--json FILE] LABEL=MC0D LABEL=MC0D...
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
# with an allowlist does. With --callgrind each broker runs under valgrind's
# callgrind and the measure is the instructions it executed (millions, from
# its per-thread counts) for a tenth of the work: slow, but the same from
# run to run and blind to other load, so it needs no quiet machine. Needs
# target/release/mc0-bench and mc0-keygen (cargo build --release), ruby
# (to pick free ports, and for the figures) and, for --callgrind, valgrind.
set -u
cd "$(dirname "$0")/.."
rounds=5 allowlist= json= callgrind=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --allowlist) allowlist=1; shift ;;
        --json) json=$2; shift 2 ;;
        --callgrind) callgrind=1; shift ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { sed -n '2,23p' "$0"; exit 2; }
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
tick=$(getconf CLK_TCK) work=1 launch=() unit="CPU seconds"
if [ -n "$callgrind" ]; then
    # valgrind runs mc0d some 50 times slower
    work=10 unit="millions of instructions (callgrind)"
    launch=(valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$keys/callgrind.%p")
    bench_args+=(--timeout 120 --drain 10)
fi
scenarios=(
    "ack --clients 10 --round-trips $((5000 / work))"
    "fanout --subs 10 --messages $((20000 / work)) --size 1024"
    "fanout --subs 100 --messages $((2000 / work)) --size 1024"
    "request --nodes 10 --requests $((2000 / work))"
    "request --nodes 100 --requests $((200 / work))"
)
# seconds of CPU of /proc/$1 (the whole process) or of its main thread
cpu() { awk -v t="$tick" '{ printf "%.2f", ($14 + $15) / t }' "$1"; }
# millions of instructions in callgrind's dumps $@ (one per thread)
instructions() { awk '/^summary:/ { n += $2 } END { printf "%.2f", n / 1e6 }' "$@"; }
listening() {
    ruby -rsocket -e '600.times { begin; TCPSocket.new("127.0.0.1", ARGV[0]).close; exit; rescue SystemCallError
        sleep 0.1; end }; exit 1' "$1"
}
# the counters of broker $1 before (with "zero") or after the work, as "total main"
measure() {
    if [ -z "$callgrind" ]; then
        echo "$(cpu "/proc/$1/stat") $(cpu "/proc/$1/task/$1/stat")"
    elif [ "${2:-}" = zero ]; then
        callgrind_control -z "$1" >/dev/null 2>&1 && echo "0 0"
    else
        callgrind_control -d "$1" >/dev/null 2>&1
        echo "$(instructions "$keys/callgrind.$1".1-*) $(instructions "$keys/callgrind.$1.1-01")"
    fi
}
free_port() { ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]'; }
results=$keys/results
for round in $(seq 1 "$rounds"); do
    for spec in "$@"; do
        label=${spec%%=*} binary=${spec#*=}
        for scenario in "${scenarios[@]}"; do
            port=$(free_port)
            "${launch[@]}" "$binary" --bind 127.0.0.1 --port "$port" --curve-private-key "$keys/broker.private" \
                --log-level warn "${broker_args[@]}" 2>/dev/null &
            pid=$!
            if [ -n "$callgrind" ]; then listening "$port"; else sleep 0.5; fi
            read -r total0 main0 < <(measure "$pid" zero)
            # shellcheck disable=SC2086 # the scenario is several words
            $bench $scenario --broker "127.0.0.1:$port" --broker-key "$keys/broker.public" --no-raw \
                --label "$label" --json "${bench_args[@]}" 2>/dev/null >>"$keys/bench.jsonl" ||
                echo "# $label $scenario: mc0-bench failed" >&2
            read -r total1 main1 < <(measure "$pid")
            kill -TERM "$pid" && wait "$pid" 2>/dev/null
            line="$label|$scenario|$(awk -v a="$total1" -v b="$total0" -v c="$main1" -v d="$main0" \
                'BEGIN { printf "%.2f|%.2f", a - b, c - d }')|$(cut -d' ' -f1 /proc/loadavg)"
            echo "$line" | tee -a "$results"
        done
    done
done
echo "# medians over $rounds rounds: total / main thread / other threads (libzmq I/O), $unit; total's range"
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
# under valgrind they measure valgrind
[ -z "$callgrind" ] || exit 0
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
