//! `mc0d`, the broker: one ROUTER socket, owned and touched by exactly one
//! thread (the one calling [`Broker::run`]), routing PUTs to the current
//! subscribers of their topic and keeping every client's heartbeat.
//!
//! The command handling itself is [`Engine`], a state machine over a
//! [`Transport`] with no socket of its own, so it can be driven (and fuzzed)
//! without the network; [`Broker`] feeds it from the ROUTER.
//!
//! # Socket options and why
//!
//! - `ZMQ_BACKLOG` 8192: thousands of nodes reconnect at the same moment
//!   after a broker restart; the kernel caps it at `net.core.somaxconn`.
//! - `ZMQ_ROUTER_HANDOVER` only without CURVE. With it libzmq gives a
//!   routing id to the newest connection that asks for it, whatever its key,
//!   so any key holder could take over another client's id and receive what
//!   is addressed to it (see [Sessions and keys](#sessions-and-keys)).
//!   Without it, a connection asking for a routing id that a live connection
//!   holds is never read or written to; the id is free again once the
//!   holder's connection is gone. Without CURVE there is no key to protect,
//!   and handover keeps the legacy brokers' behaviour for reconnects.
//! - `ZMQ_TCP_KEEPALIVE` (60 s idle, then 3 probes 10 s apart): a
//!   connection whose peer vanished without closing it (a network failure)
//!   is closed within about 90 s, freeing its routing id for the reconnect.
//! - `ZMQ_ROUTER_MANDATORY` + `ZMQ_DONTWAIT` on every send: a send to a
//!   vanished peer (`EHOSTUNREACH`) or to one whose queue is full (`EAGAIN`)
//!   fails at once instead of silently vanishing or blocking the loop. Each
//!   failure is counted as a drop and logged (rate-limited warning).
//! - `ZMQ_SNDHWM` (default [`DEFAULT_SNDHWM`] = 10 000 messages, per client):
//!   libzmq's queue to one client. When it is full, further messages to that
//!   client wait in mc0d's own buffer for it ([`buffers`]), bounded in bytes
//!   (`--client-buffer`, default [`DEFAULT_CLIENT_BUFFER`] = 64 MiB), and are
//!   sent in order as the client drains. A message count alone cannot size
//!   this: one broadcast request brings one reply per node to one `mco`
//!   client at once. The sizing rule: `--sndhwm` messages plus
//!   `--client-buffer` bytes must hold a whole fleet's replies to one
//!   request, i.e. nodes × reply size ≤ client buffer (the libzmq queue is
//!   slack): the defaults hold 15 000 replies of 4 KiB. Only a client over
//!   both bounds is stuck; what does not fit is dropped, counted
//!   (`full_drops=`) and logged. A stuck client costs at most `--sndhwm`
//!   messages in libzmq plus `--client-buffer` bytes here, and never delays
//!   anyone else. (libzmq's count is approximate: the writer learns of the
//!   reader's progress in steps of about 9 000 messages.)
//! - `ZMQ_RCVHWM` (default [`DEFAULT_RCVHWM`] = 1 000 messages, per client):
//!   inbound is fair-queued per connection; a full queue only stops reading
//!   that client's TCP stream (back-pressure on the publisher), nothing is lost.
//! - `ZMQ_MAXMSGSIZE` = the largest accepted frame (the body limit plus
//!   [`FRAME_SLACK`]): libzmq disconnects a peer that sends a bigger one
//!   before buffering it. Anything between the body limit and that gets a
//!   clear `ERROR` instead.
//! - `ZMQ_LINGER` 500 ms: pending replies get a bounded chance to leave at
//!   shutdown; a stuck peer cannot hold the exit.
//! - With CURVE: `ZMQ_ZAP_DOMAIN` "mc0" and `ZMQ_ZAP_ENFORCE_DOMAIN` (see
//!   [Authorization](#authorization)), and a socket monitor reporting closed
//!   connections (`ZMQ_EVENT_DISCONNECTED`).
//!
//! # Heartbeats
//!
//! See [`clients`]: lazily-invalidated deadline heaps; the loop sleeps in
//! `zmq_poll` until the next deadline (capped so a stop request is noticed).
//! NOOPs go out when due; a client is only expired for silence up to the
//! last moment the socket had no input waiting, so a broker that falls
//! behind never expires a client whose heartbeat it has not read yet. Under
//! sustained overload (the socket never empty) expiry waits; heartbeats do
//! not.
//!
//! # Authorization
//!
//! With an allowlist ([`allowlist`]) only listed CURVE keys may connect,
//! and a missing or failed check never means "allow", at three levels:
//! 1. The [`zap`] handler is bound on the broker's context and has answered
//!    a self-test request before the ROUTER binds; it refuses unlisted keys
//!    during the handshake.
//! 2. `ZMQ_ZAP_ENFORCE_DOMAIN` (libzmq option 93, a draft option the `zmq`
//!    crate has no setter for; Debian's libzmq 4.3.4 honours it) makes libzmq
//!    fail a handshake when no ZAP handler answers, instead of its
//!    backward-compatible default of letting the client in.
//! 3. Every received message must carry `User-Id` metadata (set by the ZAP
//!    handler) naming a key that is listed *now*; otherwise it is answered
//!    with [`ACCESS_DENIED`] and not executed. A session is tied to the key
//!    it was opened with, not just to its routing id.
//!
//! On reload (SIGHUP, or a change on disk noticed by polling) the new list
//! applies to new handshakes at once, and every session whose key is gone is
//! dropped: forgotten with its subscriptions and sent [`ACCESS_DENIED`] (as
//! is one whose key now has another name: it must CONNECT again).
//!
//! Without an allowlist (open mode) the ZAP handler admits every CURVE key,
//! so each message still carries its key.
//!
//! # Sessions and keys
//!
//! A session belongs to the key that opened it, whenever CURVE is on. libzmq
//! offers no point at which both a connection's key and the routing id it
//! asks for are known before the ROUTER hands the id over (the ZAP request
//! carries neither the id nor a way to wait for it; see [`zap`]), so the
//! broker holds the rule itself:
//! - no handover: a routing id held by a live connection cannot be taken by
//!   another one (its messages are never read);
//! - the connection each session was last heard from is remembered
//!   (`ZMQ_SRCFD`); when the socket monitor reports it closed, the session
//!   is marked lost and nothing is delivered to its routing id (which a new
//!   connection could now take) until the session speaks again under its
//!   key. Every closed connection is taken note of before each fan-out
//!   (so no delivery can reach a connection that took the id meanwhile) and
//!   before a session is tied to a connection (whose number may be that of
//!   one that closed); in between, whatever the monitor has ready is read on
//!   every wake-up of the loop;
//! - a message from a session's routing id under another key is refused
//!   (`ERROR`), logged with both keys and counted (`impostors=`); the
//!   session is left as it was.
//!
//! # Identity (with an allowlist)
//!
//! The name a key is listed under is the MCollective identity it may act as,
//! and its role (node, client or either) limits what it may publish: see
//! [`acl`]. A refused CONNECT, SUB or PUT gets `ERROR MESSAGE <why> [ID id]`,
//! is logged (rate-limited) and counted (`violations=`); with
//! `--identity-check log` it is carried out, and still logged and counted.
//!
//! # The sender stamp
//!
//! Every MESSAGE names its publisher in one header the broker sets: with an
//! allowlist [`SENDER`] (the name its key is listed under), otherwise, with
//! CURVE, [`SENDER_KEY`] (its Z85 key; also for a key listed without a
//! name); without CURVE none. Copies of either a client put in its PUT are
//! removed. The stamp is added once per PUT to the frames every recipient
//! shares, but each recipient still gets (and CURVE encrypts) two more
//! frames: one header rather than both halves that cost, which
//! docs/BENCHMARKS.md measures.

pub mod acl;
pub mod allowlist;
pub mod buffers;
pub mod clients;
pub mod logger;
pub mod shared;
pub mod subscriptions;
pub mod watch;
pub mod zap;
mod zmsg;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::keys::{key_to_z85, Key, KeyPair};
use crate::log::Level;
use crate::protocol::{self, Command, Limits, ProtocolError, Reply, NOT_CONNECTED, SENDER, SENDER_KEY};

use acl::{Actor, Denial, Policy};
use allowlist::{Allowlist, Entry, Fingerprint};
use buffers::{Buffers, Frames};
use clients::{Bytes, Clients, Heard, Session};
use logger::{Logger, RateLimit};
use shared::Shared;
use subscriptions::Subscriptions;
use watch::Watcher;
use zap::{SharedAllowlist, ZapHandler};
use zmsg::Msg;

