#!/usr/bin/env bash
# End-to-end test: mc0d + three real mcollectived servers using the zeromq
# plugin (over libmc0) + real mco clients, CURVE and PSK on 127.0.0.1.
#
#   cargo build --release && tests/e2e/run.sh      (KEEP_WORK=1 keeps the scratch dir)
#
# Exits non-zero if any assertion fails, naming it and showing the log tails.

source "$(dirname "$0")/lib.sh"

FAILED=()
CURRENT=

fail() {
    echo "FAIL [$CURRENT]: $*" >&2
    FAILED+=("$CURRENT: $*")
}

# rpc_senders CFG ARGS...: runs `mco rpc ... --json`; prints "sender statuscode" lines.
rpc_senders() {
    local cfg=$1
    shift
    timeout 90 mco rpc --config "$cfg" --json --np "$@" 2>>"$WORK/mco.err" |
        ruby -rjson -e 'JSON.parse(STDIN.read).each { |r| puts "#{r["sender"]} #{r["statuscode"]}" }' | sort
}

expect_eq() {
    local what=$1 want=$2 got=$3
    if [ "$want" != "$got" ]; then
        fail "$what: expected [$(echo $want)] got [$(echo $got)]"
    fi
}

all_nodes() { seq 1 "$SERVERS" | sed 's/^/node-/'; }

t_ping_all() {
    expect_eq "mco ping replies" "$(all_nodes)" "$(mco_ping_nodes "$WORK/client.cfg" -t 3)"
}

t_ping_subcollective() {
    expect_eq "mco ping -T other replies" "$(all_nodes)" "$(mco_ping_nodes "$WORK/client.cfg" -t 3 -T other)"
}

t_rpc_ping() {
    expect_eq "mco rpc rpcutil ping" "$(all_nodes | sed 's/$/ 0/')" \
        "$(rpc_senders "$WORK/client.cfg" rpcutil ping -t 5)"
}

t_rpc_threaded() {
    expect_eq "mco rpc rpcutil ping --threaded" "$(all_nodes | sed 's/$/ 0/')" \
        "$(rpc_senders "$WORK/client.cfg" rpcutil ping -t 5 --threaded)"
}

t_inventory_one() {
    expect_eq "mco rpc rpcutil inventory -I node-2" "node-2 0" \
        "$(rpc_senders "$WORK/client.cfg" rpcutil inventory -I node-2 -t 5)"
    # The request went to node-2's directed topic only.
    grep -q "to 'mcollective nodes node-2'" "$WORK/client.log" ||
        fail "no directed publish to 'mcollective nodes node-2' in client.log"
}

# The node's connector health through MCollective itself: the mc0 agent.
t_mc0_counters() {
    local out
    out=$(timeout 90 mco rpc --config "$WORK/client.cfg" --json --np mc0 counters -I node-2 -t 5 2>>"$WORK/mco.err")
    echo "$out" | ruby -rjson -e '
        r = JSON.parse(STDIN.read)
        abort "#{r.size} replies" unless r.size == 1 && r[0]["sender"] == "node-2"
        abort "status #{r[0]["statuscode"]}: #{r[0]["statusmsg"]}" unless r[0]["statuscode"] == 0
        d = r[0]["data"]
        %w[handshakes sent acknowledged received].each { |k| abort "#{k} = #{d[k].inspect}" unless d[k].is_a?(Integer) && d[k] > 0 }
        abort "publishes_dropped = #{d["publishes_dropped"].inspect}" unless d["publishes_dropped"] == 0
        abort "broker = #{d["broker"].inspect}" unless d["broker"].to_s.include?("127.0.0.1")' ||
        fail "mco rpc mc0 counters -I node-2: $out"
}

t_direct_nodes_file() {
    echo node-3 >"$WORK/one.txt"
    expect_eq "mco rpc rpcutil ping --nodes [node-3]" "node-3 0" \
        "$(rpc_senders "$WORK/client.cfg" rpcutil ping --nodes "$WORK/one.txt" -t 5)"
}

t_missing_node_times_out() {
    echo ghost >"$WORK/ghost.txt"
    local start=$SECONDS got
    got=$(rpc_senders "$WORK/client.cfg" rpcutil ping --nodes "$WORK/ghost.txt" -t 3)
    local took=$((SECONDS - start))
    expect_eq "replies from a node that does not exist" "" "$got"
    [ "$took" -le 20 ] || fail "request to a missing node took ${took}s (timeout 3s)"
    grep -q "to 'mcollective nodes ghost'" "$WORK/client.log" ||
        fail "no directed publish to 'mcollective nodes ghost' in client.log"
}

