#!/usr/bin/env bash
# End-to-end test of a cluster of brokers: three nats-server routed to each
# other, three mc0d --cluster (one per NATS server), three real mcollectived
# (node-N on broker N) and mco clients on broker 1: `mco ping`, `mco rpc` and
# `-I` reach every node across the brokers. CURVE, allowlist and PSK as in
# run.sh, all on 127.0.0.1.
#
#   cargo build --release && tests/e2e/cluster.sh      (KEEP_WORK=1 keeps the scratch dir)

source "$(dirname "$0")/lib.sh"

NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
[ -x "$NATS_SERVER" ] || { echo "skipped: $NATS_SERVER not installed (apt-get install nats-server)"; exit 0; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 2; }

FAILED=()
CURRENT=
NATS_PIDS=()
BROKER_PIDS=()
BROKER_PORTS=()
NATS_HTTP=()

fail() {
    echo "FAIL [$CURRENT]: $*" >&2
    FAILED+=("$CURRENT: $*")
}

expect_eq() {
    local what=$1 want=$2 got=$3
    [ "$want" = "$got" ] || fail "$what: expected [$(echo $want)] got [$(echo $got)]"
}

# The node's subscriptions are on its own broker's log.
server_ready() {
    grep -q 'Waiting for a message from the mc0 broker' "$WORK/$1.log" 2>/dev/null &&
        cat "$WORK"/mc0d-*.log | grep -q "client \"$1 [^\"]*\" subscribed to"
}

routes_up() {
    local http
    for http in "${NATS_HTTP[@]}"; do
        curl -sf "http://127.0.0.1:$http/routez" | grep -q '"num_routes": 2' || return 1
    done
}

start_nats() {
    local i routes ports=() port http route
    for i in 1 2 3; do ports+=("$(free_port) $(free_port) $(free_port)"); done
    for i in 1 2 3; do
        read -r port http route <<<"${ports[$((i - 1))]}"
        routes=$(for p in "${ports[@]}"; do
            set -- $p
            [ "$3" = "$route" ] || printf 'nats-route://127.0.0.1:%s, ' "$3"
        done)
        cat >"$WORK/nats-$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$port
http: 127.0.0.1:$http
cluster {
  name: mc0e2e
  listen: 127.0.0.1:$route
  routes: [ ${routes%, } ]
}
CONF
        "$NATS_SERVER" -c "$WORK/nats-$i.conf" >>"$WORK/nats-$i.log" 2>&1 &
        NATS_PIDS+=($!)
        NATS_HTTP+=("$http")
        NATS_URLS+=("nats://127.0.0.1:$port")
    done
    wait_for 20 "the NATS routes" routes_up
}

start_brokers() {
    local i port
    for i in 1 2 3; do
        port=$(free_port)
        "$MC0D" --bind 127.0.0.1 --port "$port" --curve-private-key "$WORK/keys/broker.private" \
            --authorized-keys "$WORK/authorized" --node-publish-agents registration \
            --cluster "${NATS_URLS[$((i - 1))]}" --log-level debug >>"$WORK/mc0d-$i.log" 2>&1 &
        BROKER_PIDS+=($!)
        BROKER_PORTS+=("$port")
    done
    for i in 1 2 3; do
        wait_for 20 "mc0d $i connected to NATS" grep -q 'connected to NATS server' "$WORK/mc0d-$i.log" || {
            tail -20 "$WORK/mc0d-$i.log" >&2
            return 1
        }
    done
}

on_exit() {
    local rc=$? pid f
    if [ "$rc" -ne 0 ] || [ "${#FAILED[@]}" -ne 0 ]; then
        for f in "$WORK"/mc0d-*.log "$WORK"/nats-*.log "$WORK"/node-*.log "$WORK"/client.log "$WORK"/mco.err; do
            [ -s "$f" ] || continue
            echo "---- tail $f" >&2
            tail -25 "$f" >&2
        done
    fi
    for pid in "${SERVER_PIDS[@]}" "${BROKER_PIDS[@]}" "${NATS_PIDS[@]}"; do stop_pid "$pid"; done
    SERVER_PIDS=()
    cleanup
}
trap on_exit EXIT

all_nodes() { printf 'node-1\nnode-2\nnode-3\n'; }

rpc_senders() {
    timeout 90 mco rpc --config "$WORK/client.cfg" --json --np "$@" 2>>"$WORK/mco.err" |
        ruby -rjson -e 'JSON.parse(STDIN.read).each { |r| puts "#{r["sender"]} #{r["statuscode"]}" }' | sort
}

every_node_answers() { [ "$(mco_ping_nodes "$WORK/client.cfg" -t 2)" = "$(all_nodes)" ]; }

log "scratch dir $WORK"
need "$MC0D" "$KEYGEN" "$LIBMC0"
NATS_URLS=()
make_keys node-1 node-2 node-3
authorize clients client
authorize nodes node-1 node-2 node-3
mkdir -p "$WORK/authorized"
start_nats
start_brokers
for i in 1 2 3; do
    PORT=${BROKER_PORTS[$((i - 1))]}
    start_server "node-$i"
done
for i in 1 2 3; do wait_server_ready "node-$i"; done
PORT=${BROKER_PORTS[0]}
client_cfg client
log "3 nats-server, 3 mc0d (ports ${BROKER_PORTS[*]}), node-N on broker N, client on broker 1"
# NATS spreads the nodes' interest between its servers on its own time: the
# first full answer says it has.
wait_for 30 "every node to answer mco ping across the brokers" every_node_answers

set +e
CURRENT=ping
log "== $CURRENT"
expect_eq "mco ping across brokers" "$(all_nodes)" "$(mco_ping_nodes "$WORK/client.cfg" -t 3)"
CURRENT=rpc
log "== $CURRENT"
expect_eq "mco rpc rpcutil ping across brokers" "$(all_nodes | sed 's/$/ 0/')" "$(rpc_senders rpcutil ping -t 5)"
CURRENT=directed
log "== $CURRENT"
expect_eq "mco rpc rpcutil inventory -I node-3" "node-3 0" "$(rpc_senders rpcutil inventory -I node-3 -t 5)"
grep -q "to 'mcollective nodes node-3'" "$WORK/client.log" || fail "no directed publish to node-3's topic"
CURRENT=forwarded
log "== $CURRENT"
# The final status line of each broker counts what crossed the cluster.
for pid in "${BROKER_PIDS[@]}"; do kill -TERM "$pid"; done
for i in 1 2 3; do
    wait_for 10 "mc0d $i to stop" grep -q 'stopping:' "$WORK/mc0d-$i.log"
    grep 'stopping:' "$WORK/mc0d-$i.log" | grep -q 'cluster=up forwarded=[1-9][0-9]* received=[1-9]' ||
        fail "mc0d $i did not forward and receive: $(grep 'stopping:' "$WORK/mc0d-$i.log")"
done

if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "== ${#FAILED[@]} cluster e2e assertion(s) failed:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
log "== all cluster e2e assertions passed"