pub use clients::Conn;

pub use crate::protocol::DEFAULT_PORT;
/// Messages libzmq queues per client before mc0d buffers them (see module doc).
pub const DEFAULT_SNDHWM: i32 = 10_000;
pub use buffers::DEFAULT_CLIENT_BUFFER;
/// Messages queued from each client before its stream is throttled.
pub const DEFAULT_RCVHWM: i32 = 1_000;
/// Pending-connection queue for the listening socket.
pub const DEFAULT_BACKLOG: i32 = 8192;
/// Topics one client may be subscribed to at once. A MCollective node needs
/// a few per agent and collective; this leaves ample room while bounding
/// what one client can make the broker hold.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
/// Largest PUT body (all body frames together), in bytes.
pub const DEFAULT_MAX_BODY_SIZE: usize = 64 * 1024 * 1024;
/// How far a single frame may exceed the body limit and still be read (and
/// answered with a clear `ERROR`); beyond it libzmq drops the connection.
pub const FRAME_SLACK: usize = 1024 * 1024;
/// How often the allowlist on disk is checked for changes.
pub const DEFAULT_KEYS_POLL: Duration = Duration::from_secs(5);
pub use crate::protocol::{ACCESS_DENIED, IMPOSTOR};

/// Longest the loop sleeps in one poll, so a stop request is seen promptly
/// even when the signal lands on a libzmq thread rather than this one.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// Why nothing goes to a session whose connection closed.
const LOST: &str = "its connection closed; nothing goes to it until it speaks again";

/// Messages handled per wake-up before timers get a turn.
const BATCH: usize = 1024;
const LINGER_MS: i32 = 500;
/// `ZMQ_ZAP_ENFORCE_DOMAIN` from libzmq's draft API (zmq.h).
const ZMQ_ZAP_ENFORCE_DOMAIN: libc::c_int = 93;
/// Where the ROUTER's socket monitor publishes (inproc, on its context).
const MONITOR_ENDPOINT: &str = "inproc://mc0d-monitor";
/// TCP keepalive: probes after this many idle seconds...
const KEEPALIVE_IDLE_SECS: i32 = 60;
/// ...this many seconds apart...
const KEEPALIVE_INTERVAL_SECS: i32 = 10;
/// ...and gives up after this many unanswered ones.
const KEEPALIVE_PROBES: i32 = 3;

extern "C" {
    // Bound here because zmq-sys is not a direct dependency; the option
    // this is used for has no setter in the `zmq` crate.
    fn zmq_setsockopt(
        socket: *mut libc::c_void,
        option: libc::c_int,
        value: *const libc::c_void,
        len: libc::size_t,
    ) -> libc::c_int;
}

/// Sets `ZMQ_ZAP_ENFORCE_DOMAIN` on `socket`: a handshake that no ZAP handler
/// answers then fails, instead of libzmq's default of admitting the client.
/// Must be set before the socket binds.
pub fn enforce_zap(socket: &mut zmq::Socket) -> Result<(), std::io::Error> {
    let on: libc::c_int = 1;
    // SAFETY: a live socket and a pointer to an int of the given size, as
    // zmq_setsockopt requires for an int option.
    let rc = unsafe {
        zmq_setsockopt(
            socket.as_mut_ptr(),
            ZMQ_ZAP_ENFORCE_DOMAIN,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Everything `mc0d` can be told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface to bind: `*`, an IPv4/IPv6 address or an interface name.
    pub bind: String,
    pub port: u16,
    /// The broker's CURVE secret key; `None` runs the NULL mechanism.
    pub curve_secret_key: Option<Key>,
    pub log_level: Level,
    /// How often the status line is considered (it is only written when a
    /// counter changed).
    pub status_interval: Duration,
    pub sndhwm: i32,
    /// Bytes mc0d holds for one client beyond libzmq's queue (see [`buffers`]).
    pub client_buffer: usize,
    pub rcvhwm: i32,
    pub backlog: i32,
    pub io_threads: i32,
    /// Per-message limits. `max_frame_size` is the hard cut libzmq enforces
    /// by dropping the connection; see [`Config::set_max_body_size`].
    pub limits: Limits,
    /// Largest PUT body; bigger ones are answered with `ERROR`.
    pub max_body_size: usize,
    /// Most topics one client may be subscribed to.
    pub max_subscriptions: usize,
    /// The client-key allowlist (a directory of `*.public` files or a
    /// key-per-line file); `None` admits every client that knows the
    /// broker's public key.
    pub authorized_keys: Option<PathBuf>,
    /// How often the allowlist is checked for changes; `None`: only on
    /// SIGHUP.
    pub authorized_keys_poll: Option<Duration>,
    /// What a command that breaks the identity or role rules gets.
    pub identity_check: IdentityCheck,
    /// Agents node keys may publish requests to, with roles
    /// (`--node-publish-agents`).
    pub node_publish_agents: Vec<String>,
}

/// `--identity-check`: what the broker does with a CONNECT, SUB or PUT
/// that breaks the identity or role rules of the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityCheck {
    /// Refuse it (`ERROR`), log and count it.
    #[default]
    Enforce,
    /// Carry it out, but log and count it: for migrating a site whose
    /// allowlist names are not yet its nodes' identities.
    Log,
}

impl IdentityCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityCheck::Enforce => "enforce",
            IdentityCheck::Log => "log",
        }
    }
}

impl std::str::FromStr for IdentityCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(IdentityCheck::Enforce),
            "log" => Ok(IdentityCheck::Log),
            _ => Err(format!("{s:?}: expected enforce or log")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut config = Config {
            bind: "*".into(),
            port: DEFAULT_PORT,
            curve_secret_key: None,
            log_level: Level::Info,
            status_interval: Duration::from_secs(60),
            sndhwm: DEFAULT_SNDHWM,
            client_buffer: DEFAULT_CLIENT_BUFFER,
            rcvhwm: DEFAULT_RCVHWM,
            backlog: DEFAULT_BACKLOG,
            io_threads: 1,
            limits: Limits::default(),
            max_body_size: 0,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            authorized_keys: None,
            authorized_keys_poll: Some(DEFAULT_KEYS_POLL),
            identity_check: IdentityCheck::Enforce,
            node_publish_agents: Vec::new(),
        };
        config.set_max_body_size(DEFAULT_MAX_BODY_SIZE);
        config
    }
}

impl Config {
    /// Sets the body limit and, with it, the largest frame libzmq accepts
    /// at all (the limit plus [`FRAME_SLACK`]).
    pub fn set_max_body_size(&mut self, bytes: usize) {
        self.max_body_size = bytes;
        self.limits.max_frame_size = bytes.saturating_add(FRAME_SLACK);
    }
}

/// A startup or runtime failure; the text names the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError(pub String);

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BrokerError {}

/// Counters, as shown in the status line and returned by [`Broker::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub clients: usize,
    pub topics: usize,
    /// Messages received (any verb, malformed included).
    pub msgs_in: u64,
    /// Messages sent (MESSAGE, OK, ERROR, NOOP).
    pub msgs_out: u64,
    pub puts: u64,
    pub delivered: u64,
    /// Messages waiting in mc0d's client buffers now.
    pub buffered: usize,
    /// Messages dropped because a client's buffer was full (a stuck client).
    pub full_drops: u64,
    /// Every message dropped: `full_drops`, those to a client that is gone
    /// (disconnected, expired or revoked), and deliveries not made to a
    /// session whose connection closed.
    pub drops: u64,
    /// CONNECTs, SUBs and PUTs that broke the identity or role rules
    /// (refused, or only logged with `--identity-check log`).
    pub violations: u64,
    /// Messages refused because their routing id belongs to a session of
    /// another key.
    pub impostors: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clients={} topics={} in={} out={} puts={} delivered={} buffered={} full_drops={} drops={} violations={} \
             impostors={}",
            self.clients,
            self.topics,
            self.msgs_in,
            self.msgs_out,
            self.puts,
            self.delivered,
            self.buffered,
            self.full_drops,
            self.drops,
            self.violations,
            self.impostors
        )
    }
}

/// The allowlist machinery of a running broker.
struct Keys {
    path: PathBuf,
    shared: SharedAllowlist,
    watcher: Watcher,
    poll: Option<Duration>,
}