# Lines mc0d logged since it last started listening.
broker_log_since_start() {
    tac "$WORK/mc0d.log" | sed '/listening on/q'
}

# True once mc0d (since its last start) has seen every server in "$@" subscribe.
resubscribed() {
    local log id
    log=$(broker_log_since_start)
    for id in "$@"; do
        grep -q "client \"$id [^\"]*\" subscribed to" <<<"$log" || return 1
    done
}

t_broker_restart() {
    local running
    running=$(all_nodes)
    kill -KILL "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
    # A server started while the broker is down keeps retrying until it is back.
    SERVERS=$((SERVERS + 1))
    local late=node-$SERVERS
    make_keys_for "$late"
    start_server "$late"
    wait_for 60 "$late to report the broker unreachable" \
        grep -q 'Could not connect to the mc0 broker.*retrying' "$WORK/$late.log" ||
        { fail "$late did not report the missing broker"; }
    log "mc0d killed (-9), $late started meanwhile; restarting mc0d on port $PORT (servers' heartbeat ${HEARTBEAT}s)"
    local t0
    t0=$(now_ms)
    start_broker || { fail "mc0d did not restart"; return; }
    # The running servers notice the closed connection at once, reconnect as
    # soon as the broker is back and re-subscribe, whatever their heartbeat.
    # shellcheck disable=SC2086
    wait_for 5 "the running servers to re-subscribe" resubscribed $running ||
        fail "not every running server re-subscribed within 5 s of the restart"
    local subscribed_ms=$(($(now_ms) - t0)) got
    got=$(mco_ping_nodes "$WORK/client.cfg" -t 1)
    local took_ms=$(($(now_ms) - t0))
    log "   waited $subscribed_ms ms for the servers' subscriptions; mco ping done $took_ms ms after the restart"
    expect_eq "mco ping right after a broker restart (the servers that were running)" \
        "$running" "$(comm -12 <(echo "$running") <(echo "$got"))"
    [ "$took_ms" -le 5000 ] || fail "mco ping found the servers only $took_ms ms after the restart (bound: 5000)"
    wait_server_ready "$late" || fail "$late did not connect after the broker came back"
    local deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
        got=$(mco_ping_nodes "$WORK/client.cfg" -t 2)
        [ "$got" = "$(all_nodes)" ] && break
    done
    expect_eq "mco ping after a broker restart, with the server started meanwhile" "$(all_nodes)" "$got"
}

# start_pool_broker N: another mc0d (same key and allowlist) on a free port,
# logging to mc0d-N.log; sets POOL_PORT and POOL_PID.
start_pool_broker() {
    POOL_PORT=$(free_port)
    "$MC0D" --bind 127.0.0.1 --port "$POOL_PORT" --curve-private-key "$WORK/keys/broker.private" \
        --authorized-keys "$WORK/authorized" --node-publish-agents registration \
        --log-level debug >>"$WORK/mc0d-$1.log" 2>&1 &
    POOL_PID=$!
    EXTRA_PIDS+=("$POOL_PID")
    wait_for 15 "mc0d-$1 listening" grep -q 'listening on' "$WORK/mc0d-$1.log"
}

# pool_cfg FILE POOL: points FILE's connector at the broker list POOL, in order.
pool_cfg() {
    sed -i -e "s|^plugin.zeromq.broker.host = .*|plugin.zeromq.broker.host = $2|" \
        -e '/^plugin.zeromq.broker.port = /d' "$1"
    echo "plugin.zeromq.randomize = false" >>"$1"
}

