# shellcheck shell=bash
# Shared by run.sh (the end-to-end test) and demo.sh: a scratch directory with
# CURVE keys and MCollective configs, one mc0d broker and N real mcollectived
# servers using the zeromq plugin from this repository, all on 127.0.0.1.
#
# Builds nothing: expects `cargo build --release` to have produced
# target/release/{mc0d,mc0-keygen,libmc0.so} (override with MC0_BIN_DIR or
# MC0_LIBRARY). Every process started here is killed on exit (trap EXIT), and
# every wait has a deadline.

set -euo pipefail

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -n "${E2E_INSTALLED:-}" ]; then
    # The installed packages only (tests/deb/check.sh): binaries in /usr/bin,
    # the plugin in Debian's plugin directory, libmc0 found by the plugin on
    # the system loader path (no plugin.zeromq.library).
    BIN_DIR=/usr/bin
    PLUGIN_LIBDIR=/usr/share/mcollective/plugins
    LIBMC0=
else
    BIN_DIR=${MC0_BIN_DIR:-$E2E_ROOT/target/release}
    PLUGIN_LIBDIR=$E2E_ROOT/ruby/lib:/usr/share/mcollective/plugins
    LIBMC0=${MC0_LIBRARY:-$BIN_DIR/libmc0.so}