impl Keys {
    fn current(&self) -> Arc<Allowlist> {
        self.shared.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A bound broker, ready to [`run`](Broker::run).
pub struct Broker {
    config: Config,
    router: Router,
    endpoint: String,
    public_key: Option<Key>,
    log: Logger,
    /// With CURVE.
    zap: Option<ZapHandler>,
    /// With `--authorized-keys`.
    keys: Option<Keys>,
}

impl Broker {
    /// Creates and binds the ROUTER socket (after starting the ZAP handler
    /// when an allowlist is configured). Fails (naming the cause) on a
    /// libzmq without CURVE, a bad key, an unreadable or malformed
    /// allowlist, or an address that cannot be bound.
    pub fn bind(config: Config) -> Result<Broker, BrokerError> {
        let err = |what: &str, e: zmq::Error| BrokerError(format!("cannot {what}: {e}"));
        let log = Logger::new(config.log_level);
        let public_key = match &config.curve_secret_key {
            Some(secret) => {
                crate::ensure_curve_support().map_err(BrokerError)?;
                Some(KeyPair::from_secret(*secret).map_err(BrokerError)?.public)
            }
            None => None,
        };
        let ctx = zmq::Context::new();
        ctx.set_io_threads(config.io_threads.max(1)).map_err(|e| err("set io threads", e))?;
        let curve = config.curve_secret_key.is_some();
        let keys = match &config.authorized_keys {
            None => None,
            Some(path) => {
                if !curve {
                    return Err(BrokerError(
                        "--authorized-keys needs CURVE: without it clients have no key to check".into(),
                    ));
                }
                // Taken before reading, so an edit made while loading is
                // noticed by the next poll.
                let fingerprint = Fingerprint::of(path);
                let list = Allowlist::load(path).map_err(|e| BrokerError(e.0))?;
                let shared: SharedAllowlist = Arc::new(RwLock::new(Arc::new(list)));
                let poll = config.authorized_keys_poll;
                let watcher = Watcher::start(path.clone(), fingerprint, poll, shared.clone(), log.clone())?;
                Some(Keys { path: path.clone(), shared, watcher, poll })
            }
        };
        let zap = if curve {
            let zap = ZapHandler::start(&ctx, keys.as_ref().map(|k| k.shared.clone()), log.clone())?;
            zap.self_test(&ctx)?;
            Some(zap)
        } else {
            None
        };
        let mut socket = ctx.socket(zmq::ROUTER).map_err(|e| err("create the ROUTER socket", e))?;
        socket.set_backlog(config.backlog).map_err(|e| err("set ZMQ_BACKLOG", e))?;
        // See the module doc: with CURVE a routing id stays with its
        // connection.
        socket.set_router_handover(!curve).map_err(|e| err("set ZMQ_ROUTER_HANDOVER", e))?;
        socket.set_router_mandatory(true).map_err(|e| err("set ZMQ_ROUTER_MANDATORY", e))?;
        socket.set_sndhwm(config.sndhwm).map_err(|e| err("set ZMQ_SNDHWM", e))?;
        socket.set_rcvhwm(config.rcvhwm).map_err(|e| err("set ZMQ_RCVHWM", e))?;
        let max_frame = i64::try_from(config.limits.max_frame_size).unwrap_or(i64::MAX);
        socket.set_maxmsgsize(max_frame).map_err(|e| err("set ZMQ_MAXMSGSIZE", e))?;
        socket.set_linger(LINGER_MS).map_err(|e| err("set ZMQ_LINGER", e))?;
        socket.set_tcp_keepalive(1).map_err(|e| err("set ZMQ_TCP_KEEPALIVE", e))?;
        socket.set_tcp_keepalive_idle(KEEPALIVE_IDLE_SECS).map_err(|e| err("set ZMQ_TCP_KEEPALIVE_IDLE", e))?;
        socket.set_tcp_keepalive_intvl(KEEPALIVE_INTERVAL_SECS).map_err(|e| err("set ZMQ_TCP_KEEPALIVE_INTVL", e))?;
        socket.set_tcp_keepalive_cnt(KEEPALIVE_PROBES).map_err(|e| err("set ZMQ_TCP_KEEPALIVE_CNT", e))?;
        let mut monitor = None;
        if let Some(secret) = &config.curve_secret_key {
            socket.set_curve_secretkey(secret).map_err(|e| err("set the CURVE secret key", e))?;
            socket.set_curve_server(true).map_err(|e| err("enable CURVE", e))?;
            socket.set_zap_domain(zap::ZAP_DOMAIN).map_err(|e| err("set ZMQ_ZAP_DOMAIN", e))?;
            if let Err(e) = enforce_zap(&mut socket) {
                // Still closed: messages without an authorized User-Id are
                // refused by the loop (see the module doc).
                log.log(
                    Level::Warn,
                    format_args!(
                        "this libzmq does not support ZMQ_ZAP_ENFORCE_DOMAIN ({e}); \
                         unauthorized messages are refused by the broker itself"
                    ),
                );
            }
            // Before binding, so that no connection's end goes unreported.
            let events = zmq::SocketEvent::DISCONNECTED.to_raw();
            socket.monitor(MONITOR_ENDPOINT, i32::from(events)).map_err(|e| err("start the socket monitor", e))?;
            let pair = ctx.socket(zmq::PAIR).map_err(|e| err("create the monitor socket", e))?;
            // Unbounded: libzmq's I/O thread waits on a full monitor pipe.
            pair.set_rcvhwm(0).map_err(|e| err("set the monitor's ZMQ_RCVHWM", e))?;
            pair.set_linger(0).map_err(|e| err("set the monitor's ZMQ_LINGER", e))?;
            pair.connect(MONITOR_ENDPOINT).map_err(|e| err("connect the socket monitor", e))?;
            monitor = Some(pair);
        }
        let host = if config.bind.contains(':') && !config.bind.starts_with('[') {
            format!("[{}]", config.bind)
        } else {
            config.bind.clone()
        };
        if host.starts_with('[') {
            socket.set_ipv6(true).map_err(|e| err("enable IPv6", e))?;
        }
        let endpoint = format!("tcp://{host}:{}", config.port);
        socket.bind(&endpoint).map_err(|e| BrokerError(format!("cannot bind {endpoint}: {e}")))?;
        let router = Router { socket, monitor };
        Ok(Broker { config, router, endpoint, public_key, log, zap, keys })
    }

    /// The endpoint the socket is bound to, e.g. `tcp://*:61616`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The CURVE public key clients must use, when CURVE is on.
    pub fn public_key(&self) -> Option<&Key> {
        self.public_key.as_ref()
    }

    /// Serves until `stop` becomes true; reloads the allowlist whenever
    /// `reload` is set (and clears it). Returns the final counters.
    pub fn run(self, stop: &AtomicBool, reload: &AtomicBool) -> Result<Stats, BrokerError> {
        let Broker { config, router, endpoint, public_key, log, zap, keys } = self;
        match &public_key {
            Some(k) => log.log(
                Level::Info,
                format_args!("mc0d {} listening on {endpoint} (CURVE, public key {})", crate::VERSION, key_to_z85(k)),
            ),
            None => log.log(
                Level::Warn,
                format_args!(
                    "mc0d {} listening on {endpoint} WITHOUT CURVE (--no-curve): clients are neither \
                     authenticated nor encrypted, and any client can read any topic",
                    crate::VERSION
                ),
            ),
        }
        let mut engine = Engine::new(router, &config);
        if let Some(keys) = &keys {
            let list = keys.current();
            let polled = match keys.poll {
                Some(p) => format!("checked for changes every {} s", p.as_secs_f64()),
                None => "not polled".into(),
            };
            log.log(
                Level::Info,
                format_args!(
                    "only the {} authorized keys in {} may connect, each as the identity it is listed under \
                     ({}; --identity-check {}; reloaded on SIGHUP, {polled})",
                    list.len(),
                    keys.path.display(),
                    roles(&list),
                    config.identity_check.as_str()
                ),
            );
            if list.is_empty() {
                log.log(Level::Warn, format_args!("the authorized keys list is empty: no client can connect"));
            }
            warn_unnamed(&log, &list);
            engine.set_allowlist(Some(list), Instant::now());
        } else if public_key.is_some() {
            log.log(
                Level::Info,
                format_args!(
                    "any client with the broker's public key may connect (no --authorized-keys): its routing id \
                     stays tied to its key, but it may use any identity and topic"
                ),
            );
        }
        let mut server = Server { engine, zap, keys, frames: Vec::new(), user: String::new(), log: log.clone() };
        let result = server.serve(stop, reload, config.status_interval);
        let stats = server.engine.stats();
        server.engine.flush_suppressed();
        match &result {
            Ok(()) => log.log(Level::Info, format_args!("stopping: {stats}")),
            Err(e) => log.log(Level::Error, format_args!("stopping on error: {e}; {stats}")),
        }
        result.map(|()| stats)
    }
}

/// "3 node keys, 1 client key, 2 of either role", for the log.
fn roles(list: &Allowlist) -> String {
    let (nodes, clients) = (list.with_role(acl::Role::Node), list.with_role(acl::Role::Client));
    format!("{nodes} node keys, {clients} client keys, {} of either role", list.len() - nodes - clients)
}

/// Names that are not MCollective identities, one warning each, at most
/// this many per load (the rest are counted).
const MAX_NAME_WARNINGS: usize = 20;

/// Keys listed without a name (or under one that is not an identity) cannot
/// connect; say so, naming the places, whenever a list loads.
fn warn_unnamed(log: &Logger, list: &Allowlist) {
    let warnings = list.warnings();
    for warning in warnings.iter().take(MAX_NAME_WARNINGS) {
        log.log(Level::Warn, format_args!("{warning}"));
    }
    if warnings.len() > MAX_NAME_WARNINGS {
        log.log(
            Level::Warn,
            format_args!(
                "{} more authorized keys are listed under a name that is not an MCollective identity",
                warnings.len() - MAX_NAME_WARNINGS
            ),
        );
    }
    let n = list.unnamed();
    if n > 0 {
        log.log(
            Level::Warn,
            format_args!(
                "{n} authorized keys are listed without a name (or one that is not an MCollective identity): they \
                 cannot be bound to an MCollective identity, so their CONNECT is refused (allowed and logged with \
                 --identity-check log; give each the name its node or client uses as identity)"
            ),
        );
    }
}

/// The receiving side: the ROUTER loop that feeds an [`Engine`] and keeps
/// the allowlist current.
struct Server {
    engine: Engine<Router>,
    zap: Option<ZapHandler>,
    keys: Option<Keys>,
    /// Reused receive buffer: routing id followed by the message frames.
    frames: Vec<Msg>,
    /// The current message's `User-Id` (with CURVE only).
    user: String,
    log: Logger,
}

/// What [`Server::receive`] read besides the frames.
struct Received {
    /// Frames past the limit, read and discarded.
    extra: usize,
    has_user: bool,
    conn: Option<Conn>,
}

impl Server {
    fn serve(&mut self, stop: &AtomicBool, reload: &AtomicBool, status_interval: Duration) -> Result<(), BrokerError> {
        let mut next_status = Instant::now() + status_interval;
        // Heartbeats alone do not make the status line worth repeating.
        let key =
            |s: &Stats| (s.clients, s.topics, s.puts, s.delivered, s.buffered, s.drops, s.violations, s.impostors);
        let mut last_status = key(&self.engine.stats());
        // The last instant at which a receive found nothing waiting: clients
        // are only expired for silence up to it (see Engine::tick_drained).
        let mut drained = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if reload.swap(false, Ordering::SeqCst) {
                match &self.keys {
                    Some(keys) => keys.watcher.request_reload(),
                    None => self.log.log(Level::Info, format_args!("SIGHUP: no --authorized-keys to reload")),
                }
            }
            if self.zap.as_ref().is_some_and(|z| !z.is_running()) {
                return Err(BrokerError("the ZAP handler stopped; refusing to serve without it".into()));
            }
            if self.keys.as_ref().is_some_and(|k| !k.watcher.is_running()) {
                return Err(BrokerError("the authorized-keys thread stopped; refusing to serve without it".into()));
            }
            while let Some(reloaded) = self.keys.as_ref().and_then(|k| k.watcher.try_next()) {
                self.apply(reloaded, now);
            }
            self.engine.tick_drained(now, drained);
            if now >= next_status {
                self.engine.flush_suppressed();
                let stats = self.engine.stats();
                if key(&stats) != last_status {
                    self.log.log(Level::Info, format_args!("status: {stats}"));
                    last_status = key(&stats);
                }
                next_status = now + status_interval;
            }
            let mut wake = (now + MAX_WAIT).min(next_status);
            if let Some(deadline) = self.engine.next_deadline() {
                wake = wake.min(deadline);
            }
            // Round up so a deadline 0.3 ms away does not spin.
            let timeout = ((wake.saturating_duration_since(now).as_micros() + 999) / 1000) as i64;
            match self.engine.out.transport.poll(timeout) {
                // Even after a timeout: the receive below finding nothing is
                // what moves `drained` on.
                Ok(()) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(BrokerError(format!("poll failed: {e}"))),
            }
            for _ in 0..BATCH {
                let at = Instant::now();
                match self.receive() {
                    Ok(Some(received)) => {
                        let origin =
                            Origin { user: received.has_user.then_some(self.user.as_str()), conn: received.conn };
                        self.engine.handle_received(&self.frames, received.extra, origin, at);
                    }
                    Ok(None) => {
                        drained = at;
                        break;
                    }
                    Err(e) => return Err(BrokerError(format!("receive failed: {e}"))),
                }
            }
        }
        Ok(())
    }

    /// Drops the sessions of keys a reloaded list no longer holds.
    fn apply(&mut self, reloaded: watch::Reloaded, now: Instant) {
        let watch::Reloaded { list, reason, took, added, removed } = reloaded;
        let dropped = self.engine.set_allowlist(Some(list.clone()), now);
        self.log.log(
            Level::Info,
            format_args!(
                "authorized keys reloaded ({reason}) in {} ms: {} keys, {added} added, {removed} removed; \
                 {dropped} sessions dropped ({})",
                took.as_millis(),
                list.len(),
                roles(&list)
            ),
        );
        warn_unnamed(&self.log, &list);
    }

    /// Reads one whole message into `self.frames` (and its `User-Id` into
    /// `self.user`); `Ok(None)` when nothing is waiting. Frames beyond the
    /// limit are read and discarded (so a hostile sender cannot make the
    /// broker hold them).
    fn receive(&mut self) -> Result<Option<Received>, zmq::Error> {
        self.frames.clear();
        let keep = self.engine.limits.max_frames.saturating_add(1);
        let curve = self.zap.is_some();
        let socket = &mut self.engine.out.transport.socket;
        let mut received = Received { extra: 0, has_user: false, conn: None };
        loop {
            let first = self.frames.is_empty() && received.extra == 0;
            let mut msg = Msg::new();
            match msg.recv(socket, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if first => return Ok(None),
                // An interrupted read is retried, never taken for "nothing
                // waiting": that answer lets expiry count silence up to now.
                // The rest of a multipart message is already here (libzmq
                // delivers them atomically).
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
            // Metadata comes with the frames read off the wire, not with the
            // routing-id frame the ROUTER puts in front.
            if self.frames.len() == 1 && received.extra == 0 {
                received.conn = msg.source_fd();
                if curve {
                    self.user.clear();
                    if let Some(user) = msg.property(b"User-Id\0") {
                        self.user.push_str(user);
                        received.has_user = true;
                    }
                }
            }
            let more = msg.more();
            if self.frames.len() < keep {
                self.frames.push(msg);
            } else {
                received.extra += 1;
            }
            if !more {
                return Ok(Some(received));
            }
        }
    }
}

/// Where an [`Engine`] sends its messages, and learns of connections that
/// ended. Sends never block: an error means the message was dropped (peer
/// gone, or its queue is full).
pub trait Transport {
    /// Sends `frames` (delimiter first) to the client with routing id `rid`.
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error>;

    /// Sends one of the copies of a fan-out to `rid`; by default like
    /// [`deliver`](Transport::deliver) with its frames.
    fn deliver_shared(&mut self, rid: &[u8], message: &mut Shared) -> Result<(), zmq::Error> {
        self.deliver(rid, message.frames())
    }

    /// Appends the connections that ended since the last call: with `all`,
    /// every one whose end happened before this call; without, those known
    /// at no cost. None by default.
    fn lost_connections(&mut self, _lost: &mut Vec<Conn>, _all: bool) {}
}

/// The broker's ROUTER socket and, with CURVE, its monitor.
pub struct Router {
    socket: zmq::Socket,
    /// Reports each closed connection (`ZMQ_EVENT_DISCONNECTED`, with its
    /// file descriptor).
    monitor: Option<zmq::Socket>,
}

impl Router {
    /// Waits up to `timeout_ms` for input on the ROUTER. (The monitor is
    /// read on every wake-up and whenever it matters, see
    /// [`Engine::connections_lost`]; polling it too would cost a system call
    /// per wake-up.)
    fn poll(&mut self, timeout_ms: i64) -> Result<(), zmq::Error> {
        self.socket.poll(zmq::POLLIN, timeout_ms).map(drop)
    }
}

impl Transport for Router {
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
        // With ROUTER_MANDATORY only the routing-id frame can fail (unknown
        // peer or full pipe); once it is accepted the rest is queued.
        self.socket.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            let more = if i < last { zmq::SNDMORE } else { 0 };
            self.socket.send(&frame[..], more | zmq::DONTWAIT)?;
        }
        Ok(())
    }

