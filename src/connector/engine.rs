//! The engine: the one thread that owns the DEALER socket (a `zmq::Socket`
//! is not `Sync`, and one owner means no locking around it).
//!
//! It polls the socket, the wake pipe and the socket's monitor together, so
//! it reacts at once to broker traffic, to requests and to the transport
//! coming and going, and otherwise sleeps exactly until its next deadline
//! (heartbeat, liveness, handshake, backoff, close).
//!
//! Link states:
//! - `Connecting`: no ZMTP session with the broker. libzmq (re)connects the
//!   TCP connection by itself, every 0.1 s doubling up to
//!   [`TCP_RETRY_MAX`]; nothing is handed to the socket meanwhile
//!   (`ZMQ_IMMEDIATE`: a send without a session would fail, so publishes stay
//!   in our own queue). The monitor's HANDSHAKE_SUCCEEDED ends it: CONNECT
//!   goes out at once.
//! - `Handshaking`: CONNECT sent, waiting for its OK. Publishes queue up and
//!   subscribe calls wait; everything resumes on the OK, which re-makes
//!   every subscription first.
//! - `Ready`: normal operation. Every command carries an ID and is matched
//!   to its OK/ERROR; MESSAGEs go to the inbox whatever else is pending.
//! - `Backoff`: the link was declared dead (1.05 × TTL of broker silence, no
//!   answer to CONNECT, key refused); the socket is closed and a new one
//!   opens after a capped exponential delay with jitter.
//!
//! The monitor's DISCONNECTED (the broker closed the connection: it stopped,
//! crashed or restarted) ends a session at once, whatever the heartbeat and
//! whatever the broker, so a restarted broker (ours, or a legacy one that
//! never says "not connected") gets CONNECT and every subscription as soon
//! as libzmq has reconnected. What was handed to the socket during the lost
//! session and not answered may or may not have reached the broker: PUTs
//! among it are dropped and counted (at-most-once), never sent twice.
//! Heartbeat silence stays the backstop for a broker that keeps the TCP
//! connection open but does not answer (stopped, partitioned).
//!
//! "ERROR ... not connected" means the broker forgot us (restart or expiry):
//! the engine sends CONNECT again on the same socket. The broker handles one
//! client's commands in order, so when CONNECT's OK arrives every earlier
//! command has been answered or was lost with the old broker.
//!
//! A broker with a client-key allowlist refuses an unlisted key during the
//! CURVE handshake (ZAP status 400). ZeroMQ hides that from the socket's
//! user, and then gives up on the connection for good (libzmq treats it as
//! a protocol error: no reconnect). A socket monitor turns the event into
//! the error "broker refused our key", at once instead of after
//! `connect_timeout`; so does the broker's `ERROR "access denied..."` when
//! our key is revoked while connected. During `connect()` it fails the
//! call; later it is logged (once per episode) and the link is reset, so
//! the engine retries with its usual capped backoff and picks up a key
//! listed again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::logging::clog;
use super::{secs, Answer, Error, ErrorKind, Message, Publish, Request, Shared};
use crate::config::Settings;
use crate::keys::key_to_z85;
use crate::log::Level;
use crate::protocol::{self, heartbeat, Command, Limits, Reply};

/// The `<n>` of routing ids: unique per socket within the process.
static SOCKET_COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 random bits as 16 hex digits, from the kernel.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the remaining length into the buffer.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
        if n <= 0 {
            // Only EINTR is possible here (the kernel has had its entropy
            // since boot); a failure leaves the rest as it is.
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
            continue;
        }
        filled += n as usize;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Most topics per SUB when re-subscribing, well under the frame limit.
const TOPICS_PER_SUB: usize = 1000;
/// Messages read per poll wake-up before attending to requests again.
const RECV_BATCH: usize = 4096;
/// PUTs handed to the socket per loop turn; the loop reads (up to
/// [`RECV_BATCH`]) between two batches. A connector that publishes hard to a
/// topic it is subscribed to gets an OK and a MESSAGE back per PUT: its
/// inbound side must never wait behind a long run of sends.
const SEND_BATCH: usize = 256;
/// First reconnect delay; doubles per failed attempt up to `reconnect_max`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// libzmq's first TCP reconnect interval (`ZMQ_RECONNECT_IVL`, plus up to
/// as much jitter); it doubles per refused attempt up to [`TCP_RETRY_MAX`].
const TCP_RETRY_BASE: Duration = Duration::from_millis(100);
/// Cap of libzmq's TCP reconnect interval (`ZMQ_RECONNECT_IVL_MAX`, or
/// `reconnect_max` if smaller). A broker that comes back is reached at most
/// this + [`TCP_RETRY_BASE`] (jitter) later, however long it was away; then
/// one CURVE handshake and two round trips (CONNECT, SUB) and every
/// subscription is back: about 1.2 s at worst on a LAN. The price: while the
/// broker is down each node tries once a second (a refused TCP connection).
const TCP_RETRY_MAX: Duration = Duration::from_secs(1);

enum State {
    /// No ZMTP session: libzmq is (re)connecting; CONNECT goes out when the
    /// monitor reports a completed handshake.
    Connecting,
    Handshaking {
        deadline: Instant,
    },
    Ready,
    Backoff {
        until: Instant,
    },
}

/// A command sent (or queued in the outbox) that waits for OK/ERROR by ID.
enum Pending {
    Connect,
    Sub { topics: Vec<Vec<u8>>, answers: Vec<Answer> },
    Unsub { answer: Option<Answer> },
    Put(Queued),
    Probe,
    Disconnect,
}

struct Queued {
    /// Publish order, for flush() and for putting refused PUTs back in place.
    seq: u64,
    publish: Publish,
}

/// Frames the socket refused for now (high-water mark); sent first later.
struct Out {
    id: Option<u64>,
    frames: Vec<Vec<u8>>,
}

struct Closing {
    answer: Answer,
    deadline: Instant,
    disconnect_id: Option<u64>,
}

