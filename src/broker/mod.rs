//! `mc0d`, the broker: one ROUTER socket, owned and touched by exactly one
//! thread (the one calling [`Broker::run`]), routing PUTs to the current
//! subscribers of their topic and keeping every client's heartbeat.
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
//!   how far one client may fall behind before messages to it are dropped.
//!   Large enough to absorb a reply burst from a 10 000-node fleet to a slow
//!   `mco` client; small enough that a stuck client costs bounded memory
//!   (10 000 × message size) and never delays anyone else.
//! - `ZMQ_RCVHWM` (default [`DEFAULT_RCVHWM`] = 1 000 messages, per client):
//!   inbound is fair-queued per connection; a full queue only stops reading
//!   that client's TCP stream (back-pressure on the publisher), nothing is lost.
//! - `ZMQ_MAXMSGSIZE` = the largest accepted frame: libzmq disconnects a
//!   peer that sends a bigger one before buffering it.
//! - `ZMQ_LINGER` 500 ms: pending replies get a bounded chance to leave at
//!   shutdown; a stuck peer cannot hold the exit.
//!
//! # Heartbeats
//!
//! See [`clients`]: one lazily-invalidated deadline heap; the loop sleeps in
//! `zmq_poll` until the next deadline (capped so a stop request is noticed).

pub mod clients;
pub mod logger;
pub mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::keys::{key_to_z85, Key, KeyPair};
use crate::log::Level;
use crate::protocol::{self, Command, Limits, ProtocolError, Reply, NOT_CONNECTED};

use clients::{Clients, Due};
use logger::{Logger, RateLimit};
use subscriptions::Subscriptions;

/// The default TCP port (`PROTOCOL.md`).
pub const DEFAULT_PORT: u16 = 61616;
/// Messages queued per client before sends to it are dropped (see module doc).
pub const DEFAULT_SNDHWM: i32 = 10_000;
/// Messages queued from each client before its stream is throttled.
pub const DEFAULT_RCVHWM: i32 = 1_000;
/// Pending-connection queue for the listening socket.
pub const DEFAULT_BACKLOG: i32 = 8192;

/// Longest the loop sleeps in one poll, so a stop request is seen promptly
/// even when the signal lands on a libzmq thread rather than this one.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// Messages handled per wake-up before timers get a turn.
const BATCH: usize = 1024;
const LINGER_MS: i32 = 500;

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
    pub rcvhwm: i32,
    pub backlog: i32,
    pub io_threads: i32,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "*".into(),
            port: DEFAULT_PORT,
            curve_secret_key: None,
            log_level: Level::Info,
            status_interval: Duration::from_secs(60),
            sndhwm: DEFAULT_SNDHWM,
            rcvhwm: DEFAULT_RCVHWM,
            backlog: DEFAULT_BACKLOG,
            io_threads: 1,
            limits: Limits::default(),
        }
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
    /// Sends that failed (peer gone or its queue full).
    pub drops: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clients={} topics={} in={} out={} puts={} delivered={} drops={}",
            self.clients, self.topics, self.msgs_in, self.msgs_out, self.puts, self.delivered, self.drops
        )
    }
}

/// A bound broker, ready to [`run`](Broker::run).
pub struct Broker {
    config: Config,
    socket: zmq::Socket,
    endpoint: String,
    public_key: Option<Key>,
    log: Logger,
}

impl Broker {
    /// Creates and binds the ROUTER socket. Fails (naming the cause) on a
    /// libzmq without CURVE, a bad key or an address that cannot be bound.
    pub fn bind(config: Config) -> Result<Broker, BrokerError> {
        let err = |what: &str, e: zmq::Error| BrokerError(format!("cannot {what}: {e}"));
        let public_key = match &config.curve_secret_key {
            Some(secret) => {
                crate::ensure_curve_support().map_err(BrokerError)?;
                Some(KeyPair::from_secret(*secret).map_err(BrokerError)?.public)
            }
            None => None,
        };
        let ctx = zmq::Context::new();
        ctx.set_io_threads(config.io_threads.max(1)).map_err(|e| err("set io threads", e))?;
        let socket = ctx.socket(zmq::ROUTER).map_err(|e| err("create the ROUTER socket", e))?;
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
        let log = Logger::new(config.log_level);
        Ok(Broker { config, socket, endpoint, public_key, log })
    }

    /// The endpoint the socket is bound to, e.g. `tcp://*:61616`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The CURVE public key clients must use, when CURVE is on.
    pub fn public_key(&self) -> Option<&Key> {
        self.public_key.as_ref()
    }