    fn deliver_shared(&mut self, rid: &[u8], message: &mut Shared) -> Result<(), zmq::Error> {
        self.socket.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
        message.send_frames(&mut self.socket)
    }

    fn lost_connections(&mut self, lost: &mut Vec<Conn>, all: bool) {
        let Some(monitor) = &self.monitor else { return };
        // Reading ZMQ_EVENTS makes libzmq take in the monitor pipe's pending
        // wake-ups at once (a system call; a receive alone looks at them at
        // most a millisecond late): an event emitted before this call is
        // seen.
        if all && !monitor.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
            return;
        }
        // Each event is two frames: event id (u16) and value (u32), then the
        // endpoint.
        while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = frames.first().filter(|f| f.len() >= 6) else { continue };
            let event = u16::from_ne_bytes([head[0], head[1]]);
            if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                let fd = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
                lost.push(fd as Conn);
            }
        }
    }
}

/// The sending half of the engine state, split off so a fan-out can iterate
/// the subscription table while sending.
struct Out<T> {
    transport: T,
    stats: Stats,
    drop_warn: RateLimit,
    log: Logger,
    /// Messages waiting for clients whose libzmq queue is full.
    buffers: Buffers,
}

impl<T: Transport> Out<T> {
    /// Sends one message to `rid`, or queues it in the client's buffer
    /// behind earlier ones; false (and counted, logged) if dropped.
    fn send(&mut self, rid: &[u8], frames: &[Vec<u8>], now: Instant) -> bool {
        if self.buffers.holds(rid) {
            return self.buffer(rid, Arc::new(frames.to_vec()), now);
        }
        let result = self.transport.deliver(rid, frames);
        self.sent(rid, result, || Arc::new(frames.to_vec()), now)
    }