enum SendError {
    WouldBlock(Vec<Vec<u8>>),
    Fatal(zmq::Error),
}

pub(crate) struct Engine {
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    ctx: zmq::Context,
    socket: Option<zmq::Socket>,
    /// Handshake events of `socket` (a PAIR connected to its monitor).
    monitor: Option<zmq::Socket>,
    /// The broker refused our key and no handshake has succeeded since.
    refused: bool,
    routing_id: String,
    state: State,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    outbox: VecDeque<Out>,
    /// Topics held: re-subscribed after every handshake.
    topics: BTreeSet<Vec<u8>>,
    /// Subscribe calls waiting for the handshake's re-subscribe.
    parked: Vec<Answer>,
    /// Publishes not yet sent, in `seq` order.
    publishes: VecDeque<Queued>,
    inflight_puts: usize,
    next_seq: u64,
    /// Seqs of publishes neither acknowledged nor dropped.
    unfinished: BTreeSet<u64>,
    /// flush() calls: answered when no unfinished seq is below the mark.
    flushes: Vec<(u64, Answer)>,
    last_send: Instant,
    last_recv: Instant,
    probe_sent: Option<Instant>,
    attempt: u32,
    closing: Option<Closing>,
    /// connect() waiting for the first handshake.
    ready: Option<Answer>,
    /// connect()'s bound, while `ready` waits.
    connect_deadline: Instant,
    /// The ID of the current session's CONNECT: an answer to an earlier
    /// command belongs to a session that is gone.
    session_start: u64,
    link_failed: bool,
    exit: bool,
    rng: u64,
    limits: Limits,
    dropped_warned: u64,
}

impl Engine {
    /// An engine that has not started connecting yet: [`run`](Engine::run)
    /// does that on its own thread, so name resolution is bounded by
    /// connect()'s wait like everything else.
    pub fn new(settings: Arc<Settings>, shared: Arc<Shared>, ready: Answer) -> Engine {
        let now = Instant::now();
        let seed = now.elapsed().as_nanos() as u64
            ^ std::process::id() as u64
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let connect_deadline = now + settings.connect_timeout;
        Engine {
            settings,
            shared,
            ctx: zmq::Context::new(),
            socket: None,
            monitor: None,
            refused: false,
            routing_id: String::new(),
            state: State::Backoff { until: now },
            next_id: 0,
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            topics: BTreeSet::new(),
            parked: Vec::new(),
            publishes: VecDeque::new(),
            inflight_puts: 0,
            next_seq: 0,
            unfinished: BTreeSet::new(),
            flushes: Vec::new(),
            last_send: now,
            last_recv: now,
            probe_sent: None,
            attempt: 0,
            closing: None,
            ready: Some(ready),
            connect_deadline,
            session_start: 0,
            link_failed: false,
            exit: false,
            rng: seed | 1,
            limits: Limits::default(),
            dropped_warned: 0,
        }
    }

