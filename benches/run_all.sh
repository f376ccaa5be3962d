#!/usr/bin/env bash
# Every figure in docs/BENCHMARKS.md, in one run (about 25 minutes on 2 cores).
# usage: benches/run_all.sh [OUTPUT_FILE]     (default: bench-<date>.txt)
# Needs a release build (cargo build --release) and, for the last part, ruby
# with the ffi and ffi-rzmq gems (Debian: ruby-ffi ruby-ffi-rzmq).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-$(date -u +%Y%m%dT%H%M%SZ).txt}
B=target/release/mc0-bench
status=0

run() {
    echo "\$ $*" | tee -a "$out"
    echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
    "$@" 2>&1 | tee -a "$out"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || status=$rc
    echo | tee -a "$out"
}

{
    echo "# mc0 benchmarks, $(date -u +%FT%TZ)"
    echo "# $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(uname -sr)"
    echo "# $(git describe --always --dirty 2>/dev/null)"
    echo
} | tee "$out"

run $B ack --clients 10 --round-trips 1000 --repeat 7
run $B ack --clients 10 --round-trips 10000 --repeat 5
run $B fanout --subs 10,100 --size 1024 --repeat 7
# The same with mc0d's allowlist (--authorized-keys; SENDER stamp on both brokers).
run $B fanout --subs 10,100 --size 1024 --repeat 5 --key-seed $RANDOM
run $B request --nodes 10,100 --repeat 5
run $B request --nodes 1000 --requests 100 --repeat 5
# A reply burst larger than libzmq's queue to the client (10,000 messages).
run $B request --nodes 15000 --requests 3 --procs 3 --repeat 3 --timeout 120
run $B conns --clients 10000 --procs 2 --ttl 5000 --hold 10 --repeat 2
# Idle CPU with MCollective's default 30 s heartbeats, as clients grow.
run $B conns --clients 10000 --procs 2 --ttl 30000 --hold 60
run $B conns --clients 2500 --procs 2 --ttl 30000 --hold 60 --no-raw
run $B conns --clients 5000 --procs 2 --ttl 30000 --hold 60 --no-raw
# What CURVE costs: the same fan-out with the NULL mechanism.
run $B fanout --subs 10,100 --size 1024 --repeat 3 --no-curve
# Queues (issue 14) next to plain pub/sub; RabbitMQ's side is
# benches/queues_vs_rabbitmq.sh (needs rabbitmq-server and pika).
run $B queue --messages 100000 --repeat 3
# What one flushed write costs on this disk, the ways a journal could make
# it: the floor under a durable OK per PUT.
cc -O2 -o target/sync_paths benches/sync_paths.c && run target/sync_paths target/sync_paths.tmp 3
if ruby -e 'require "ffi"; require "ffi-rzmq"' 2>/dev/null; then
    run ruby benches/ruby_libmc0_vs_ffi_rzmq.rb --messages 100000 --round-trips 5000 --repeat 7
else
    echo "# skipped the Ruby comparison: no ruby with ffi and ffi-rzmq" | tee -a "$out"
fi
echo "# written to $out"
exit $status