    /// [`send`](Out::send) for one recipient of a fan-out.
    fn send_shared(&mut self, rid: &[u8], message: &mut Shared, now: Instant) -> bool {
        if self.buffers.holds(rid) {
            return self.buffer(rid, message.share(), now);
        }
        let result = self.transport.deliver_shared(rid, message);
        self.sent(rid, result, || message.share(), now)
    }

    fn sent(
        &mut self,
        rid: &[u8],
        result: Result<(), zmq::Error>,
        frames: impl FnOnce() -> Frames,
        now: Instant,
    ) -> bool {
        match result {
            Ok(()) => {
                self.stats.msgs_out += 1;
                true
            }
            // libzmq's queue to it is full: later, in order.
            Err(zmq::Error::EAGAIN) => self.buffer(rid, frames(), now),
            Err(e) => {
                self.dropped(rid, 1, &failure(e), now);
                false
            }
        }
    }

    fn buffer(&mut self, rid: &[u8], frames: Frames, now: Instant) -> bool {
        if self.buffers.push(rid, frames, now) {
            return true;
        }
        self.stats.full_drops += 1;
        let why =
            format!("it is not reading: its buffer in mc0d is full ({} bytes, --client-buffer)", self.buffers.limit());
        self.dropped(rid, 1, &why, now);
        false
    }

    /// Sends what waits in the buffers of the clients due a retry.
    fn retry_buffered(&mut self, now: Instant) {
        for rid in self.buffers.due(now) {
            let transport = &mut self.transport;
            let retried = self.buffers.retry(&rid, now, |frames| transport.deliver(&rid, frames));
            self.stats.msgs_out += retried.sent as u64;
            if let Some((e, dropped)) = retried.failed {
                self.dropped(&rid, dropped as u64, &failure(e), now);
            }
        }
    }

    /// Drops what waits for a client the broker forgets.
    fn discard(&mut self, rid: &[u8], why: &str, now: Instant) {
        let dropped = self.buffers.discard(rid);
        if dropped > 0 {
            self.dropped(rid, dropped as u64, why, now);
        }
    }

    fn dropped(&mut self, rid: &[u8], count: u64, why: &str, now: Instant) {
        self.stats.drops += count;
        if let Some(suppressed) = self.drop_warn.allow(now) {
            let what = if count == 1 { "a message".to_string() } else { format!("{count} messages") };
            self.log.log(
                Level::Warn,
                format_args!(
                    "dropped {what} to {}: {why}{}; drops={}",
                    show(rid),
                    more_since(suppressed, "drops"),
                    self.stats.drops
                ),
            );
        }
    }
}

/// Why a send failed for good.
fn failure(e: zmq::Error) -> String {
    match e {
        zmq::Error::EHOSTUNREACH => "peer is gone".to_string(),
        other => other.to_string(),
    }
}

fn more_since(suppressed: u64, what: &str) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} more {what} since the last warning)")
    } else {
        String::new()
    }
}

/// Where a message came from, as libzmq reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The connection's `User-Id` metadata: its key (Z85) whenever CURVE
    /// is on.
    pub user: Option<&'a str>,
    /// The connection (`ZMQ_SRCFD`), when known.
    pub conn: Option<Conn>,
}

/// The sender of one command, as far as the broker knows it.
struct Sender<'a> {
    key: Option<&'a str>,
    /// With an allowlist: the list's copy of the key and how it is listed.
    listed: Option<(&'a Arc<str>, &'a Entry)>,
    conn: Option<Conn>,
}

impl Sender<'_> {
    fn actor(&self) -> Option<Actor<'_>> {
        self.listed.map(|(_, entry)| Actor { identity: entry.name.as_deref(), role: entry.role })
    }

    /// The one header that names this sender on its MESSAGEs: the name its
    /// key is listed under, else (open mode, or a key listed without a name)
    /// the key; none without CURVE. One header, not both: each is two more
    /// frames every recipient gets and CURVE encrypts (docs/BENCHMARKS.md).
    fn stamp(&self) -> Option<(&'static str, &str)> {
        match (self.listed.and_then(|(_, entry)| entry.name.as_deref()), self.key) {
            (Some(name), _) => Some((SENDER, name)),
            (None, Some(key)) => Some((SENDER_KEY, key)),
            (None, None) => None,
        }
    }
}

/// The broker's command handling: client table, subscriptions, heartbeats,
/// limits and authorization, as a state machine. Messages go in through
/// [`handle`](Engine::handle), time through [`tick`](Engine::tick); every
/// reply and delivery goes out through the [`Transport`].
pub struct Engine<T: Transport> {
    out: Out<T>,
    clients: Clients,
    subs: Subscriptions,
    limits: Limits,
    max_body_size: usize,
    max_subscriptions: usize,
    malformed_warn: RateLimit,
    denied_warn: RateLimit,
    violation_warn: RateLimit,
    impostor_warn: RateLimit,
    /// With an allowlist, every message must come from a listed key.
    allowlist: Option<Arc<Allowlist>>,
    identity_check: IdentityCheck,
    policy: Policy,
    /// Reused buffer for [`Transport::lost_connections`].
    lost: Vec<Conn>,
}

impl<T: Transport> Engine<T> {
    /// An engine with `config`'s limits, rules and log level, no clients and
    /// no allowlist.
    pub fn new(transport: T, config: &Config) -> Self {
        let log = Logger::new(config.log_level);
        let every_second = || RateLimit::new(Duration::from_secs(1));
        Engine {
            out: Out {
                transport,
                stats: Stats::default(),
                drop_warn: every_second(),
                log,
                buffers: Buffers::new(config.client_buffer),
            },
            clients: Clients::new(),
            subs: Subscriptions::new(),
            limits: config.limits,
            max_body_size: config.max_body_size,
            max_subscriptions: config.max_subscriptions,
            malformed_warn: every_second(),
            denied_warn: every_second(),
            violation_warn: every_second(),
            impostor_warn: every_second(),
            allowlist: None,
            identity_check: config.identity_check,
            policy: Policy::new(&config.node_publish_agents),
            lost: Vec::new(),
        }
    }