    /// Serves until `stop` becomes true; returns the final counters.
    pub fn run(self, stop: &AtomicBool) -> Result<Stats, BrokerError> {
        let Broker { config, socket, endpoint, public_key, log } = self;
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
        let mut state = State {
            out: Out {
                socket,
                stats: Stats::default(),
                drop_warn: RateLimit::new(Duration::from_secs(1)),
                log: log.clone(),
            },
            clients: Clients::new(),
            subs: Subscriptions::new(),
            limits: config.limits,
            malformed_warn: RateLimit::new(Duration::from_secs(1)),
            frames: Vec::new(),
        };
        let result = state.serve(stop, config.status_interval);
        let stats = state.snapshot();
        state.flush_suppressed();
        match &result {
            Ok(()) => log.log(Level::Info, format_args!("stopping: {stats}")),
            Err(e) => log.log(Level::Error, format_args!("stopping on error: {e}; {stats}")),
        }
        result.map(|()| stats)
    }
}

/// The sending half of the loop state, split off so a fan-out can iterate
/// the subscription table while sending.
struct Out {
    socket: zmq::Socket,
    stats: Stats,
    drop_warn: RateLimit,
    log: Logger,
}

impl Out {
    /// Sends one message to `rid`; false (and counted, logged) if dropped.
    fn send<F: AsRef<[u8]>>(&mut self, rid: &[u8], frames: &[F], now: Instant) -> bool {
        match send_frames(&self.socket, rid, frames) {
            Ok(()) => {
                self.stats.msgs_out += 1;
                true
            }
            Err(e) => {
                self.stats.drops += 1;
                let reason = match e {
                    zmq::Error::EHOSTUNREACH => "peer is gone".to_string(),
                    zmq::Error::EAGAIN => "its send queue is full (SNDHWM)".to_string(),
                    other => other.to_string(),
                };
                if let Some(suppressed) = self.drop_warn.allow(now) {
                    let more = if suppressed > 0 {
                        format!(" ({suppressed} more drops since the last warning)")
                    } else {
                        String::new()
                    };
                    self.log.log(
                        Level::Warn,
                        format_args!("dropped a message to {}: {reason}{more}; drops={}", show(rid), self.stats.drops),
                    );
                }
                false
            }
        }
    }
}

fn send_frames<F: AsRef<[u8]>>(socket: &zmq::Socket, rid: &[u8], frames: &[F]) -> Result<(), zmq::Error> {
    // With ROUTER_MANDATORY only the routing-id frame can fail (unknown peer
    // or full pipe); once it is accepted the rest of the message is queued.
    socket.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.iter().enumerate() {
        let more = if i < last { zmq::SNDMORE } else { 0 };
        socket.send(frame.as_ref(), more | zmq::DONTWAIT)?;
    }
    Ok(())
}

struct State {
    out: Out,
    clients: Clients,
    subs: Subscriptions,
    limits: Limits,
    malformed_warn: RateLimit,
    /// Reused receive buffer: routing id followed by the message frames.
    frames: Vec<Frame>,
}

/// A received frame, viewable as bytes so the protocol parser can borrow it.
struct Frame(zmq::Message);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl State {
    fn snapshot(&self) -> Stats {
        Stats { clients: self.clients.len(), topics: self.subs.topic_count(), ..self.out.stats.clone() }
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
    }