    /// The thread body. A panic is contained here so that callers still get
    /// answers (Closed) instead of waiting out their timeouts.
    pub fn run(mut self) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.main_loop()));
        if let Err(panic) = result {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            clog!(Level::Error, "mc0 connector {}: internal error, connector closed: {what}", self.routing_id);
        }
        self.shutdown();
    }

    fn main_loop(&mut self) {
        // A name that does not resolve would only make libzmq retry in the
        // background until connect_timeout; say so at once instead.
        if let Err(e) = self.settings.check_host_resolves().and_then(|()| self.open_socket()) {
            if let Some(ready) = self.ready.take() {
                ready.send(Err(e));
            }
            return;
        }
        loop {
            let now = Instant::now();
            self.take_requests(now);
            self.on_timers(now);
            self.pump(now);
            if self.link_failed {
                self.link_failed = false;
                self.reset_link(now);
            }
            if self.exit {
                return;
            }
            let timeout = self.poll_timeout(now);
            let (wake, readable, monitor_readable) = {
                let mut items = Vec::with_capacity(3);
                items.push(zmq::PollItem::from_fd(self.shared.waker.fd(), zmq::POLLIN));
                let mut monitor_at = None;
                if let Some(socket) = &self.socket {
                    let events = if self.outbox.is_empty() { zmq::POLLIN } else { zmq::POLLIN | zmq::POLLOUT };
                    items.push(socket.as_poll_item(events));
                }
                if let Some(monitor) = &self.monitor {
                    monitor_at = Some(items.len());
                    items.push(monitor.as_poll_item(zmq::POLLIN));
                }
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        // Should not happen; avoid spinning if it does.
                        clog!(Level::Error, "mc0 connector {}: zmq_poll failed: {e}", self.routing_id);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                let socket_readable = self.socket.is_some() && items[1].is_readable();
                (items[0].is_readable(), socket_readable, monitor_at.is_some_and(|i| items[i].is_readable()))
            };
            if wake {
                self.shared.waker.drain();
            }
            // Input first: what the broker sent before a disconnect belongs
            // to the session the disconnect ends.
            if readable {
                self.receive_all(Instant::now());
            }
            if monitor_readable {
                self.on_monitor_events(Instant::now());
            }
        }
    }

    fn open_socket(&mut self) -> Result<(), Error> {
        let n = SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        // The random word keeps the id from being guessed: with CURVE, mc0d
        // lets no other connection take an id while it is in use, so a
        // guessed one could be taken first.
        let routing_id = format!("{} {} {} {}", self.settings.identity, std::process::id(), n, nonce());
        let s = &self.settings;
        let socket = self.ctx.socket(zmq::DEALER).map_err(|e| Error::zmq("cannot create a DEALER socket", e))?;
        let opt = |what: &str, r: zmq::Result<()>| r.map_err(|e| Error::zmq(what, e));
        opt("set ZMQ_LINGER", socket.set_linger(0))?;
        opt("set ZMQ_ROUTING_ID", socket.set_identity(routing_id.as_bytes()))?;
        opt("set ZMQ_RCVHWM", socket.set_rcvhwm(s.receive_queue.min(i32::MAX as usize) as i32))?;
        // Nothing waits in libzmq for a connection that is not there: a send
        // without a ZMTP session fails (EAGAIN) and stays in our queue, and
        // what was queued in a session that is lost is discarded with it
        // rather than sent to the next broker ahead of our CONNECT.
        opt("set ZMQ_IMMEDIATE", socket.set_immediate(true))?;
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128) as i32;
        opt("set ZMQ_RECONNECT_IVL", socket.set_reconnect_ivl(ms(TCP_RETRY_BASE)))?;
        opt("set ZMQ_RECONNECT_IVL_MAX", socket.set_reconnect_ivl_max(ms(TCP_RETRY_MAX.min(s.reconnect_max))))?;
        // A broker host that swallows SYNs is retried like a refused one.
        opt("set ZMQ_CONNECT_TIMEOUT", socket.set_connect_timeout(ms(s.connect_timeout).max(1)))?;
        if s.ipv6 {
            opt("set ZMQ_IPV6", socket.set_ipv6(true))?;
        }
        if let Some(keys) = &s.curve {
            opt("set ZMQ_CURVE_SERVERKEY", socket.set_curve_serverkey(&keys.server))?;
            opt("set ZMQ_CURVE_PUBLICKEY", socket.set_curve_publickey(&keys.public))?;
            opt("set ZMQ_CURVE_SECRETKEY", socket.set_curve_secretkey(&keys.secret))?;
        }
        // Before connect, so the first handshake is seen too.
        let monitor_endpoint = format!("inproc://mc0-monitor-{n}");
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw();
        opt("start the socket monitor", socket.monitor(&monitor_endpoint, i32::from(events)))?;
        let monitor = self.ctx.socket(zmq::PAIR).map_err(|e| Error::zmq("cannot create the monitor socket", e))?;
        opt("set ZMQ_LINGER", monitor.set_linger(0))?;
        opt("connect the socket monitor", monitor.connect(&monitor_endpoint))?;
        socket.connect(&s.endpoint).map_err(|e| Error::zmq(&format!("cannot connect to {}", s.endpoint), e))?;
        clog!(Level::Debug, "mc0 connector {routing_id}: socket connecting to {}", s.endpoint);
        self.socket = Some(socket);
        self.monitor = Some(monitor);
        self.state = State::Connecting;
        self.routing_id = routing_id.clone();
        *self.shared.routing_id.lock().unwrap_or_else(|e| e.into_inner()) = routing_id;
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn no_answer_message(&self) -> String {
        let hint = if self.settings.curve.is_some() {
            "is it running, and is broker.public_key its key?"
        } else {
            "is it running, and is its CURVE setting off like ours (curve = false)?"
        };
        format!(
            "no answer from broker {}:{} within {} ({hint})",
            self.settings.host,
            self.settings.port,
            secs(self.settings.connect_timeout)
        )
    }

    // ---- requests from the handles ----

    fn take_requests(&mut self, now: Instant) {
        let items: Vec<Request> = {
            let mut requests = self.shared.requests.lock().unwrap_or_else(|e| e.into_inner());
            requests.items.drain(..).collect()
        };
        for request in items {
            self.on_request(request, now);
        }
    }

    fn on_request(&mut self, request: Request, now: Instant) {
        match request {
            Request::Subscribe { topic, answer } => {
                if self.closing.is_some() {
                    answer.send(Err(Error::closed()));
                    return;
                }
                self.topics.insert(topic.clone());
                if matches!(self.state, State::Ready) {
                    let id = self.next_id();
                    let frames = Command::Sub { id: Some(id.to_string().as_bytes()), topics: vec![&topic] }.to_frames();
                    self.pending.insert(id, Pending::Sub { topics: vec![topic], answers: vec![answer] });
                    self.send(Some(id), frames, now);
                } else {
                    self.parked.push(answer);
                }
            }
            Request::Unsubscribe { topic, answer } => {
                if self.closing.is_some() {
                    answer.send(Err(Error::closed()));
                    return;
                }
                self.topics.remove(&topic);
                if matches!(self.state, State::Ready) {
                    let id = self.next_id();
                    let frames =
                        Command::Unsub { id: Some(id.to_string().as_bytes()), topics: vec![&topic] }.to_frames();
                    self.pending.insert(id, Pending::Unsub { answer: Some(answer) });
                    self.send(Some(id), frames, now);
                } else {
                    // The next session starts without it anyway.
                    answer.send(Ok(()));
                }
            }
            Request::Publish(publish) => {
                if self.closing.is_some() {
                    self.shared.queued_publishes.fetch_sub(1, Ordering::SeqCst);
                    self.shared.counters.publishes_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.unfinished.insert(seq);
                self.publishes.push_back(Queued { seq, publish });
            }
            Request::Flush { answer } => {
                self.flushes.push((self.next_seq, answer));
                self.check_flushes();
                if !self.flushes.is_empty() && matches!(self.state, State::Ready) {
                    // A barrier: its OK settles every PUT sent before it,
                    // even if the broker dropped their OKs (see
                    // settle_answered_before).
                    self.send_probe(now);
                }
            }
            Request::Close { answer } => self.start_close(answer, now),
        }
    }

    fn start_close(&mut self, answer: Answer, now: Instant) {
        if self.closing.is_some() {
            // Already closing (e.g. connect() gave up first): nothing more to do.
            answer.send(Ok(()));
            return;
        }
        let deadline = now + self.settings.close_timeout;
        self.closing = Some(Closing { answer, deadline, disconnect_id: None });
        if !matches!(self.state, State::Ready) || self.settings.close_timeout.is_zero() {
            self.exit = true;
        }
        // Otherwise pump() sends the queued publishes, then DISCONNECT.
    }

    // ---- timers ----

    fn on_timers(&mut self, now: Instant) {
        if let Some(closing) = &self.closing {
            if now >= closing.deadline {
                clog!(
                    Level::Warn,
                    "mc0 connector {}: broker did not confirm DISCONNECT within {}; closing anyway",
                    self.routing_id,
                    secs(self.settings.close_timeout)
                );
                self.exit = true;
                return;
            }
        }
        if self.ready.is_some() && now >= self.connect_deadline {
            let message = self.no_answer_message();
            if let Some(ready) = self.ready.take() {
                ready.send(Err(Error::new(ErrorKind::Timeout, message)));
            }
            self.exit = true;
            return;
        }
        match self.state {
            // libzmq keeps reconnecting; the monitor says when it succeeded.
            State::Connecting => {}
            State::Handshaking { deadline } if now >= deadline => {
                let message = self.no_answer_message();
                clog!(Level::Warn, "mc0 connector {}: {message}; reconnecting", self.routing_id);
                self.reset_link(now);
            }
            State::Handshaking { .. } => {}
            State::Backoff { until } if now >= until => match self.open_socket() {
                Ok(()) => {}
                Err(e) => {
                    clog!(Level::Error, "mc0 connector {}: {e}", self.routing_id);
                    self.schedule_backoff(now);
                }
            },
            State::Backoff { .. } => {}
            State::Ready => {
                if now >= self.silence_deadline() {
                    clog!(
                        Level::Warn,
                        "mc0 connector {}: no traffic from broker {} for {}; reconnecting",
                        self.routing_id,
                        self.settings.endpoint,
                        secs(now - self.last_recv)
                    );
                    self.reset_link(now);
                } else if self.idle_probe_at().into_iter().chain(self.silence_probe_at()).any(|at| now >= at) {
                    // With an ID the broker answers at once, which also proves
                    // it alive when its own NOOP is late.
                    self.probe_sent = Some(now);
                    self.send_probe(now);
                }
            }
        }
    }

    /// Sends `NOOP` with an ID: the broker answers at once.
    fn send_probe(&mut self, now: Instant) {
        let id = self.next_id();
        self.pending.insert(id, Pending::Probe);
        self.send(Some(id), Command::Noop { id: Some(id.to_string().as_bytes()) }.to_frames(), now);
    }

    /// When the link counts as dead: the broker silent for 1.05 × TTL.
    fn silence_deadline(&self) -> Instant {
        self.last_recv + heartbeat::dead_after(self.settings.ttl)
    }

    /// When we will have sent nothing for 0.95 × TTL (PROTOCOL.md). None
    /// while the last probe is still waiting in the outbox (socket at its
    /// high-water mark), or the loop would spin queueing probes.
    fn idle_probe_at(&self) -> Option<Instant> {
        let armed = self.probe_sent.map_or(true, |at| at <= self.last_send);
        armed.then(|| self.last_send + heartbeat::noop_after(self.settings.ttl))
    }

    /// When the broker will have been silent for 0.95 × TTL: ask it, once,
    /// rather than rely on its own NOOP arriving within the last 0.1 × TTL.
    fn silence_probe_at(&self) -> Option<Instant> {
        let armed = self.probe_sent.map_or(true, |at| at < self.last_recv);
        armed.then(|| self.last_recv + heartbeat::noop_after(self.settings.ttl))
    }

    fn poll_timeout(&self, now: Instant) -> i64 {
        let mut next = now + Duration::from_secs(60);
        let mut consider = |t: Instant| next = next.min(t);
        if let Some(closing) = &self.closing {
            consider(closing.deadline);
        }
        if self.ready.is_some() {
            consider(self.connect_deadline);
        }
        match self.state {
            State::Connecting => {}
            State::Handshaking { deadline } => consider(deadline),
            State::Backoff { until } => consider(until),
            State::Ready => {
                if self.can_send_publishes() {
                    return 0;
                }
                consider(self.silence_deadline());
                self.idle_probe_at().into_iter().chain(self.silence_probe_at()).for_each(consider);
            }
        }
        let wait = next.saturating_duration_since(now);
        // Round up so the loop does not wake a hair early and spin.
        ((wait.as_micros() + 999) / 1000).min(i64::MAX as u128) as i64
    }

    fn schedule_backoff(&mut self, now: Instant) {
        let exp = BACKOFF_BASE.saturating_mul(1u32 << self.attempt.min(16));
        let cap = exp.min(self.settings.reconnect_max);
        // Jitter in [0.5, 1.0) spreads a fleet reconnecting after a broker restart.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        let delay = cap.mul_f64(jitter);
        self.attempt = self.attempt.saturating_add(1);
        self.state = State::Backoff { until: now + delay };
        clog!(Level::Info, "mc0 connector: reconnecting to {} in {}", self.settings.endpoint, secs(delay));
    }

    // ---- link management ----

    /// Sends CONNECT (on the current socket) and waits for its OK.
    fn start_handshake(&mut self, now: Instant) {
        self.requeue_outbox();
        let id = self.next_id();
        self.pending.insert(id, Pending::Connect);
        self.session_start = id;
        self.state = State::Handshaking { deadline: now + self.settings.connect_timeout };
        let frames = Command::Connect {
            version: protocol::PROTOCOL_VERSION.as_bytes(),
            ttl_ms: self.settings.ttl_ms,
            id: Some(id.to_string().as_bytes()),
        }
        .to_frames();
        self.send(Some(id), frames, now);
    }

    /// Unsent frames are not lost: PUTs go back to the queue, others are
    /// settled as if lost (subscribes wait for the re-subscribe).
    fn requeue_outbox(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for out in outbox {
            if let Some(pending) = out.id.and_then(|id| self.pending.remove(&id)) {
                match pending {
                    Pending::Put(q) => {
                        self.inflight_puts -= 1;
                        self.requeue(q);
                    }
                    other => {
                        self.settle_lost(other);
                    }
                }
            }
        }
    }

    /// Puts a PUT back into the send queue at its place in publish order.
    fn requeue(&mut self, q: Queued) {
        self.shared.queued_publishes.fetch_add(1, Ordering::SeqCst);
        let at = self.publishes.partition_point(|p| p.seq < q.seq);
        self.publishes.insert(at, q);
    }

    /// Settles a command whose answer will never come. Returns 1 for a
    /// dropped PUT (for the caller's log line), else 0.
    fn settle_lost(&mut self, pending: Pending) -> u64 {
        match pending {
            Pending::Connect | Pending::Probe | Pending::Disconnect => 0,
            Pending::Sub { answers, .. } => {
                self.parked.extend(answers);
                0
            }
            Pending::Unsub { answer } => {
                if let Some(answer) = answer {
                    answer.send(Ok(()));
                }
                0
            }
            Pending::Put(q) => {
                self.finish_publish(q.seq, false);
                1
            }
        }
    }

    /// Settles a PUT that was in flight: acknowledged, or dropped for good.
    fn finish_publish(&mut self, seq: u64, acknowledged: bool) {
        self.inflight_puts -= 1;
        self.unfinished.remove(&seq);
        let counter =
            if acknowledged { &self.shared.counters.published } else { &self.shared.counters.publishes_dropped };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn check_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let lowest = self.unfinished.first().copied().unwrap_or(u64::MAX);
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flushes).into_iter().partition(|(mark, _)| lowest >= *mark);
        self.flushes = waiting;
        for (_, answer) in done {
            answer.send(Ok(()));
        }
    }

    /// Ends the current session: what never left us goes back to the
    /// queues, what was handed to the socket and is unanswered is settled as
    /// lost (PUTs dropped: they may have been delivered).
    fn abandon_session(&mut self) {
        self.shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        self.requeue_outbox();
        let pending = std::mem::take(&mut self.pending);
        let mut dropped = 0;
        for (_, p) in pending {
            dropped += self.settle_lost(p);
        }
        if dropped > 0 {
            clog!(
                Level::Warn,
                "mc0 connector {}: {dropped} publishes were sent but not acknowledged before the link died; \
                 not resending them (at-most-once)",
                self.routing_id
            );
        }
        self.check_flushes();
        self.probe_sent = None;
    }

    /// Declares the link dead: closes the socket and schedules a new one.
    fn reset_link(&mut self, now: Instant) {
        self.abandon_session();
        self.socket = None;
        self.monitor = None;
        if self.closing.is_some() {
            self.exit = true;
            return;
        }
        self.schedule_backoff(now);
    }

    /// The monitor saw a ZMTP handshake complete: a new session with a broker
    /// that may know nothing of us (restarted, or a legacy broker that would
    /// adopt us silently without our subscriptions). CONNECT at once; its OK
    /// re-makes every subscription.
    fn on_transport_up(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting) {
            // A new session can only follow the end of the previous one.
            self.on_transport_down(now);
        }
        if matches!(self.state, State::Connecting) && !self.exit {
            self.start_handshake(now);
        }
    }

    /// The monitor saw the connection close (the broker stopped, crashed or
    /// restarted; or an attempt failed). libzmq reconnects by itself.
    fn on_transport_down(&mut self, now: Instant) {
        match self.state {
            State::Connecting | State::Backoff { .. } => return,
            State::Ready => clog!(
                Level::Warn,
                "mc0 connector {}: broker {} closed the connection; reconnecting",
                self.routing_id,
                self.settings.endpoint
            ),
            State::Handshaking { .. } => {}
        }
        // Replies of the lost session already received come first.
        if let Some(socket) = &self.socket {
            // Processes libzmq's pending commands, so recv sees them.
            let _ = socket.get_events();
        }
        self.receive_all(now);
        if self.exit {
            return;
        }
        self.abandon_session();
        self.state = State::Connecting;
        if self.closing.is_some() {
            self.exit = true;
        }
    }

    /// The broker no longer knows us: CONNECT again on the same socket.
    fn renegotiate(&mut self, now: Instant) {
        if self.closing.is_some() {
            self.exit = true;
            return;
        }
        if matches!(self.state, State::Ready) {
            clog!(
                Level::Warn,
                "mc0 connector {}: broker {} does not know us (restarted?); sending CONNECT again",
                self.routing_id,
                self.settings.endpoint
            );
            self.start_handshake(now);
        }
    }

    fn on_handshake_ok(&mut self, connect_id: u64, now: Instant) {
        self.state = State::Ready;
        self.attempt = 0;
        self.last_recv = now;
        self.probe_sent = None;
        self.shared.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        // The broker answers a client's commands in order: anything sent
        // before this CONNECT and still unanswered is gone.
        let stale: Vec<u64> = self.pending.range(..connect_id).map(|(id, _)| *id).collect();
        let mut dropped = 0;
        for id in stale {
            if let Some(p) = self.pending.remove(&id) {
                dropped += self.settle_lost(p);
            }
        }
        if dropped > 0 {
            clog!(
                Level::Warn,
                "mc0 connector {}: {dropped} publishes sent before the broker restarted were never acknowledged; \
                 not resending them (at-most-once)",
                self.routing_id
            );
        }
        self.check_flushes();
        match self.ready.take() {
            Some(ready) => {
                ready.send(Ok(()));
            }
            None => clog!(
                Level::Info,
                "mc0 connector {}: connected again to {}; re-subscribing {} topics",
                self.routing_id,
                self.settings.endpoint,
                self.topics.len()
            ),
        }
        self.resubscribe(now);
    }

    fn resubscribe(&mut self, now: Instant) {
        let mut answers = std::mem::take(&mut self.parked);
        if self.topics.is_empty() {
            for answer in answers {
                answer.send(Ok(()));
            }
            return;
        }
        let topics: Vec<Vec<u8>> = self.topics.iter().cloned().collect();
        let chunks: Vec<&[Vec<u8>]> = topics.chunks(TOPICS_PER_SUB).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let id = self.next_id();
            let frames =
                Command::Sub { id: Some(id.to_string().as_bytes()), topics: chunk.iter().map(|t| &t[..]).collect() }
                    .to_frames();
            // Waiters need every chunk; the last one's OK implies the others'.
            let chunk_answers = if i == last { std::mem::take(&mut answers) } else { Vec::new() };
            self.pending.insert(id, Pending::Sub { topics: chunk.to_vec(), answers: chunk_answers });
            self.send(Some(id), frames, now);
        }
    }

    // ---- sending ----

    fn send(&mut self, id: Option<u64>, frames: Vec<Vec<u8>>, now: Instant) {
        if !self.outbox.is_empty() {
            self.outbox.push_back(Out { id, frames });
            return;
        }
        let Some(socket) = &self.socket else {
            self.outbox.push_back(Out { id, frames });
            return;
        };
        match try_send(socket, frames) {
            Ok(()) => self.last_send = now,
            Err(SendError::WouldBlock(frames)) => self.outbox.push_back(Out { id, frames }),
            Err(SendError::Fatal(e)) => {
                clog!(Level::Error, "mc0 connector {}: send failed: {e}", self.routing_id);
                self.link_failed = true;
            }
        }
    }

    /// Whether a queued publish may go out now: the session is up, the
    /// socket takes more, and the broker's OKs keep up. Closing sends
    /// everything queued; otherwise at most `send_queue` wait for their OK.
    fn can_send_publishes(&self) -> bool {
        let window = if self.closing.is_some() { usize::MAX } else { self.settings.send_queue };
        matches!(self.state, State::Ready)
            && self.outbox.is_empty()
            && !self.publishes.is_empty()
            && self.inflight_puts < window
    }

    /// Sends what the socket takes: the outbox first, then (when the link is
    /// up) a batch of queued publishes within the in-flight limit, then a
    /// pending DISCONNECT when closing.
    fn pump(&mut self, now: Instant) {
        if self.socket.is_none() || self.exit {
            return;
        }
        while let Some(out) = self.outbox.pop_front() {
            let socket = self.socket.as_ref().expect("checked above");
            match try_send(socket, out.frames) {
                Ok(()) => self.last_send = now,
                Err(SendError::WouldBlock(frames)) => {
                    self.outbox.push_front(Out { id: out.id, frames });
                    return;
                }
                Err(SendError::Fatal(e)) => {
                    clog!(Level::Error, "mc0 connector {}: send failed: {e}", self.routing_id);
                    self.link_failed = true;
                    return;
                }
            }
        }
        if !matches!(self.state, State::Ready) {
            return;
        }
        // One batch per turn: what has arrived is read before more goes out
        // (poll_timeout is 0 while more can go).
        for _ in 0..SEND_BATCH {
            if !self.can_send_publishes() || self.link_failed {
                break;
            }
            let Some(q) = self.publishes.pop_front() else { break };
            self.shared.queued_publishes.fetch_sub(1, Ordering::SeqCst);
            let id = self.next_id();
            let frames = put_frames(&q.publish, id);
            self.inflight_puts += 1;
            self.pending.insert(id, Pending::Put(q));
            self.send(Some(id), frames, now);
        }
        let disconnect_due = matches!(&self.closing, Some(c) if c.disconnect_id.is_none()) && self.publishes.is_empty();
        if disconnect_due {
            let id = self.next_id();
            self.pending.insert(id, Pending::Disconnect);
            if let Some(closing) = &mut self.closing {
                closing.disconnect_id = Some(id);
            }
            self.send(Some(id), Command::Disconnect { id: Some(id.to_string().as_bytes()) }.to_frames(), now);
        }
    }

    // ---- receiving ----

    fn receive_all(&mut self, now: Instant) {
        let mut messages = Vec::new();
        for _ in 0..RECV_BATCH {
            let Some(socket) = &self.socket else { break };
            let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => {
                    clog!(Level::Error, "mc0 connector {}: receive failed: {e}", self.routing_id);
                    self.link_failed = true;
                    break;
                }
            };
            self.last_recv = now;
            self.on_frames(&frames, &mut messages, now);
            if self.exit || self.socket.is_none() {
                break;
            }
        }
        if !messages.is_empty() {
            self.deliver(messages);
        }
    }

    fn on_frames(&mut self, frames: &[Vec<u8>], messages: &mut Vec<Message>, now: Instant) {
        let reply = match Reply::parse(frames, &self.limits) {
            Ok(reply) => reply,
            Err(e) => {
                clog!(
                    Level::Warn,
                    "mc0 connector {}: ignoring a malformed message from the broker: {e}",
                    self.routing_id
                );
                return;
            }
        };
        match reply {
            Reply::Noop => {}
            Reply::Message { topic, headers, body } => {
                self.shared.counters.received.fetch_add(1, Ordering::Relaxed);
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                let mut message = Message {
                    topic: text(topic),
                    headers: Vec::with_capacity(headers.len()),
                    body: if body.len() == 1 { body[0].to_vec() } else { body.concat() },
                    sender: None,
                    sender_key: None,
                };
                for (name, value) in headers {
                    match name {
                        n if n == protocol::SENDER.as_bytes() => message.sender = Some(text(value)),
                        n if n == protocol::SENDER_KEY.as_bytes() => message.sender_key = Some(text(value)),
                        _ => message.headers.push((text(name), value.to_vec())),
                    }
                }
                messages.push(message);
            }
            Reply::Ok { id } => {
                if let Some(id) = parse_id(id) {
                    self.on_ok(id, now);
                }
            }
            Reply::Error { message, id } => {
                let message = String::from_utf8_lossy(message).into_owned();
                self.on_error(message, id.and_then(parse_id), now);
            }
        }
    }

    fn on_ok(&mut self, id: u64, now: Instant) {
        let Some(pending) = self.pending.remove(&id) else {
            // An answer to a command settled as lost, e.g. after a re-handshake.
            return;
        };
        if !matches!(pending, Pending::Connect) {
            self.settle_answered_before(id);
        }
        self.settle_ok(id, pending, now);
    }

    /// The broker answers one client's commands in order, so an answer to
    /// `id` means every earlier command was handled too: their answers were
    /// dropped on the way (a broker drops replies to a client whose queue is
    /// full). Without this a lost OK would pin its PUT in flight forever.
    /// (Not for CONNECT: commands before it went to a broker that forgot us.)
    fn settle_answered_before(&mut self, id: u64) {
        while let Some((&first, _)) = self.pending.first_key_value() {
            if first >= id {
                break;
            }
            let pending = self.pending.remove(&first).expect("present");
            if matches!(pending, Pending::Connect) {
                // Cannot precede a later answer; keep it to be safe.
                self.pending.insert(first, pending);
                break;
            }
            self.settle_ok(first, pending, Instant::now());
        }
    }

    fn settle_ok(&mut self, id: u64, pending: Pending, now: Instant) {
        match pending {
            Pending::Connect => self.on_handshake_ok(id, now),
            Pending::Sub { answers, .. } => {
                for answer in answers {
                    answer.send(Ok(()));
                }
            }
            Pending::Unsub { answer } => {
                if let Some(answer) = answer {
                    answer.send(Ok(()));
                }
            }
            Pending::Put(q) => {
                self.finish_publish(q.seq, true);
                self.check_flushes();
            }
            Pending::Probe => {}
            Pending::Disconnect => self.exit = true,
        }
    }

    fn on_error(&mut self, message: String, id: Option<u64>, now: Instant) {
        if message == protocol::ACCESS_DENIED {
            // Our key was revoked (or never authorized): nothing on this
            // connection will be served. A new socket is refused at the
            // handshake until the key is listed again.
            self.key_refused("the broker answered \"access denied\"", now);
            return;
        }
        let not_connected = message == protocol::NOT_CONNECTED || message.starts_with("not connected");
        let pending = id.and_then(|id| self.pending.remove(&id));
        let rid = self.routing_id.clone();
        match pending {
            None => {
                // A "not connected" to a command of a session already
                // replaced says nothing about the current one.
                if not_connected && id.map_or(true, |id| id >= self.session_start) {
                    self.renegotiate(now);
                } else if !not_connected {
                    clog!(Level::Warn, "mc0 connector {rid}: broker error: {message}");
                }
            }
            Some(Pending::Connect) => {
                let error = Error::new(ErrorKind::Broker, format!("broker refused CONNECT: {message}"));
                if let Some(ready) = self.ready.take() {
                    ready.send(Err(error));
                    self.exit = true;
                } else {
                    clog!(Level::Error, "mc0 connector {rid}: {error}");
                    self.reset_link(now);
                }
            }
            Some(Pending::Put(q)) if not_connected => {
                // Never delivered: send it again after the re-handshake.
                self.inflight_puts -= 1;
                self.requeue(q);
                self.renegotiate(now);
            }
            Some(Pending::Sub { answers, .. }) if not_connected => {
                // The topics are still held; the re-subscribe answers these.
                self.parked.extend(answers);
                self.renegotiate(now);
            }
            Some(other) if not_connected => {
                self.settle_lost(other);
                self.renegotiate(now);
            }
            Some(Pending::Sub { topics, answers }) => {
                self.settle_answered_before(id.unwrap_or(0));
                for topic in &topics {
                    self.topics.remove(topic);
                }
                for answer in answers {
                    answer.send(Err(Error::new(ErrorKind::Broker, format!("subscribe: {message}"))));
                }
            }
            Some(Pending::Unsub { answer }) => {
                self.settle_answered_before(id.unwrap_or(0));
                if let Some(answer) = answer {
                    answer.send(Err(Error::new(ErrorKind::Broker, format!("unsubscribe: {message}"))));
                }
            }
            Some(Pending::Put(q)) => {
                self.settle_answered_before(id.unwrap_or(0));
                clog!(
                    Level::Warn,
                    "mc0 connector {rid}: broker refused a publish to {:?}: {message}",
                    String::from_utf8_lossy(&q.publish.topic)
                );
                self.finish_publish(q.seq, false);
                self.check_flushes();
            }
            Some(Pending::Probe) => clog!(Level::Warn, "mc0 connector {rid}: broker error on NOOP: {message}"),
            Some(Pending::Disconnect) => self.exit = true,
        }
    }

    // ---- handshake events ----

    fn on_monitor_events(&mut self, now: Instant) {
        loop {
            let Some(monitor) = &self.monitor else { return };
            let frames = match monitor.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(_) => return,
            };
            // Frame 0: event (u16) and value (u32), native byte order.
            let Some(head) = frames.first().filter(|f| f.len() >= 6) else { continue };
            let event = u16::from_ne_bytes([head[0], head[1]]);
            let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
            match zmq::SocketEvent::from_raw(event) {
                zmq::SocketEvent::HANDSHAKE_SUCCEEDED => {
                    if std::mem::take(&mut self.refused) {
                        clog!(Level::Info, "mc0 connector {}: the broker accepts our key again", self.routing_id);
                    }
                    self.on_transport_up(now);
                }
                zmq::SocketEvent::DISCONNECTED => self.on_transport_down(now),
                zmq::SocketEvent::HANDSHAKE_FAILED_AUTH => {
                    self.key_refused(&format!("handshake refused, ZAP status {value}"), now);
                }
                zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL => {
                    clog!(
                        Level::Warn,
                        "mc0 connector {}: handshake with {} failed: ZMTP protocol error {value:#x} \
                         (do both sides agree on curve?)",
                        self.routing_id,
                        self.settings.endpoint
                    );
                    // libzmq does not retry this. connect() fails at its
                    // deadline with a hint; later, a new socket retries.
                    if self.ready.is_none() {
                        self.reset_link(now);
                    }
                }
                _ => {}
            }
            if self.exit || self.socket.is_none() {
                return;
            }
        }
    }

    /// The broker will not serve our key: fails `connect()` if it is still
    /// waiting; else reports it once per episode and resets the link (the
    /// DEALER does not retry by itself), so a key listed again is picked up
    /// after the usual backoff.
    fn key_refused(&mut self, how: &str, now: Instant) {
        let key = self.settings.curve.as_ref().map_or_else(|| "(none: curve is off)".into(), |k| key_to_z85(&k.public));
        let message = format!(
            "broker refused our key {key} ({how}): it is not in the authorized keys of broker {}; \
             ask its operator to add our public key",
            self.settings.endpoint
        );
        if let Some(ready) = self.ready.take() {
            ready.send(Err(Error::new(ErrorKind::Broker, message)));
            self.exit = true;
            return;
        }
        if !std::mem::replace(&mut self.refused, true) {
            clog!(Level::Error, "mc0 connector {}: {message}; retrying", self.routing_id);
        }
        self.reset_link(now);
    }

    fn deliver(&mut self, messages: Vec<Message>) {
        let mut dropped = 0u64;
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            for message in messages {
                if inbox.messages.len() < self.settings.receive_queue {
                    inbox.messages.push_back(message);
                } else {
                    dropped += 1;
                }
            }
        }
        self.shared.inbox_ready.notify_all();
        if dropped > 0 {
            let total = self.shared.counters.messages_dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            // One line per 1000 drops keeps a stuck reader from flooding the log.
            if total / 1000 >= self.dropped_warned {
                self.dropped_warned = total / 1000 + 1;
                clog!(
                    Level::Warn,
                    "mc0 connector {}: receive queue full ({} messages); {total} messages dropped so far",
                    self.routing_id,
                    self.settings.receive_queue
                );
            }
        }
    }

    // ---- exit ----

    fn shutdown(&mut self) {
        let leftover: Vec<Request> = {
            let mut requests = self.shared.requests.lock().unwrap_or_else(|e| e.into_inner());
            requests.open = false;
            requests.items.drain(..).collect()
        };
        self.shared.close_inbox();
        for request in leftover {
            match request {
                Request::Subscribe { answer, .. }
                | Request::Unsubscribe { answer, .. }
                | Request::Flush { answer }
                | Request::Close { answer } => {
                    answer.send(Err(Error::closed()));
                }
                Request::Publish(_) => {
                    self.shared.queued_publishes.fetch_sub(1, Ordering::SeqCst);
                    self.shared.counters.publishes_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut unacknowledged = 0;
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Sub { answers, .. } => {
                    for answer in answers {
                        answer.send(Err(Error::closed()));
                    }
                }
                Pending::Unsub { answer: Some(answer) } => {
                    answer.send(Err(Error::closed()));
                }
                Pending::Put(_) => unacknowledged += 1,
                _ => {}
            }
        }
        let unsent = self.publishes.len() as u64;
        if unsent > 0 {
            self.shared.queued_publishes.fetch_sub(self.publishes.len(), Ordering::SeqCst);
            self.publishes.clear();
        }
        self.shared.counters.publishes_dropped.fetch_add(unsent, Ordering::Relaxed);
        if unsent + unacknowledged > 0 {
            clog!(
                Level::Warn,
                "mc0 connector {}: closed with {unsent} publishes unsent and {unacknowledged} unacknowledged",
                self.routing_id
            );
        }
        for answer in self.parked.drain(..) {
            answer.send(Err(Error::closed()));
        }
        for (_, answer) in self.flushes.drain(..) {
            answer.send(Err(Error::closed()));
        }
        if let Some(ready) = self.ready.take() {
            ready.send(Err(Error::closed()));
        }
        // Linger is 0: closing the socket never blocks, nor does the context.
        self.socket = None;
        if let Some(closing) = self.closing.take() {
            closing.answer.send(Ok(()));
        }
        clog!(Level::Debug, "mc0 connector {}: engine stopped", self.routing_id);
    }
}