    pub fn transport(&self) -> &T {
        &self.out.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.out.transport
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            clients: self.clients.len(),
            topics: self.subs.topic_count(),
            buffered: self.out.buffers.messages(),
            ..self.out.stats.clone()
        }
    }

    /// Installs (or, with `None`, removes) the allowlist. Every session whose
    /// key is not in the new list, or is now listed under another name, is
    /// dropped: forgotten with its subscriptions and sent [`ACCESS_DENIED`].
    /// Returns how many.
    pub fn set_allowlist(&mut self, list: Option<Arc<Allowlist>>, now: Instant) -> usize {
        self.allowlist = list;
        let Some(list) = self.allowlist.clone() else { return 0 };
        let stale: Vec<(Bytes, String)> = self
            .clients
            .iter()
            .filter_map(|c| {
                let Some((_, entry)) = c.user.as_deref().and_then(|u| list.entry(u)) else {
                    let key = c.user.as_deref().unwrap_or("none");
                    return Some((c.id.clone(), format!("its key {key} is no longer authorized")));
                };
                (entry.name != c.identity).then(|| {
                    let key = list.describe(c.user.as_deref().unwrap_or_default());
                    let was = c.identity.as_deref().unwrap_or("(no name)");
                    (c.id.clone(), format!("its key {key} is no longer listed as {was:?}"))
                })
            })
            .collect();
        for (rid, why) in &stale {
            let Some(client) = self.clients.remove(rid) else { continue };
            self.subs.forget(&client);
            self.out.discard(rid, why, now);
            self.out.log.log(
                Level::Warn,
                format_args!("client {} dropped: {why} ({} subscriptions dropped)", show(rid), client.topics.len()),
            );
            self.reply_error(rid, ACCESS_DENIED, None, now);
        }
        stale.len()
    }

    /// Handles one message: `frames[0]` is the routing id, the rest is what
    /// the client sent (delimiter first), over the connection `origin`.
    pub fn handle<F: AsRef<[u8]>>(&mut self, frames: &[F], origin: Origin<'_>, now: Instant) {
        self.handle_received(frames, 0, origin, now);
    }

    /// Takes note of the connections that ended, as the transport reports
    /// them: their sessions receive nothing until they speak again. With
    /// `all`, of every one that ended before this call (which may cost a
    /// system call): before a delivery, and before a session is tied to a
    /// connection, whose number may be that of one that ended.
    pub fn connections_lost(&mut self, all: bool, now: Instant) {
        let mut lost = std::mem::take(&mut self.lost);
        self.out.transport.lost_connections(&mut lost, all);
        for conn in lost.drain(..) {
            if let Some(rid) = self.clients.connection_lost(conn) {
                // What waits in its buffer would go to whoever takes the id.
                self.out.discard(&rid, LOST, now);
                if self.out.log.enabled(Level::Debug) {
                    self.out.log.log(
                        Level::Debug,
                        format_args!(
                            "client {}: its connection closed; nothing is delivered to it until it speaks again",
                            show(&rid)
                        ),
                    );
                }
            }
        }
        self.lost = lost;
    }

    /// Sends due heartbeats and forgets expired clients, for a caller that
    /// has read all input up to `now` (see [`tick_drained`](Engine::tick_drained)).
    pub fn tick(&mut self, now: Instant) {
        self.tick_drained(now, now);
    }

    /// Takes note of the connections known to have ended, sends the
    /// heartbeats due at `now` and forgets the clients that were silent for
    /// 1.05 × TTL up to `drained`, the last instant at which the caller had
    /// read every pending message. A client whose heartbeat still waits in
    /// the socket is thus never expired because the broker fell behind.
    pub fn tick_drained(&mut self, now: Instant, drained: Instant) {
        // Buffered deliveries go out now: first every closed connection is
        // taken note of (see `connections_lost`), else only what is ready.
        let retries = self.out.buffers.next_retry().is_some_and(|at| at <= now);
        self.connections_lost(retries, now);
        self.out.retry_buffered(now);
        while let Some(rid) = self.clients.pop_noop(now) {
            self.out.send(&rid, &Reply::Noop.to_frames(), now);
        }
        while let Some(client) = self.clients.pop_expired(drained) {
            self.subs.forget(&client);
            self.out.discard(&client.id, "it expired", now);
            let silent = now.saturating_duration_since(client.last_heard);
            self.out.log.log(
                Level::Info,
                format_args!(
                    "client {} expired (silent for {} ms, ttl {} ms)",
                    show(&client.id),
                    silent.as_millis(),
                    client.ttl.as_millis()
                ),
            );
        }
    }

    /// When [`tick`](Engine::tick) has work next (possibly early): a
    /// heartbeat, an expiry, or a retry of a client's buffer.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.clients.next_deadline(), self.out.buffers.next_retry()].into_iter().flatten().min()
    }

    /// Checks that the client and subscription tables agree and respect the
    /// limits and the allowlist; the text says what is wrong. For tests and
    /// fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut pairs = 0usize;
        for client in self.clients.iter() {
            if client.topics.len() > self.max_subscriptions {
                return Err(format!("client {} holds {} topics", show(&client.id), client.topics.len()));
            }
            if let Some(list) = &self.allowlist {
                match client.user.as_deref().and_then(|u| list.entry(u)) {
                    None => return Err(format!("client {} has no authorized key", show(&client.id))),
                    Some((_, entry)) if entry.name != client.identity => {
                        return Err(format!(
                            "client {} acts as {:?}, listed as {:?}",
                            show(&client.id),
                            client.identity,
                            entry.name
                        ))
                    }
                    Some(_) => {}
                }
            }
            for topic in &client.topics {
                if !self.subs.subscribers(topic).any(|s| *s == client.id) {
                    return Err(format!("{} missing from the subscribers of {}", show(&client.id), show(topic)));
                }
                pairs += 1;
            }
        }
        let mut listed = 0usize;
        for (topic, subscribers) in self.subs.iter() {
            if subscribers.is_empty() {
                return Err(format!("topic {} has no subscribers but is kept", show(topic)));
            }
            for sub in subscribers {
                match self.clients.get(sub) {
                    Some(c) if c.topics.contains(topic) => listed += 1,
                    _ => {
                        return Err(format!("{} subscribed to {} but not in the client table", show(sub), show(topic)))
                    }
                }
            }
        }
        if pairs != listed {
            return Err(format!("{pairs} client topics vs {listed} subscriptions"));
        }
        Ok(())
    }

    fn flush_suppressed(&mut self) {
        let n = self.out.drop_warn.take_suppressed();
        if n > 0 {
            self.out.log.log(
                Level::Warn,
                format_args!("{n} more messages dropped since the last warning; drops={}", self.out.stats.drops),
            );
        }
        for (limit, what) in [
            (&mut self.malformed_warn, "malformed messages"),
            (&mut self.denied_warn, "unauthorized messages"),
            (&mut self.violation_warn, "identity or role violations"),
            (&mut self.impostor_warn, "messages from routing ids of another key's session"),
        ] {
            let n = limit.take_suppressed();
            if n > 0 {
                self.out.log.log(Level::Warn, format_args!("{n} more {what} since the last warning"));
            }
        }
    }

    fn reply(&mut self, rid: &[u8], reply: Reply<'_>, now: Instant) {
        if self.out.send(rid, &reply.to_frames(), now) {
            self.clients.sent(rid, now);
        }
    }

    fn reply_error(&mut self, rid: &[u8], message: &str, id: Option<&[u8]>, now: Instant) {
        self.reply(rid, Reply::Error { message: message.as_bytes(), id }, now);
    }

    fn malformed(&mut self, rid: &[u8], error: &ProtocolError, id: Option<&[u8]>, now: Instant) {
        if let Some(suppressed) = self.malformed_warn.allow(now) {
            self.out.log.log(
                Level::Warn,
                format_args!("malformed message from {}: {error}{}", show(rid), more_since(suppressed, "")),
            );
        }
        self.reply_error(rid, &error.to_string(), id, now);
    }

    /// The ID of a message that may be over the frame limit, for an ERROR.
    fn lenient_id<'a, F: AsRef<[u8]>>(&self, rest: &'a [F]) -> Option<&'a [u8]> {
        let relaxed = Limits { max_frames: usize::MAX, ..self.limits };
        protocol::split(rest, &relaxed).ok().and_then(|env| Command::id_of(&env))
    }

    /// `"<z85> (<name>)"`, the key alone, or "none", for log lines.
    fn describe(&self, key: Option<&str>) -> String {
        match (key, &self.allowlist) {
            (Some(k), Some(list)) => list.describe(k),
            (Some(k), None) => k.to_string(),
            (None, _) => "none".into(),
        }
    }

    /// Refuses a message whose connection has no authorized key.
    fn deny<F: AsRef<[u8]>>(&mut self, rid: &[u8], rest: &[F], user: Option<&str>, now: Instant) {
        let id = self.lenient_id(rest);
        if let Some(suppressed) = self.denied_warn.allow(now) {
            let key = match user {
                Some(k) => format!("key {k} is not authorized"),
                None => "no key was authorized for its connection (no ZAP User-Id)".into(),
            };
            self.out.log.log(
                Level::Warn,
                format_args!("refused a message from {}: {key}{}", show(rid), more_since(suppressed, "")),
            );
        }
        self.reply_error(rid, ACCESS_DENIED, id, now);
    }

    /// Refuses a message from the routing id of a session that belongs to
    /// another key; the session is left as it was.
    fn impostor<F: AsRef<[u8]>>(
        &mut self,
        rid: &[u8],
        rest: &[F],
        user: Option<&str>,
        owner: Option<&str>,
        now: Instant,
    ) {
        self.out.stats.impostors += 1;
        let id = self.lenient_id(rest);
        if let Some(suppressed) = self.impostor_warn.allow(now) {
            self.out.log.log(
                Level::Warn,
                format_args!(
                    "refused a message from {} under key {}: that routing id belongs to the live session of key {}; \
                     impostors={}{}",
                    show(rid),
                    self.describe(user),
                    self.describe(owner),
                    self.out.stats.impostors,
                    more_since(suppressed, "")
                ),
            );
        }
        self.reply_error(rid, IMPOSTOR, id, now);
    }

    /// Applies `--identity-check` to a rule's verdict on a command: a
    /// violation is counted and logged, and with `enforce` becomes the
    /// command's error.
    fn judge(
        &mut self,
        rid: &[u8],
        sender: &Sender<'_>,
        what: &str,
        verdict: Result<(), Denial>,
        now: Instant,
    ) -> Result<(), String> {
        let Err(denial) = verdict else { return Ok(()) };
        self.out.stats.violations += 1;
        let enforce = self.identity_check == IdentityCheck::Enforce;
        if let Some(suppressed) = self.violation_warn.allow(now) {
            self.out.log.log(
                Level::Warn,
                format_args!(
                    "{} {what} from {} (key {}): {denial}; violations={}{}",
                    if enforce { "refused" } else { "allowed (--identity-check log)" },
                    show(rid),
                    self.describe(sender.key),
                    self.out.stats.violations,
                    more_since(suppressed, "")
                ),
            );
        }
        if enforce {
            Err(denial.0)
        } else {
            Ok(())
        }
    }

    fn handle_received<F: AsRef<[u8]>>(&mut self, frames: &[F], extra: usize, origin: Origin<'_>, now: Instant) {
        self.out.stats.msgs_in += 1;
        let Some((rid, rest)) = frames.split_first() else { return };
        let rid: &[u8] = rid.as_ref();
        if rest.is_empty() {
            self.out.log.log(Level::Debug, format_args!("ignoring an empty message from {}", show(rid)));
            return;
        }
        // A clone of the Arc, so entries can be borrowed across `&mut self`.
        let list = self.allowlist.clone();
        let listed = match &list {
            None => None,
            Some(list) => match origin.user.and_then(|u| list.entry(u)) {
                Some(entry) => Some(entry),
                None => return self.deny(rid, rest, origin.user, now),
            },
        };
        let sender = Sender { key: origin.user, listed, conn: origin.conn };
        let known = match self.clients.heard_as(rid, origin.user, origin.conn, now) {
            Heard::Known => true,
            Heard::Moved => {
                // Any earlier end of this connection number belongs to
                // another connection: take note of it before reusing it.
                self.connections_lost(true, now);
                self.clients.rebind(rid, origin.conn);
                true
            }
            Heard::Unknown => false,
            Heard::OtherKey(owner) => return self.impostor(rid, rest, origin.user, owner.as_deref(), now),
        };
        if extra > 0 {
            let id = self.lenient_id(rest);
            let error = ProtocolError::TooManyFrames { count: rest.len() + extra, limit: self.limits.max_frames };
            return self.malformed(rid, &error, id, now);
        }
        let env = match protocol::split(rest, &self.limits) {
            Ok(env) => env,
            Err(e) => return self.malformed(rid, &e, None, now),
        };
        let id = Command::id_of(&env);
        let command = match Command::from_envelope(env, &self.limits) {
            Ok(c) => c,
            Err(e) => return self.malformed(rid, &e, id, now),
        };
        if !known && !matches!(command, Command::Connect { .. }) {
            if self.out.log.enabled(Level::Debug) {
                self.out.log.log(
                    Level::Debug,
                    format_args!("{} from unknown client {}: answering not connected", verb(&command), show(rid)),
                );
            }
            return self.reply_error(rid, NOT_CONNECTED, id, now);
        }
        match self.execute(rid, &sender, command, now) {
            Ok(()) => {
                if let Some(id) = id {
                    self.reply(rid, Reply::Ok { id }, now);
                }
            }
            Err(message) => {
                if self.out.log.enabled(Level::Debug) {
                    self.out.log.log(Level::Debug, format_args!("refused a command from {}: {message}", show(rid)));
                }
                self.reply_error(rid, &message, id, now);
            }
        }
    }

    /// Runs a parsed command from a known client (or a CONNECT); an error is
    /// a limit or rule the command would break, and nothing of it was done.
    fn execute(&mut self, rid: &[u8], sender: &Sender<'_>, command: Command<'_>, now: Instant) -> Result<(), String> {
        match command {
            Command::Connect { version, ttl_ms, .. } => {
                if let Some(actor) = sender.actor() {
                    self.judge(rid, sender, "CONNECT", acl::check_connect(actor, rid), now)?;
                }
                let key = match sender.key {
                    Some(_) => format!(", key {}", self.describe(sender.key)),
                    None => String::new(),
                };
                let session = Session {
                    user: match sender.listed {
                        Some((key, _)) => Some(key.clone()),
                        None => sender.key.map(Arc::from),
                    },
                    identity: sender.listed.and_then(|(_, entry)| entry.name.clone()),
                    conn: sender.conn,
                };
                // As for a session that moves: an earlier end of this
                // connection number is not this connection's.
                self.connections_lost(true, now);
                let old = self.clients.connect(rid, session, Duration::from_millis(ttl_ms), now);
                let version = String::from_utf8_lossy(version);
                match old {
                    Some(old) => {
                        self.subs.forget(&old);
                        self.out.log.log(
                            Level::Info,
                            format_args!(
                                "client {} reconnected (version {version:?}, ttl {ttl_ms} ms{key}; {} old subscriptions dropped)",
                                show(rid),
                                old.topics.len()
                            ),
                        );
                    }
                    None => self.out.log.log(
                        Level::Info,
                        format_args!("client {} connected (version {version:?}, ttl {ttl_ms} ms{key})", show(rid)),
                    ),
                }
            }
            Command::Disconnect { .. } => {
                if let Some(client) = self.clients.remove(rid) {
                    self.subs.forget(&client);
                }
                self.out.log.log(Level::Info, format_args!("client {} disconnected", show(rid)));
            }
            Command::Sub { topics, .. } => {
                let Some(client) = self.clients.get(rid) else { return Ok(()) };
                let mut new: Vec<&[u8]> = topics.iter().copied().filter(|t| !client.topics.contains(*t)).collect();
                new.sort_unstable();
                new.dedup();
                if client.topics.len() + new.len() > self.max_subscriptions {
                    return Err(format!(
                        "too many subscriptions: {} held + {} new, over the limit of {} per client",
                        client.topics.len(),
                        new.len(),
                        self.max_subscriptions
                    ));
                }
                if let Some(actor) = sender.actor() {
                    let verdict = new.iter().try_for_each(|t| acl::check_subscribe(actor, t));
                    self.judge(rid, sender, "SUB", verdict, now)?;
                }
                let Some(client) = self.clients.get_mut(rid) else { return Ok(()) };
                let debug = self.out.log.enabled(Level::Debug);
                for topic in new {
                    let (key, _) = self.subs.subscribe(topic, &client.id);
                    client.topics.insert(key);
                    if debug {
                        self.out
                            .log
                            .log(Level::Debug, format_args!("client {} subscribed to {}", show(rid), show(topic)));
                    }
                }
            }
            Command::Unsub { topics, .. } => {
                let Some(client) = self.clients.get_mut(rid) else { return Ok(()) };
                let debug = self.out.log.enabled(Level::Debug);
                for topic in topics {
                    self.subs.unsubscribe(topic, rid);
                    client.topics.remove(topic);
                    if debug {
                        self.out
                            .log
                            .log(Level::Debug, format_args!("client {} unsubscribed from {}", show(rid), show(topic)));
                    }
                }
            }
            Command::Put { topic, mut headers, body, .. } => {
                let size: usize = body.iter().map(|b| b.len()).sum();
                if size > self.max_body_size {
                    return Err(format!("body is {size} bytes, over the limit of {}", self.max_body_size));
                }
                if let Some(actor) = sender.actor() {
                    self.judge(rid, sender, "PUT", acl::check_publish(actor, topic, &self.policy), now)?;
                }
                self.out.stats.puts += 1;
                let mut delivered = 0usize;
                if self.subs.subscribers(topic).next().is_some() {
                    // A connection that ended must not pass its routing id's
                    // deliveries on to one that took the id since.
                    self.connections_lost(true, now);
                    // The broker's stamp replaces any the client sent.
                    headers.retain(|(name, _)| *name != SENDER.as_bytes() && *name != SENDER_KEY.as_bytes());
                    let stamp = sender.stamp().map(|(header, value)| (header.as_bytes(), value.as_bytes()));
                    let headers = stamp.into_iter().chain(headers).collect();
                    // Built once; recipients share it (see `shared`).
                    let mut message = Shared::new(Reply::Message { topic, headers, body }.to_frames());
                    for sub in self.subs.subscribers(topic) {
                        let Some(client) = self.clients.get_mut(sub) else { continue };
                        let sent = if client.lost {
                            self.out.dropped(sub, 1, LOST, now);
                            false
                        } else {
                            self.out.send_shared(sub, &mut message, now)
                        };
                        if sent {
                            client.last_sent = now;
                            delivered += 1;
                        }
                    }
                }
                self.out.stats.delivered += delivered as u64;
                if self.out.log.enabled(Level::Debug) {
                    self.out.log.log(
                        Level::Debug,
                        format_args!("PUT {} ({size} bytes) from {} delivered to {delivered}", show(topic), show(rid)),
                    );
                }
            }
            Command::Noop { .. } => {}
        }
        Ok(())
    }
}