fi
MC0D=$BIN_DIR/mc0d
KEYGEN=$BIN_DIR/mc0-keygen
# The legacy and libmc0 default: a broker restart must not wait for it.
HEARTBEAT=${E2E_HEARTBEAT:-30}
SERVERS=${E2E_SERVERS:-3}
CONNECT_TIMEOUT=${E2E_CONNECT_TIMEOUT:-5}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mc0-e2e.XXXXXX")
PORT=
BROKER_PID=
SERVER_PIDS=()
# Other processes to stop at exit (run.sh's pool brokers and their servers).
EXTRA_PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Kills what we started, by pid: TERM, a bounded wait, then KILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${SERVER_PIDS[@]}" "${EXTRA_PIDS[@]}"; do stop_pid "$pid"; done
    [ -n "$BROKER_PID" ] && stop_pid "$BROKER_PID"
    if [ -n "${KEEP_WORK:-}" ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

need() {
    local f
    for f in "$@"; do
        [ -e "$f" ] || { echo "missing $f: run 'cargo build --release' first" >&2; exit 2; }
    done
    command -v mcollectived >/dev/null && command -v mco >/dev/null ||
        { echo "mcollectived/mco not found: apt-get install mcollective mcollective-client" >&2; exit 2; }
}

free_port() {
    ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]'
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out after ${secs}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# make_keys_for NAME...: $WORK/keys/NAME.{public,private} with mc0-keygen.
make_keys_for() {
    mkdir -p "$WORK/keys"
    local name out
    for name in "$@"; do
        out=$("$KEYGEN" "$WORK/keys/$name" 2>&1) || { echo "mc0-keygen failed: $out" >&2; return 1; }
    done
}

make_keys() { make_keys_for broker client "$@"; }

# authorize ROLE NAME...: lets NAME's public key connect as the MCollective
# identity NAME, in ROLE (nodes or clients): mc0d --authorized-keys with its
# role directories (mc0d reads them at start, on SIGHUP and when they change).
authorize() {
    local role=$1 name
    shift
    mkdir -p "$WORK/authorized/$role"
    for name in "$@"; do
        [ -e "$WORK/authorized/$role/$name.public" ] || cp "$WORK/keys/$name.public" "$WORK/authorized/$role/"
    done
}

# common_cfg IDENTITY LOGFILE: the settings servers and clients share.
common_cfg() {
    cat <<CFG
main_collective = mcollective
collectives = mcollective,other
libdir = $PLUGIN_LIBDIR
logger_type = file
logfile = $2
loglevel = debug
identity = $1
securityprovider = psk
plugin.psk = e2e-$(basename "$WORK")
factsource = yaml
plugin.yaml = $WORK/facts-$1.yaml
connector = zeromq
plugin.zeromq.broker.host = 127.0.0.1
plugin.zeromq.broker.port = $PORT
plugin.zeromq.broker.public_key = $WORK/keys/broker.public
plugin.zeromq.heartbeat = $HEARTBEAT
plugin.zeromq.connect_timeout = $CONNECT_TIMEOUT
CFG
    [ -z "$LIBMC0" ] || echo "plugin.zeromq.library = $LIBMC0"
}

# client_cfg NAME [BROKER_KEY [CLIENT_KEY]]: writes $WORK/NAME.cfg for mco.
client_cfg() {
    local name=$1 broker_key=${2:-$WORK/keys/broker.public} own=${3:-client}
    printf -- '---\nrole: client\n' >"$WORK/facts-$name.yaml"
    {
        common_cfg "$name" "$WORK/$name.log" | sed "s|^plugin.zeromq.broker.public_key = .*|plugin.zeromq.broker.public_key = $broker_key|"
        echo "plugin.zeromq.public_key = $WORK/keys/$own.public"
        echo "plugin.zeromq.private_key = $WORK/keys/$own.private"
    } >"$WORK/$name.cfg"
}

server_cfg() {
    local id=$1
    printf -- '---\nrole: server\nnumber: "%s"\n' "${id##*-}" >"$WORK/facts-$id.yaml"
    {
        common_cfg "$id" "$WORK/$id.log"
        echo "daemonize = 0"
        # Registration messages: requests from a node key, to the agent
        # mc0d allows nodes to address (--node-publish-agents).
        echo "registerinterval = 2"
        echo "plugin.zeromq.public_key = $WORK/keys/$id.public"
        echo "plugin.zeromq.private_key = $WORK/keys/$id.private"
    } >"$WORK/$id.cfg"
}

# The asynchronous reply target of t_async_replies, declared on the broker.
ASYNC_TOPIC="mcollective reply client async"

start_broker() {
    local before
    before=$(grep -c 'listening on' "$WORK/mc0d.log" 2>/dev/null || true)
    mkdir -p "$WORK/authorized"
    # Servers publish to the registration agent (registerinterval below).
    "$MC0D" --bind 127.0.0.1 --port "$PORT" --curve-private-key "$WORK/keys/broker.private" \
        --authorized-keys "$WORK/authorized" --node-publish-agents registration \
        --queue "$ASYNC_TOPIC" --queue-dir "$WORK/queues" \
        --log-level debug >>"$WORK/mc0d.log" 2>&1 &
    BROKER_PID=$!
    wait_for 15 "mc0d listening on 127.0.0.1:$PORT" broker_listening "${before:-0}" || {
        tail -20 "$WORK/mc0d.log" >&2
        return 1
    }
}

# True once mc0d.log has more "listening on" lines than $1 and mc0d still runs.
broker_listening() {
    kill -0 "$BROKER_PID" 2>/dev/null || return 1
    [ "$(grep -c 'listening on' "$WORK/mc0d.log")" -gt "$1" ]
}

# Another process may take the free port before mc0d binds it: try a few.
start_broker_on_free_port() {
    local attempt
    for attempt in 1 2 3; do
        PORT=$(free_port)
        start_broker 2>/dev/null && return 0
        stop_broker
    done
    echo "mc0d did not start (3 attempts); its log:" >&2
    tail -20 "$WORK/mc0d.log" >&2
    return 1
}

stop_broker() {
    [ -n "$BROKER_PID" ] && stop_pid "$BROKER_PID"
    BROKER_PID=
}


# A server is ready once our connector's receive loop has started, i.e.
# after it connected and every agent subscribed.
# mcollectived connects in the background (libmc0's connect_retry), so its
# own log says it waits before the broker has its subscriptions: ask both.
server_ready() {
    grep -q 'Waiting for a message from the mc0 broker' "$WORK/$1.log" 2>/dev/null &&
        grep -q "client \"$1 [^\"]*\" subscribed to" "$WORK/mc0d.log" 2>/dev/null
}

# start_server ID: writes its config and starts mcollectived in the foreground.
start_server() {
    authorize nodes "$1"
    server_cfg "$1"
    mcollectived --config "$WORK/$1.cfg" --no-daemonize >>"$WORK/$1.out" 2>&1 &
    SERVER_PIDS+=($!)
}

wait_server_ready() {
    wait_for 60 "server $1 to connect and subscribe" server_ready "$1" || {
        tail -30 "$WORK/$1.log" "$WORK/$1.out" >&2 || true
        return 1
    }
}

start_servers() {
    local i
    for i in $(seq 1 "$SERVERS"); do start_server "node-$i"; done
    for i in $(seq 1 "$SERVERS"); do wait_server_ready "node-$i" || return 1; done
}

# The identities that answer `mco ping` (sorted, one per line).
mco_ping_nodes() {
    local cfg=$1
    shift
    timeout 60 mco ping --config "$cfg" "$@" 2>&1 | awk '/time=/ { print $1 }' | sort
}

setup() {
    need "$MC0D" "$KEYGEN" ${LIBMC0:+"$LIBMC0"}
    local i ids=()
    for i in $(seq 1 "$SERVERS"); do ids+=("node-$i"); done
    make_keys "${ids[@]}" rogue
    authorize clients client
    authorize nodes "${ids[@]}"
    start_broker_on_free_port
    client_cfg client
    start_servers
}