# Three servers and mco with a pool of two more brokers (b2, b3). Without a
# broker cluster, mco only reaches the servers on its own broker; the pool is
# not randomised here so that every party is on b2 first and fails over to
# b3 when b2 is killed: then `mco rpc` reaching all three shows they all
# moved. (With randomize, the default, a fleet spreads over the pool.)
t_pool_failover() {
    # Listed before the brokers start, so no node is refused and moves on.
    make_keys_for pool-1 pool-2 pool-3
    authorize nodes pool-1 pool-2 pool-3
    start_pool_broker 2 || { fail "mc0d-2 did not start"; return; }
    local b2_pid=$POOL_PID b2=$POOL_PORT
    start_pool_broker 3 || { fail "mc0d-3 did not start"; return; }
    local b3=$POOL_PORT id i want=
    local pool="127.0.0.1:$b2,127.0.0.1:$b3"
    for i in 1 2 3; do
        id=pool-$i
        want+="$id 0"$'\n'
        server_cfg "$id"
        pool_cfg "$WORK/$id.cfg" "$pool"
        mcollectived --config "$WORK/$id.cfg" --no-daemonize >>"$WORK/$id.out" 2>&1 &
        EXTRA_PIDS+=($!)
    done
    want=$(echo -n "$want")
    # The admin's listed key, as the identity it is listed under.
    cp "$WORK/client.cfg" "$WORK/poolclient.cfg"
    pool_cfg "$WORK/poolclient.cfg" "$pool"
    for i in 1 2 3; do
        wait_for 60 "pool-$i subscribed on mc0d-2" grep -q "client \"pool-$i [^\"]*\" subscribed to" "$WORK/mc0d-2.log" ||
            { fail "pool-$i did not subscribe on mc0d-2"; return; }
    done
    expect_eq "mco rpc through mc0d-2" "$want" "$(rpc_senders "$WORK/poolclient.cfg" rpcutil ping -t 5)"
    kill -KILL "$b2_pid"
    local t0
    t0=$(now_ms)
    for i in 1 2 3; do
        wait_for $((3 * HEARTBEAT)) "pool-$i subscribed on mc0d-3" \
            grep -q "client \"pool-$i [^\"]*\" subscribed to \"mcollective rpcutil\"" "$WORK/mc0d-3.log" ||
            fail "pool-$i did not fail over to mc0d-3 within 3 heartbeats"
    done
    local moved_ms=$(($(now_ms) - t0)) got
    got=$(rpc_senders "$WORK/poolclient.cfg" rpcutil ping -t 5)
    local took_ms=$(($(now_ms) - t0))
    log "   servers subscribed on mc0d-3 $moved_ms ms after kill -9 of mc0d-2; mco rpc done after $took_ms ms"
    expect_eq "mco rpc after kill -9 of the pool's first broker" "$want" "$got"
    [ "$took_ms" -le $((3 * HEARTBEAT * 1000)) ] || fail "mco rpc reached the servers only after $took_ms ms"
    grep -q "failing over from broker 127.0.0.1:$b2 to 127.0.0.1:$b3" "$WORK/pool-1.log" ||
        fail "pool-1's log does not show the failover from mc0d-2 to mc0d-3"
}

t_wrong_broker_key() {
    client_cfg rogue "$WORK/keys/rogue.public"
    local start=$SECONDS out rc=0
    out=$(timeout 60 mco ping --config "$WORK/rogue.cfg" -t 2 2>&1) || rc=$?
    local took=$((SECONDS - start))
    echo "$out" | sed 's/^/    | /'
    [ "$rc" -ne 0 ] || fail "mco ping with a wrong broker key exited 0"
    [ "$rc" -ne 124 ] || fail "mco ping with a wrong broker key hung (killed by timeout)"
    [ "$took" -le 45 ] || fail "mco ping with a wrong broker key took ${took}s"
    echo "$out" | grep -q "Could not connect to the mc0 broker at 127.0.0.1:$PORT" ||
        fail "no clear 'Could not connect to the mc0 broker' message"
    echo "$out" | grep -q "broker.public_key" || fail "the message does not point at plugin.zeromq.broker.public_key"
}

t_unlisted_client_refused() {
    # Right broker key, but a client key mc0d was not told about.
    client_cfg stranger "$WORK/keys/broker.public" rogue
    local start=$SECONDS out rc=0
    out=$(timeout 60 mco ping --config "$WORK/stranger.cfg" -t 2 2>&1) || rc=$?
    local took=$((SECONDS - start))
    [ "$rc" -ne 0 ] || fail "mco ping with an unlisted client key exited 0"
    [ "$rc" -ne 124 ] || fail "mco ping with an unlisted client key hung (killed by timeout)"
    [ "$took" -le 45 ] || fail "mco ping with an unlisted client key took ${took}s"
    echo "$out" | grep -q "Could not connect to the mc0 broker at 127.0.0.1:$PORT" ||
        fail "no clear 'Could not connect to the mc0 broker' message: $out"
    echo "$out" | grep -q "broker refused our key" ||
        fail "the refusal is not reported as 'broker refused our key': $out"
}

t_other_identity_refused() {
    # The admin's (listed) key, but another identity in client.cfg.
    client_cfg impostor "$WORK/keys/broker.public" client
    local out rc=0
    out=$(timeout 60 mco ping --config "$WORK/impostor.cfg" -t 2 2>&1) || rc=$?
    [ "$rc" -ne 0 ] || fail "mco ping as another identity exited 0"
    echo "$out" | grep -q 'identity "impostor", but this key is listed as "client"' ||
        fail "the refusal does not name both identities: $out"
}

