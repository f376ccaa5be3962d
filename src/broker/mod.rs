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
//! - `ZMQ_ROUTER_HANDOVER`: a reconnecting client may reuse its routing id
//!   (legacy ids are `"<identity> <pid> <thread>"`); the newest connection
//!   takes it over instead of being refused.
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
//! - With `--authorized-keys`: `ZMQ_ZAP_DOMAIN` "mc0" and
//!   `ZMQ_ZAP_ENFORCE_DOMAIN` (see [Authorization](#authorization)).
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
//! dropped: forgotten with its subscriptions and sent [`ACCESS_DENIED`].

pub mod allowlist;
pub mod buffers;
pub mod clients;
pub mod logger;
pub mod shared;
pub mod subscriptions;
pub mod watch;
pub mod zap;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::keys::{key_to_z85, Key, KeyPair};
use crate::log::Level;
use crate::protocol::{self, Command, Limits, ProtocolError, Reply, NOT_CONNECTED};

use allowlist::{Allowlist, Fingerprint};
use buffers::{Buffers, Frames};
use clients::{Bytes, Clients};
use logger::{Logger, RateLimit};
use shared::Shared;
use subscriptions::Subscriptions;
use watch::Watcher;
use zap::{SharedAllowlist, ZapHandler};

/// The default TCP port (`PROTOCOL.md`).
pub const DEFAULT_PORT: u16 = 61616;
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
pub use crate::protocol::ACCESS_DENIED;

/// Longest the loop sleeps in one poll, so a stop request is seen promptly
/// even when the signal lands on a libzmq thread rather than this one.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// Messages handled per wake-up before timers get a turn.
const BATCH: usize = 1024;
const LINGER_MS: i32 = 500;
/// `ZMQ_ZAP_ENFORCE_DOMAIN` from libzmq's draft API (zmq.h).
const ZMQ_ZAP_ENFORCE_DOMAIN: libc::c_int = 93;

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
    /// Every message dropped: `full_drops`, and those to a client that is
    /// gone (disconnected, expired or revoked).
    pub drops: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clients={} topics={} in={} out={} puts={} delivered={} buffered={} full_drops={} drops={}",
            self.clients,
            self.topics,
            self.msgs_in,
            self.msgs_out,
            self.puts,
            self.delivered,
            self.buffered,
            self.full_drops,
            self.drops
        )
    }
}

/// The allowlist machinery of a running broker.
struct Auth {
    path: PathBuf,
    shared: SharedAllowlist,
    zap: ZapHandler,
    watcher: Watcher,
    poll: Option<Duration>,
}