fn verb(command: &Command<'_>) -> &'static str {
    match command {
        Command::Connect { .. } => "CONNECT",
        Command::Disconnect { .. } => "DISCONNECT",
        Command::Sub { .. } => "SUB",
        Command::Unsub { .. } => "UNSUB",
        Command::Put { .. } => "PUT",
        Command::Noop { .. } => "NOOP",
    }
}

/// A routing id or topic for the log: quoted, non-printable bytes escaped
/// (libzmq's generated ids are binary).
fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every send; never drops.
    #[derive(Default)]
    struct Recorder(Vec<(Vec<u8>, Vec<Vec<u8>>)>);

    impl Transport for Recorder {
        fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
            self.0.push((rid.to_vec(), frames.to_vec()));
            Ok(())
        }
    }

    fn message(rid: &[u8], command: Command<'_>) -> Vec<Vec<u8>> {
        let mut frames = vec![rid.to_vec()];
        frames.extend(command.to_frames());
        frames
    }

    fn parse(frames: &[Vec<u8>]) -> Reply<'_> {
        Reply::parse(frames, &Limits::default()).unwrap()
    }

    #[test]
    fn messages_carry_the_senders_stamp_and_never_a_forged_one() {
        let config = Config { log_level: Level::Error, ..Config::default() };
        let mut engine = Engine::new(Recorder::default(), &config);
        let key = crate::keys::KeyPair::generate().unwrap().public;
        let list = Allowlist::from_keys([(&key, Some("web1"), acl::Role::Any)]).unwrap();
        engine.set_allowlist(Some(Arc::new(list)), Instant::now());
        let z85 = key_to_z85(&key);
        let from = Origin { user: Some(&z85), conn: Some(3) };
        let now = Instant::now();
        engine.handle(&message(b"web1 1 1", Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), from, now);
        engine.handle(&message(b"web1 1 1", Command::Sub { id: None, topics: vec![b"t"] }), from, now);
        let forged: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"admin"), (b"X-A", b"1"), (b"SENDER-KEY", b"forged")];
        let put = Command::Put { topic: b"t", headers: forged, id: None, body: vec![b"x"] };
        engine.handle(&message(b"web1 1 1", put), from, now);
        let (_, frames) = engine.transport().0.last().expect("delivered");
        let Reply::Message { headers, .. } = parse(frames) else { panic!("not a MESSAGE") };
        let want: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"web1"), (b"X-A", b"1")];
        assert_eq!(headers, want, "with an allowlist, the name alone");

        // Open mode: the key alone.
        engine.set_allowlist(None, now);
        let forged: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"admin"), (b"X-A", b"1")];
        engine.handle(
            &message(b"web1 1 1", Command::Put { topic: b"t", headers: forged, id: None, body: vec![b"x"] }),
            from,
            now,
        );
        let (_, frames) = engine.transport().0.last().expect("delivered");
        let Reply::Message { headers, .. } = parse(frames) else { panic!("not a MESSAGE") };
        let want: Vec<(&[u8], &[u8])> = vec![(b"SENDER-KEY", z85.as_bytes()), (b"X-A", b"1")];
        assert_eq!(headers, want, "in open mode, the key alone");
    }

    #[test]
    fn a_lost_connection_gets_nothing_until_its_session_speaks_again() {
        /// Reports the connections it is told about as lost.
        #[derive(Default)]
        struct Losing(Recorder, Vec<Conn>);
        impl Transport for Losing {
            fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
                self.0.deliver(rid, frames)
            }
            fn lost_connections(&mut self, lost: &mut Vec<Conn>, _all: bool) {
                lost.append(&mut self.1);
            }
        }
        let config = Config { log_level: Level::Error, ..Config::default() };
        let mut engine = Engine::new(Losing::default(), &config);
        let now = Instant::now();
        let on = |conn| Origin { user: Some("key-a"), conn: Some(conn) };
        let other = Origin { user: Some("key-b"), conn: Some(9) };
        let put = || message(b"pub", Command::Put { topic: b"t", headers: vec![], id: None, body: vec![b"x"] });
        engine.handle(&message(b"a", Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), on(5), now);
        engine.handle(&message(b"a", Command::Sub { id: None, topics: vec![b"t"] }), on(5), now);
        engine.handle(&message(b"pub", Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), other, now);
        engine.transport_mut().1.push(5);
        engine.handle(&put(), other, now);
        assert_eq!(engine.stats().delivered, 0, "the lost connection's routing id gets nothing");
        assert_eq!(engine.stats().drops, 1);
        // Another key on that routing id is refused, the session kept.
        engine.handle(&message(b"a", Command::Noop { id: Some(b"n") }), other, now);
        let (to, frames) = engine.transport().0 .0.last().unwrap();
        assert_eq!(
            (&to[..], parse(frames)),
            (&b"a"[..], Reply::Error { message: IMPOSTOR.as_bytes(), id: Some(b"n") })
        );
        assert_eq!(engine.stats().impostors, 1);
        // Its own key, from a new connection: served again.
        engine.handle(&message(b"a", Command::Noop { id: None }), on(6), now);
        engine.handle(&put(), other, now);
        assert_eq!(engine.stats().delivered, 1);
        engine.check_invariants().unwrap();
    }

    #[test]
    fn a_heartbeat_read_late_still_keeps_its_client() {
        let config = Config { log_level: Level::Error, ..Config::default() };
        let mut engine = Engine::new(Recorder::default(), &config);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let connect = |rid| message(rid, Command::Connect { version: b"test", ttl_ms: 1000, id: None });
        let sub = |rid| message(rid, Command::Sub { id: None, topics: vec![b"t"] });
        for rid in [b"late", b"mute"] {
            engine.handle(&connect(rid), Origin::default(), t0);
            engine.handle(&sub(rid), Origin::default(), t0);
        }
        // The broker stalled until 1.2 TTL. "late" sent its NOOP at 0.9 TTL,
        // still unread; the input was last drained at 0.9 TTL.
        engine.tick_drained(ms(1200), ms(900));
        assert_eq!(engine.stats().clients, 2, "nobody expired before the backlog is read");
        let noops = engine.transport().0.iter().filter(|(_, f)| Reply::parse(f, &Limits::default()) == Ok(Reply::Noop));
        assert_eq!(noops.count(), 2, "heartbeats are not held back");
        // The backlog is read in the same iteration, and the socket found
        // empty at 1.2 TTL: only the client that stayed silent expires.
        engine.handle(&message(b"late", Command::Noop { id: None }), Origin::default(), ms(1200));
        engine.tick_drained(ms(1200), ms(1200));
        let stats = engine.stats();
        assert_eq!((stats.clients, stats.topics), (1, 1), "{stats}");
        engine.handle(
            &message(b"late", Command::Put { topic: b"t", headers: vec![], id: None, body: vec![b"x"] }),
            Origin::default(),
            ms(1300),
        );
        assert_eq!(engine.stats().delivered, 1, "still subscribed");
        engine.check_invariants().unwrap();
    }
}
