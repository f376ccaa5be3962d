#!/usr/bin/env bash
# RabbitMQ's three durable shapes (benches/rabbitmq_durable.py) against a
# private rabbitmq-server: loopback only, its own node name, port and data
# dir under /tmp, stopped (with the epmd it started) on exit. mc0d's side of
# the comparison is `mc0-bench queue`.
#
#   benches/queues_vs_rabbitmq.sh [--port 5673] [--alternate N] [rabbitmq_durable.py options] [-- mc0-bench queue options]
#
# --alternate N runs RabbitMQ's shapes and `mc0-bench queue` (the one next
# to this repository's target/release, or $MC0_BENCH) in turn, N times each,
# while the same rabbitmq-server stays up: the disk's sync latency wanders
# over minutes, so only figures taken side by side compare.
#
# Needs Debian's rabbitmq-server (not in DEB_PACKAGES: a benchmark only)
# and pika (`python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pika`;
# set PYTHON=/tmp/venv/bin/python).
set -euo pipefail

port=5673
alternate=0
while [[ ${1:-} == --port || ${1:-} == --alternate ]]; do
  if [[ $1 == --port ]]; then port=$2; else alternate=$2; fi
  shift 2
done
rabbit_args=()
while [[ $# -gt 0 && $1 != -- ]]; do rabbit_args+=("$1"); shift; done
mc0_args=("${@:2}")
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/mc0-rabbitmq.XXXXXX)
node="mc0bench$port@localhost"
epmd_before=$(pgrep -x epmd || true)

export HOME=$dir RABBITMQ_NODENAME=$node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port \
  RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
  RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_PID_FILE=$dir/pid ERL_EPMD_ADDRESS=127.0.0.1
echo '[].' > "$dir/enabled_plugins"
ctl=/usr/lib/rabbitmq/bin/rabbitmqctl

stop() {
  if [[ -n ${beam:-} ]]; then kill -CONT "$beam" 2>/dev/null || true; fi
  "$ctl" -n "$node" stop >/dev/null 2>&1 || true
  wait "$server" 2>/dev/null || true
  if [[ -z $epmd_before ]]; then
    for pid in $(pgrep -x epmd || true); do
      kill "$pid" 2>/dev/null && timeout 5 tail --pid="$pid" -f /dev/null || true
    done
  fi
  rm -rf "$dir"
}

/usr/lib/rabbitmq/bin/rabbitmq-server > "$dir/server.out" 2>&1 &
server=$!
trap stop EXIT
"$ctl" -n "$node" wait "$dir/pid" --timeout 120 >/dev/null
beam=$(pgrep -f "beam.smp.*$dir" | head -1)
echo "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server) on 127.0.0.1:$port, data in $dir"
cat /proc/loadavg
if ((alternate == 0)); then
  "$python" "$here/rabbitmq_durable.py" --port "$port" "${rabbit_args[@]}"
else
  mc0_bench=${MC0_BENCH:-$here/../target/release/mc0-bench}
  for ((round = 1; round <= alternate; round++)); do
    echo "round $round: rabbitmq, $(cut -d' ' -f1-3 /proc/loadavg)"
    "$python" "$here/rabbitmq_durable.py" --port "$port" "${rabbit_args[@]}"
    echo "round $round: mc0d, $(cut -d' ' -f1-3 /proc/loadavg)"
    # Stopped, RabbitMQ's Erlang schedulers (which spin a while when idle)
    # take nothing from mc0d's run.
    kill -STOP "$beam"
    "$mc0_bench" queue "${mc0_args[@]}"
    kill -CONT "$beam"
  done | tee "$dir/rounds.log"
  # Each round's mc0d --queue-dir figure over RabbitMQ's, shape by shape:
  # RabbitMQ publishes with no consumer, as mc0-bench's keep-* shapes do.
  # The +consumer figures are mc0d's end-to-end shapes (a consumer takes and
  # acknowledges each message meanwhile, and the clock stops at the last
  # one consumed) over the same RabbitMQ figure: more work on mc0d's side.
  awk '
    function rate(line) { sub(/ msg\/s.*/, "", line); sub(/.* /, "", line); return line }
    function report() {
      if (round == "") return
      printf "paired, round %s:", round
      for (i = 1; i <= 6; i++) {
        s = shapes[i]
        r = s; sub(/\+consumer|:thread/, "", r)
        if (r in rabbit && s in mc0d) {
          ratio = mc0d[s] / rabbit[r]
          printf "  %s %s/%s = %.2fx", s, mc0d[s], rabbit[r], ratio
          ratios[s, ++count[s]] = ratio
        }
      }
      print ""
      delete rabbit; delete mc0d
    }
    # The median of shape s'"'"'s ratios over the rounds (insertion sort: mawk
    # has no asort).
    function median(s,    n, i, j, v, sorted) {
      n = count[s]
      for (i = 1; i <= n; i++) {
        v = ratios[s, i]
        for (j = i - 1; j >= 1 && sorted[j] > v; j--) sorted[j + 1] = sorted[j]
        sorted[j + 1] = v
      }
      return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
    }
    BEGIN { split("confirm confirm:thread pipelined consume confirm+consumer pipelined+consumer", shapes, " ") }
    /^round [0-9]+: rabbitmq/ { report(); round = $2; sub(/:/, "", round) }
    /MEASURE rabbitmq confirm-per-message/ { rabbit["confirm"] = rate($0) }
    /MEASURE rabbitmq pipelined/ { rabbit["pipelined"] = rate($0) }
    /MEASURE rabbitmq consume-with-acks/ { rabbit["consume"] = rate($0) }
    /^  disk-thread .* kept, 1 in flight/ { mc0d["confirm:thread"] = rate($0); next }
    /^  disk .* kept, 1 in flight/ { mc0d["confirm"] = rate($0); next }
    /^  disk .* kept, [0-9]+ in flight/ { mc0d["pipelined"] = rate($0); next }
    /^  disk .* 1 in flight/ { mc0d["confirm+consumer"] = rate($0); next }
    /^  disk .* in flight/ { mc0d["pipelined+consumer"] = rate($0) }
    /^  disk .* consumed with an ACK/ { mc0d["consume"] = rate($0) }
    END {
      report()
      printf "median over %d rounds:", count["confirm"]
      for (i = 1; i <= 6; i++) if (count[shapes[i]]) printf "  %s %.2fx", shapes[i], median(shapes[i])
      print ""
    }
  ' "$dir/rounds.log"
fi
cat /proc/loadavg
grep -E 'VmRSS|VmHWM' "/proc/$beam/status" | tr -s ' \t' ' ' | sed 's/^/rabbitmq beam.smp /'