impl Auth {
    fn current(&self) -> Arc<Allowlist> {
        self.shared.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A bound broker, ready to [`run`](Broker::run).
pub struct Broker {
    config: Config,
    socket: zmq::Socket,
    endpoint: String,
    public_key: Option<Key>,
    log: Logger,
    auth: Option<Auth>,
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
        let auth = match &config.authorized_keys {
            None => None,
            Some(path) => {
                if config.curve_secret_key.is_none() {
                    return Err(BrokerError(
                        "--authorized-keys needs CURVE: without it clients have no key to check".into(),
                    ));
                }
                // Taken before reading, so an edit made while loading is
                // noticed by the next poll.
                let fingerprint = Fingerprint::of(path);
                let list = Allowlist::load(path).map_err(|e| BrokerError(e.0))?;
                let shared: SharedAllowlist = Arc::new(RwLock::new(Arc::new(list)));
                let zap = ZapHandler::start(&ctx, shared.clone(), log.clone())?;
                zap.self_test(&ctx)?;
                let poll = config.authorized_keys_poll;
                let watcher = Watcher::start(path.clone(), fingerprint, poll, shared.clone(), log.clone())?;
                Some(Auth { path: path.clone(), shared, zap, watcher, poll })
            }
        };
        let mut socket = ctx.socket(zmq::ROUTER).map_err(|e| err("create the ROUTER socket", e))?;
        socket.set_backlog(config.backlog).map_err(|e| err("set ZMQ_BACKLOG", e))?;
        socket.set_router_handover(true).map_err(|e| err("set ZMQ_ROUTER_HANDOVER", e))?;
        socket.set_router_mandatory(true).map_err(|e| err("set ZMQ_ROUTER_MANDATORY", e))?;
        socket.set_sndhwm(config.sndhwm).map_err(|e| err("set ZMQ_SNDHWM", e))?;
        socket.set_rcvhwm(config.rcvhwm).map_err(|e| err("set ZMQ_RCVHWM", e))?;
        let max_frame = i64::try_from(config.limits.max_frame_size).unwrap_or(i64::MAX);
        socket.set_maxmsgsize(max_frame).map_err(|e| err("set ZMQ_MAXMSGSIZE", e))?;
        socket.set_linger(LINGER_MS).map_err(|e| err("set ZMQ_LINGER", e))?;
        if let Some(secret) = &config.curve_secret_key {
            socket.set_curve_secretkey(secret).map_err(|e| err("set the CURVE secret key", e))?;
            socket.set_curve_server(true).map_err(|e| err("enable CURVE", e))?;
        }
        if auth.is_some() {
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
        Ok(Broker { config, socket, endpoint, public_key, log, auth })
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
        let Broker { config, socket, endpoint, public_key, log, auth } = self;
        match &public_key {
            Some(k) => log.log(
                Level::Info,
                format_args!("mc0d {} listening on {endpoint} (CURVE, public key {})", crate::VERSION, key_to_z85(k)),
            ),
            None => log.log(
                Level::Warn,
                format_args!("mc0d {} listening on {endpoint} WITHOUT CURVE (--no-curve)", crate::VERSION),
            ),
        }
        let mut engine = Engine::new(socket, &config);
        if let Some(auth) = &auth {
            let list = auth.current();
            let polled = match auth.poll {
                Some(p) => format!("checked for changes every {} s", p.as_secs_f64()),
                None => "not polled".into(),
            };
            log.log(
                Level::Info,
                format_args!(
                    "only the {} authorized keys in {} may connect (reloaded on SIGHUP, {polled})",
                    list.len(),
                    auth.path.display()
                ),
            );
            if list.is_empty() {
                log.log(Level::Warn, format_args!("the authorized keys list is empty: no client can connect"));
            }
            engine.set_allowlist(Some(list), Instant::now());
        } else if public_key.is_some() {
            log.log(
                Level::Info,
                format_args!("any client with the broker's public key may connect (no --authorized-keys)"),
            );
        }
        let mut server = Server { engine, auth, frames: Vec::new(), user: String::new(), log: log.clone() };
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

/// The receiving side: the ROUTER loop that feeds an [`Engine`] and keeps
/// the allowlist current.
struct Server {
    engine: Engine<zmq::Socket>,
    auth: Option<Auth>,
    /// Reused receive buffer: routing id followed by the message frames.
    frames: Vec<Frame>,
    /// The current message's `User-Id` (with an allowlist only).
    user: String,
    log: Logger,
}

/// A received frame, viewable as bytes so the protocol parser can borrow it.
struct Frame(zmq::Message);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Server {
    fn serve(&mut self, stop: &AtomicBool, reload: &AtomicBool, status_interval: Duration) -> Result<(), BrokerError> {
        let mut next_status = Instant::now() + status_interval;
        // Heartbeats alone do not make the status line worth repeating.
        let key = |s: &Stats| (s.clients, s.topics, s.puts, s.delivered, s.buffered, s.drops);
        let mut last_status = key(&self.engine.stats());
        // The last instant at which a receive found nothing waiting: clients
        // are only expired for silence up to it (see Engine::tick_drained).
        let mut drained = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if reload.swap(false, Ordering::SeqCst) {
                match &self.auth {
                    Some(auth) => auth.watcher.request_reload(),
                    None => self.log.log(Level::Info, format_args!("SIGHUP: no --authorized-keys to reload")),
                }
            }
            if let Some(auth) = &self.auth {
                if !auth.zap.is_running() {
                    return Err(BrokerError("the ZAP handler stopped; refusing to serve without it".into()));
                }
                if !auth.watcher.is_running() {
                    return Err(BrokerError("the authorized-keys thread stopped; refusing to serve without it".into()));
                }
            }
            while let Some(reloaded) = self.auth.as_ref().and_then(|a| a.watcher.try_next()) {
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
            match self.engine.out.transport.poll(zmq::POLLIN, timeout) {
                // Even after a timeout: the receive below finding nothing is
                // what moves `drained` on.
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(BrokerError(format!("poll failed: {e}"))),
            }
            for _ in 0..BATCH {
                let at = Instant::now();
                match self.receive() {
                    Ok(Some((extra, has_user))) => {
                        let user = has_user.then_some(self.user.as_str());
                        self.engine.handle_received(&self.frames, extra, user, at);
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
                 {dropped} sessions dropped",
                took.as_millis(),
                list.len()
            ),
        );
    }

    /// Reads one whole message into `self.frames` (and its `User-Id` into
    /// `self.user`); `Ok(None)` when nothing is waiting. Frames beyond the
    /// limit are read and discarded (so a hostile sender cannot make the
    /// broker hold them); their count is returned, with whether a
    /// `User-Id` was present.
    fn receive(&mut self) -> Result<Option<(usize, bool)>, zmq::Error> {
        self.frames.clear();
        let keep = self.engine.limits.max_frames.saturating_add(1);
        let socket = &self.engine.out.transport;
        let mut extra = 0;
        let mut has_user = false;
        loop {
            let mut msg = zmq::Message::new();
            let first = self.frames.is_empty() && extra == 0;
            match socket.recv(&mut msg, zmq::DONTWAIT) {
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
            if self.frames.len() == 1 && extra == 0 && self.auth.is_some() {
                self.user.clear();
                if let Some(user) = msg.gets("User-Id") {
                    self.user.push_str(user);
                    has_user = true;
                }
            }
            let more = msg.get_more();
            if self.frames.len() < keep {
                self.frames.push(Frame(msg));
            } else {
                extra += 1;
            }
            if !more {
                return Ok(Some((extra, has_user)));
            }
        }
    }
}

/// Where an [`Engine`] sends its messages. Sends never block: an error
/// means the message was dropped (peer gone, or its queue is full).
pub trait Transport {
    /// Sends `frames` (delimiter first) to the client with routing id `rid`.
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error>;

    /// Sends one of the copies of a fan-out to `rid`; by default like
    /// [`deliver`](Transport::deliver) with its frames.
    fn deliver_shared(&mut self, rid: &[u8], message: &mut Shared) -> Result<(), zmq::Error> {
        self.deliver(rid, message.frames())
    }
}

impl Transport for zmq::Socket {
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
        // With ROUTER_MANDATORY only the routing-id frame can fail (unknown
        // peer or full pipe); once it is accepted the rest is queued.
        self.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            let more = if i < last { zmq::SNDMORE } else { 0 };
            self.send(&frame[..], more | zmq::DONTWAIT)?;
        }
        Ok(())
    }

    fn deliver_shared(&mut self, rid: &[u8], message: &mut Shared) -> Result<(), zmq::Error> {
        self.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
        message.send_frames(self)
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
    /// With an allowlist, every message must come from a listed key.
    allowlist: Option<Arc<Allowlist>>,
}

impl<T: Transport> Engine<T> {
    /// An engine with `config`'s limits and log level, no clients and no
    /// allowlist.
    pub fn new(transport: T, config: &Config) -> Self {
        let log = Logger::new(config.log_level);
        Engine {
            out: Out {
                transport,
                stats: Stats::default(),
                drop_warn: RateLimit::new(Duration::from_secs(1)),
                log,
                buffers: Buffers::new(config.client_buffer),
            },
            clients: Clients::new(),
            subs: Subscriptions::new(),
            limits: config.limits,
            max_body_size: config.max_body_size,
            max_subscriptions: config.max_subscriptions,
            malformed_warn: RateLimit::new(Duration::from_secs(1)),
            denied_warn: RateLimit::new(Duration::from_secs(1)),
            allowlist: None,
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
    /// key is not in the new list is dropped: forgotten with its
    /// subscriptions and sent [`ACCESS_DENIED`]. Returns how many.
    pub fn set_allowlist(&mut self, list: Option<Arc<Allowlist>>, now: Instant) -> usize {
        self.allowlist = list;
        let Some(list) = self.allowlist.clone() else { return 0 };
        let revoked: Vec<Bytes> = self
            .clients
            .iter()
            .filter(|c| !c.user.as_ref().is_some_and(|u| list.contains(u)))
            .map(|c| c.id.clone())
            .collect();
        for rid in &revoked {
            let Some(client) = self.clients.remove(rid) else { continue };
            self.subs.forget(&client);
            self.out.discard(rid, "its key is no longer authorized", now);
            let key = client.user.as_deref().unwrap_or("none");
            self.out.log.log(
                Level::Warn,
                format_args!(
                    "client {} dropped: its key {key} is no longer authorized ({} subscriptions dropped)",
                    show(rid),
                    client.topics.len()
                ),
            );
            self.reply_error(rid, ACCESS_DENIED, None, now);
        }
        revoked.len()
    }

    /// Handles one message: `frames[0]` is the routing id, the rest is what
    /// the client sent (delimiter first). `user` is the connection's
    /// `User-Id` metadata, which only matters with an allowlist.
    pub fn handle<F: AsRef<[u8]>>(&mut self, frames: &[F], user: Option<&str>, now: Instant) {
        self.handle_received(frames, 0, user, now);
    }

    /// Sends due heartbeats and forgets expired clients, for a caller that
    /// has read all input up to `now` (see [`tick_drained`](Engine::tick_drained)).
    pub fn tick(&mut self, now: Instant) {
        self.tick_drained(now, now);
    }

    /// Sends the heartbeats due at `now` and forgets the clients that were
    /// silent for 1.05 × TTL up to `drained`, the last instant at which the
    /// caller had read every pending message. A client whose heartbeat still
    /// waits in the socket is thus never expired because the broker fell
    /// behind.
    pub fn tick_drained(&mut self, now: Instant, drained: Instant) {
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
    /// limits; the text says what is wrong. For tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut pairs = 0usize;
        for client in self.clients.iter() {
            if client.topics.len() > self.max_subscriptions {
                return Err(format!("client {} holds {} topics", show(&client.id), client.topics.len()));
            }
            if let Some(list) = &self.allowlist {
                if !client.user.as_ref().is_some_and(|u| list.contains(u)) {
                    return Err(format!("client {} has no authorized key", show(&client.id)));
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
        let n = self.malformed_warn.take_suppressed();
        if n > 0 {
            self.out.log.log(Level::Warn, format_args!("{n} more malformed messages since the last warning"));
        }
        let n = self.denied_warn.take_suppressed();
        if n > 0 {
            self.out.log.log(Level::Warn, format_args!("{n} more unauthorized messages since the last warning"));
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

    fn handle_received<F: AsRef<[u8]>>(&mut self, frames: &[F], extra: usize, user: Option<&str>, now: Instant) {
        self.out.stats.msgs_in += 1;
        let Some((rid, rest)) = frames.split_first() else { return };
        let rid: &[u8] = rid.as_ref();
        if rest.is_empty() {
            self.out.log.log(Level::Debug, format_args!("ignoring an empty message from {}", show(rid)));
            return;
        }
        let user: Option<Arc<str>> = match &self.allowlist {
            None => None,
            Some(list) => match user.and_then(|u| list.lookup(u)) {
                Some(key) => Some(key.clone()),
                None => return self.deny(rid, rest, user, now),
            },
        };
        let known = self.clients.heard_as(rid, user.as_ref(), now);
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
        match self.execute(rid, user, command, now) {
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
    /// a limit the command would break, and nothing of it was done.
    fn execute(
        &mut self,
        rid: &[u8],
        user: Option<Arc<str>>,
        command: Command<'_>,
        now: Instant,
    ) -> Result<(), String> {
        match command {
            Command::Connect { version, ttl_ms, .. } => {
                let key = match (&user, &self.allowlist) {
                    (Some(u), Some(list)) => format!(", key {}", list.describe(u)),
                    _ => String::new(),
                };
                let old = self.clients.connect(rid, user, Duration::from_millis(ttl_ms), now);
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
                let Some(client) = self.clients.get_mut(rid) else { return Ok(()) };
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
            Command::Put { topic, headers, body, .. } => {
                let size: usize = body.iter().map(|b| b.len()).sum();
                if size > self.max_body_size {
                    return Err(format!("body is {size} bytes, over the limit of {}", self.max_body_size));
                }
                self.out.stats.puts += 1;
                let mut delivered = 0usize;
                let mut subscribers = self.subs.subscribers(topic).peekable();
                if subscribers.peek().is_some() {
                    // Built once; recipients share it (see `shared`).
                    let mut message = Shared::new(Reply::Message { topic, headers, body }.to_frames());
                    for sub in subscribers {
                        if self.out.send_shared(sub, &mut message, now) {
                            self.clients.sent(sub, now);
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

    #[test]
    fn a_heartbeat_read_late_still_keeps_its_client() {
        let config = Config { log_level: Level::Error, ..Config::default() };
        let mut engine = Engine::new(Recorder::default(), &config);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let connect = |rid| message(rid, Command::Connect { version: b"test", ttl_ms: 1000, id: None });
        let sub = |rid| message(rid, Command::Sub { id: None, topics: vec![b"t"] });
        for rid in [b"late", b"mute"] {
            engine.handle(&connect(rid), None, t0);
            engine.handle(&sub(rid), None, t0);
        }
        // The broker stalled until 1.2 TTL. "late" sent its NOOP at 0.9 TTL,
        // still unread; the input was last drained at 0.9 TTL.
        engine.tick_drained(ms(1200), ms(900));
        assert_eq!(engine.stats().clients, 2, "nobody expired before the backlog is read");
        let noops = engine.transport().0.iter().filter(|(_, f)| Reply::parse(f, &Limits::default()) == Ok(Reply::Noop));
        assert_eq!(noops.count(), 2, "heartbeats are not held back");
        // The backlog is read in the same iteration, and the socket found
        // empty at 1.2 TTL: only the client that stayed silent expires.
        engine.handle(&message(b"late", Command::Noop { id: None }), None, ms(1200));
        engine.tick_drained(ms(1200), ms(1200));
        let stats = engine.stats();
        assert_eq!((stats.clients, stats.topics), (1, 1), "{stats}");
        engine.handle(
            &message(b"late", Command::Put { topic: b"t", headers: vec![], id: None, body: vec![b"x"] }),
            None,
            ms(1300),
        );
        assert_eq!(engine.stats().delivered, 1, "still subscribed");
        engine.check_invariants().unwrap();
    }
}