t_identities_and_roles() {
    # Every key acted as the identity it is listed under, in its role: no
    # command broke a rule, and the servers' registration requests passed.
    # (The one refusal expected is t_other_identity_refused's.)
    if grep -E 'refused (CONNECT|SUB|PUT) from|belongs to the live session' "$WORK/mc0d.log" | grep -v '"impostor '; then
        fail "mc0d refused a command of the fleet"
    fi
    grep -q 'PUT "mcollective registration" .* from "node-1 ' "$WORK/mc0d.log" ||
        fail "no registration request from node-1 reached mc0d"
    grep -q 'only the [0-9]* authorized keys .* ([0-9]* node keys, 1 client keys, 0 of either role' "$WORK/mc0d.log" ||
        fail "mc0d did not load the allowlist with roles"
}

# Prints the sender of each reply waiting in the async queue (as the client
# key), acknowledging each; stops after 3 s without one.
collect_async_replies() {
    timeout 60 ruby -I"$E2E_ROOT/ruby/lib" -e '
        require "mc0"
        Mc0.load(ARGV[0])
        keys = ARGV[2]
        conn = Mc0::Connector.new("broker.host" => "127.0.0.1", "broker.port" => ARGV[1], "identity" => "client",
                                  "broker.public_key" => "#{keys}/broker.public",
                                  "public_key" => "#{keys}/client.public", "private_key" => "#{keys}/client.private")
        conn.subscribe_queue(ARGV[3], ARGV[3])
        while (msg = conn.receive(3000))
            puts Marshal.load(msg.body)[:senderid]   # the psk security plugin envelope
        end
        conn.close
    ' "$LIBMC0" "$PORT" "$WORK/keys" "$ASYNC_TOPIC" 2>>"$WORK/mco.err"
}

t_async_replies() {
    local puts_before
    puts_before=$(grep -c "PUT \"$ASYNC_TOPIC\"" "$WORK/mc0d.log")
    timeout 60 mco rpc --config "$WORK/client.cfg" rpcutil ping --reply-to "$ASYNC_TOPIC" >>"$WORK/mco.err" 2>&1 ||
        fail "mco rpc --reply-to failed"
    local want=$((puts_before + SERVERS))
    wait_for 30 "$SERVERS replies stored" \
        bash -c '[ "$(grep -c "PUT \"$1\"" "$2")" -ge "$3" ]' _ "$ASYNC_TOPIC" "$WORK/mc0d.log" "$want" ||
        { fail "the servers' replies did not reach the queue"; return; }
    kill -KILL "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
    start_broker || { fail "mc0d did not restart with its --queue-dir"; return; }
    expect_eq "async replies collected after mc0d was killed (-9) and restarted" \
        "$(all_nodes)" "$(collect_async_replies | sort)"
    expect_eq "async replies, a second collection (all were acknowledged)" "" "$(collect_async_replies)"
}

t_servers_healthy() {
    local i pid
    for i in "${!SERVER_PIDS[@]}"; do
        pid=${SERVER_PIDS[$i]}
        kill -0 "$pid" 2>/dev/null || fail "server node-$((i + 1)) (pid $pid) died"
    done
    if grep -l -E 'Failed to handle message|A failure occurred' "$WORK"/node-*.log; then
        fail "server logs report failures"
    fi
}

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] || [ "${#FAILED[@]}" -ne 0 ]; then
        local f
        for f in "$WORK"/mc0d*.log "$WORK"/node-*.log "$WORK"/pool-*.log "$WORK"/node-*.out "$WORK"/client.log "$WORK"/mco.err; do
            [ -s "$f" ] || continue
            echo "---- tail $f" >&2
            tail -25 "$f" >&2
        done
    fi
    cleanup
}
trap on_exit EXIT

log "scratch dir $WORK"
setup
log "mc0d on 127.0.0.1:$PORT, $SERVERS servers ready"

# From here a failing command is an assertion to report, not a reason to stop.
set +e

for t in t_ping_all t_ping_subcollective t_rpc_ping t_rpc_threaded t_inventory_one t_mc0_counters t_direct_nodes_file \
    t_missing_node_times_out t_broker_restart t_pool_failover t_wrong_broker_key t_unlisted_client_refused t_other_identity_refused \
    t_identities_and_roles t_async_replies t_servers_healthy; do
    CURRENT=${t#t_}
    before=${#FAILED[@]}
    log "== $CURRENT"
    "$t"
    [ "${#FAILED[@]}" -eq "$before" ] && log "   ok"
done

if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "== ${#FAILED[@]} e2e assertion(s) failed:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
log "== all e2e assertions passed"
