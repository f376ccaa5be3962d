#!/usr/bin/env bash
# Demo: mc0d + three MCollective servers using the zeromq plugin, then
# `mco ping` and `mco rpc rpcutil ping` through them. Cleans up on exit.
# Expects `cargo build --release` (make demo does it first).

source "$(dirname "$0")/lib.sh"

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "1. CURVE keys (mc0-keygen) for the broker, a client and three servers in $WORK/keys"
need "$MC0D" "$KEYGEN" "$LIBMC0"
make_keys node-1 node-2 node-3
authorize clients client
authorize nodes node-1 node-2 node-3
ls "$WORK/keys" | sed 's/^/   /'

start_broker_on_free_port
say "2. mc0d, the broker, on 127.0.0.1:$PORT (CURVE on; only the keys in $WORK/authorized/{nodes,clients} may connect, each as its identity)"
echo "   pid $BROKER_PID"

say "3. Three mcollectived servers (identities node-1..3), connector = zeromq, heartbeat ${HEARTBEAT}s"
client_cfg client
start_servers
for i in 1 2 3; do echo "   node-$i pid ${SERVER_PIDS[$((i - 1))]} ($WORK/node-$i.cfg)"; done
echo "   their plugin settings:"
grep '^plugin.zeromq' "$WORK/node-1.cfg" | sed 's/^/     /'

say "4. mco ping"
timeout 60 mco ping --config "$WORK/client.cfg" -t 3

say "5. mco rpc rpcutil ping"
progress=()
[ -t 1 ] || progress=(--np) # the progress bar is for terminals
timeout 60 mco rpc --config "$WORK/client.cfg" "${progress[@]}" rpcutil ping -t 5

say "6. What the broker saw (last lines of its log)"
grep -E 'PUT|subscribed|connected' "$WORK/mc0d.log" | tail -12 | sed 's/^/   /'

say "Done: stopping the servers and the broker."