    fn serve(&mut self, stop: &AtomicBool, status_interval: Duration) -> Result<(), BrokerError> {
        let mut next_status = Instant::now() + status_interval;
        // Heartbeats alone do not make the status line worth repeating.
        let key = |s: &Stats| (s.clients, s.topics, s.puts, s.delivered, s.drops);
        let mut last_status = key(&self.snapshot());
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            self.run_timers(now);
            if now >= next_status {
                self.flush_suppressed();
                let stats = self.snapshot();
                if key(&stats) != last_status {
                    self.out.log.log(Level::Info, format_args!("status: {stats}"));
                    last_status = key(&stats);
                }
                next_status = now + status_interval;
            }
            let mut wake = (now + MAX_WAIT).min(next_status);
            if let Some(deadline) = self.clients.next_deadline() {
                wake = wake.min(deadline);
            }
            // Round up so a deadline 0.3 ms away does not spin.
            let timeout = ((wake.saturating_duration_since(now).as_micros() + 999) / 1000) as i64;
            match self.out.socket.poll(zmq::POLLIN, timeout) {
                Ok(0) | Err(zmq::Error::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(BrokerError(format!("poll failed: {e}"))),
            }
            for _ in 0..BATCH {
                match self.receive() {
                    Ok(Some(extra)) => {
                        let frames = std::mem::take(&mut self.frames);
                        self.handle(&frames, extra, Instant::now());
                        self.frames = frames;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(BrokerError(format!("receive failed: {e}"))),
                }
            }
        }
        Ok(())
    }

    /// Reads one whole message into `self.frames`; `Ok(None)` when nothing
    /// is waiting. Frames beyond the limit are read and discarded (so a
    /// hostile sender cannot make the broker hold them); their count is
    /// returned.
    fn receive(&mut self) -> Result<Option<usize>, zmq::Error> {
        self.frames.clear();
        let keep = self.limits.max_frames.saturating_add(1);
        let mut extra = 0;
        loop {
            let mut msg = zmq::Message::new();
            let first = self.frames.is_empty() && extra == 0;
            match self.out.socket.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN | zmq::Error::EINTR) if first => return Ok(None),
                // The rest of a multipart message is already here (libzmq
                // delivers them atomically); an interrupted read just resumes.
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let more = msg.get_more();
            if self.frames.len() < keep {
                self.frames.push(Frame(msg));
            } else {
                extra += 1;
            }
            if !more {
                return Ok(Some(extra));
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(due) = self.clients.pop_due(now) {
            match due {
                Due::Noop(rid) => {
                    self.out.send(&rid, &Reply::Noop.to_frames(), now);
                }
                Due::Expired(client) => {
                    for topic in &client.topics {
                        self.subs.unsubscribe(topic, &client.id);
                    }
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
            let more =
                if suppressed > 0 { format!(" ({suppressed} more since the last warning)") } else { String::new() };
            self.out.log.log(Level::Warn, format_args!("malformed message from {}: {error}{more}", show(rid)));
        }
        self.reply_error(rid, &error.to_string(), id, now);
    }

    fn handle(&mut self, frames: &[Frame], extra: usize, now: Instant) {
        self.out.stats.msgs_in += 1;
        let Some((rid, rest)) = frames.split_first() else { return };
        let rid: &[u8] = rid.as_ref();
        if rest.is_empty() {
            self.out.log.log(Level::Debug, format_args!("ignoring an empty message from {}", show(rid)));
            return;
        }
        let known = self.clients.heard(rid, now);
        if extra > 0 {
            let relaxed = Limits { max_frames: usize::MAX, ..self.limits };
            let id = protocol::split(rest, &relaxed).ok().and_then(|env| Command::id_of(&env));
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
            self.out.log.log(
                Level::Debug,
                format_args!("{} from unknown client {}: answering not connected", verb(&command), show(rid)),
            );
            return self.reply_error(rid, NOT_CONNECTED, id, now);
        }
        self.execute(rid, command, now);
        if let Some(id) = id {
            self.reply(rid, Reply::Ok { id }, now);
        }
    }

    fn execute(&mut self, rid: &[u8], command: Command<'_>, now: Instant) {
        match command {
            Command::Connect { version, ttl_ms, .. } => {
                let old = self.clients.connect(rid, Duration::from_millis(ttl_ms), now);
                let version = String::from_utf8_lossy(version);
                match old {
                    Some(old) => {
                        for topic in &old.topics {
                            self.subs.unsubscribe(topic, rid);
                        }
                        self.out.log.log(
                            Level::Info,
                            format_args!(
                                "client {} reconnected (version {version:?}, ttl {ttl_ms} ms; {} old subscriptions dropped)",
                                show(rid),
                                old.topics.len()
                            ),
                        );
                    }
                    None => self.out.log.log(
                        Level::Info,
                        format_args!("client {} connected (version {version:?}, ttl {ttl_ms} ms)", show(rid)),
                    ),
                }
            }
            Command::Disconnect { .. } => {
                if let Some(client) = self.clients.remove(rid) {
                    for topic in &client.topics {
                        self.subs.unsubscribe(topic, rid);
                    }
                }
                self.out.log.log(Level::Info, format_args!("client {} disconnected", show(rid)));
            }
            Command::Sub { topics, .. } => {
                let Some(client) = self.clients.get_mut(rid) else { return };
                for topic in topics {
                    let (key, _) = self.subs.subscribe(topic, &client.id);
                    client.topics.insert(key);
                    self.out.log.log(Level::Debug, format_args!("client {} subscribed to {}", show(rid), show(topic)));
                }
            }
            Command::Unsub { topics, .. } => {
                let Some(client) = self.clients.get_mut(rid) else { return };
                for topic in topics {
                    self.subs.unsubscribe(topic, rid);
                    client.topics.remove(topic);
                    self.out
                        .log
                        .log(Level::Debug, format_args!("client {} unsubscribed from {}", show(rid), show(topic)));
                }
            }
            Command::Put { topic, headers, body, .. } => {
                self.out.stats.puts += 1;
                let mut delivered = 0usize;
                let mut subscribers = self.subs.subscribers(topic).peekable();
                if subscribers.peek().is_some() {
                    // Built once; each send copies the frames into the socket.
                    let frames = Reply::Message { topic, headers, body: body.clone() }.to_frames();
                    for sub in subscribers {
                        if self.out.send(sub, &frames, now) {
                            self.clients.sent(sub, now);
                            delivered += 1;
                        }
                    }
                }
                self.out.stats.delivered += delivered as u64;
                if self.out.log.enabled(Level::Debug) {
                    let size: usize = body.iter().map(|b| b.len()).sum();
                    self.out.log.log(
                        Level::Debug,
                        format_args!("PUT {} ({size} bytes) from {} delivered to {delivered}", show(topic), show(rid)),
                    );
                }
            }
            Command::Noop { .. } => {}
        }
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