fn put_frames(publish: &Publish, id: u64) -> Vec<Vec<u8>> {
    let id = id.to_string();
    Command::Put {
        topic: &publish.topic,
        headers: publish.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect(),
        id: Some(id.as_bytes()),
        body: vec![&publish.body],
    }
    .to_frames()
}

fn parse_id(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Sends a multipart message without blocking. The first frame (always the
/// empty delimiter) is sent as a copy, so the frames come back intact when
/// the socket is at its high-water mark; ZeroMQ accepts the remaining parts
/// of a message once its first part is in.
fn try_send(socket: &zmq::Socket, frames: Vec<Vec<u8>>) -> Result<(), SendError> {
    let last = frames.len() - 1;
    match socket.send(&frames[0][..], zmq::DONTWAIT | if last > 0 { zmq::SNDMORE } else { 0 }) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Err(SendError::WouldBlock(frames)),
        Err(e) => return Err(SendError::Fatal(e)),
    }
    for (i, frame) in frames.into_iter().enumerate().skip(1) {
        let flags = if i < last { zmq::SNDMORE } else { 0 };
        socket.send(frame, flags).map_err(SendError::Fatal)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_frames_carry_topic_headers_id_and_body() {
        let p = Publish {
            topic: b"c agent".to_vec(),
            headers: vec![(b"X-REPLY-TO".to_vec(), b"c reply me 1".to_vec())],
            body: b"\x00\x01".to_vec(),
        };
        let frames = put_frames(&p, 42);
        let cmd = Command::parse(&frames, &Limits::default()).unwrap();
        assert_eq!(
            cmd,
            Command::Put {
                topic: b"c agent",
                headers: vec![(b"X-REPLY-TO", b"c reply me 1")],
                id: Some(b"42"),
                body: vec![b"\x00\x01"]
            }
        );
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_id(b"17"), Some(17));
        assert_eq!(parse_id(b"x"), None);
        assert_eq!(parse_id(b"\xff"), None);
    }
}
