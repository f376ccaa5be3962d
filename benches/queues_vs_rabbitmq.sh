#!/usr/bin/env bash
# RabbitMQ's three durable shapes (benches/rabbitmq_durable.py) against a
# private rabbitmq-server: loopback only, its own node name, port and data
# dir under /tmp, stopped (with the epmd it started) on exit. mc0d's side of
# the comparison is `mc0-bench queue`.
#
#   benches/queues_vs_rabbitmq.sh [--port 5673] [rabbitmq_durable.py options]
#
# Needs Debian's rabbitmq-server (not in DEB_PACKAGES: a benchmark only)
# and pika (`python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pika`;
# set PYTHON=/tmp/venv/bin/python).
set -euo pipefail

port=5673
if [[ ${1:-} == --port ]]; then port=$2; shift 2; fi
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
echo "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server) on 127.0.0.1:$port, data in $dir"
cat /proc/loadavg
"$python" "$here/rabbitmq_durable.py" --port "$port" "$@"
cat /proc/loadavg
beam=$(pgrep -f "beam.smp.*$dir" | head -1)
grep -E 'VmRSS|VmHWM' "/proc/$beam/status" | tr -s ' \t' ' ' | sed 's/^/rabbitmq beam.smp /'
