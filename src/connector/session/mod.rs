//! The connector's session with the broker as a state machine without
//! sockets: caller requests, broker replies, transport events and the
//! clock go in; frames to send (the outbox), answers to callers, received
//! messages and link commands (open a new socket, close this one) come out.
//! The engine thread (`engine.rs`) moves them between this and the
//! transport; `model_tests.rs` drives it against a model instead.
//!
//! Link states:
//! - `Backoff`: no socket. The link was given up (1.05 × TTL of broker
//!   silence, no answer to CONNECT, key refused) or never opened; a new
//!   socket is asked for after a capped exponential delay with jitter.
//! - `Connecting`: a socket, but no session with the broker. The transport
//!   (libzmq) reconnects by itself; nothing is sent meanwhile. The
//!   transport's `Event::Up` ends it: CONNECT goes out at once.
//! - `Handshaking`: CONNECT sent, waiting for its OK. Publishes queue up and
//!   subscribe calls wait; everything resumes on the OK, which re-makes
//!   every subscription first.
//! - `Ready`: normal operation. Every command carries an ID and is matched
//!   to its OK/ERROR; MESSAGEs are delivered whatever else is pending.
//!
//! `Event::Down` (the broker closed the connection: it stopped, crashed
//! or restarted) ends a session at once, whatever the heartbeat and
//! whatever the broker, so a restarted broker (ours, or a legacy one that
//! never says "not connected") gets CONNECT and every subscription as soon
//! as the transport has reconnected. What was handed to the transport during
//! the lost session and not answered may or may not have reached the
//! broker: PUTs among it are dropped and counted (at-most-once), never sent
//! twice. Heartbeat silence stays the backstop for a broker that keeps the
//! connection open but does not answer (stopped, partitioned).
//!
//! "ERROR ... not connected" means the broker forgot us (restart or expiry):
//! CONNECT again on the same socket. The broker handles one client's
//! commands in order, so when CONNECT's OK arrives every earlier command has
//! been answered or was lost with the old broker.
//!
//! Failover: with a pool of brokers (`broker.host = a,b,c` or `pool.N.*`)
//! each link the session declares dead ‒ silence, no answer to CONNECT,
//! key refused, handshake failed, a name that does not resolve, a refused
//! or timed-out TCP connection (`Event::Refused`), and the broker closing
//! the connection (`Event::Down`, which with one broker only means waiting
//! for it on the same socket) ‒ moves the session to the next broker of its
//! order (shuffled once with `randomize`), after the jittered backoff so a
//! fleet leaving a dead broker spreads over the survivors. There it is a
//! new session as after any reconnect: CONNECT, every held topic
//! re-subscribed, then the queued publishes, once each.
//!
//! A broker with a client-key allowlist refuses an unlisted key during the
//! handshake (`Event::KeyRefused`), or answers `ERROR "access denied..."`
//! once our key is revoked. During `connect()` either fails the call ("broker
//! refused our key"); later it is logged (once per episode) and the link is
//! reset, so a key listed again is picked up after the usual backoff.

mod link;
mod publishes;
mod replies;
mod subscriptions;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Settings;
use super::heartbeat::{Backoff, Heartbeat};
use super::logging::clog;
use super::message::{Counters, Message};
use super::oneshot::Answer;
use super::shared::{Publish, Request};
use super::Error;
use crate::log::Level;
use crate::protocol::{Command, Limits};
use subscriptions::Topic;

/// Most topics per SUB when re-subscribing, well under the frame limit.
const TOPICS_PER_SUB: usize = 1000;
/// PUTs handed out per [`Session::pump`]; the engine reads what has
/// arrived between two batches. A connector that publishes hard to a topic
/// it is subscribed to gets an OK and a MESSAGE back per PUT: its inbound
/// side must never wait behind a long run of sends.
const SEND_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Backoff { until: Instant },
    Connecting,
    Handshaking { deadline: Instant },
    Ready,
}

/// What the session asks of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Open a new socket (the previous one is closed) to this broker of
    /// `Settings::brokers`.
    Open(usize),
    /// Close the socket: this session is over.
    Close,
}

/// Frames to hand to the transport, and the ID of the command they carry.
#[derive(Debug)]
pub(crate) struct Out {
    pub id: u64,
    pub frames: Vec<Vec<u8>>,
}

/// A command sent (or in the outbox) waiting for OK/ERROR by ID.
enum Pending {
    Connect,
    /// The callers waiting on these topics are in `topics`.
    Sub {
        topics: Vec<Vec<u8>>,
    },
    Unsub {
        answer: Option<Answer>,
    },
    Put(Queued),
    Probe,
    Disconnect,
}

struct Queued {
    /// Publish order, for flush() and for putting refused PUTs back in place.
    seq: u64,
    publish: Publish,
}

struct Closing {
    answer: Answer,
    deadline: Instant,
    disconnect_id: Option<u64>,
}

/// `connect()` until the first session is up.
struct First {
    /// The caller of a plain connect, failed or satisfied by the first
    /// attempt; None with `connect_retry` (nobody waits: failures are
    /// logged and retried).
    answer: Option<Answer>,
    /// When the current attempt counts as unanswered.
    deadline: Option<Instant>,
    /// "broker: why" for each broker that failed the first connect().
    failures: Vec<String>,
}

pub(crate) struct Session {
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    /// The current socket's routing id, for log lines.
    rid: String,
    state: State,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    outbox: VecDeque<Out>,
    links: VecDeque<Link>,
    topics: BTreeMap<Vec<u8>, Topic>,
    /// Publishes not yet sent, in `seq` order.
    publishes: VecDeque<Queued>,
    inflight_puts: usize,
    next_seq: u64,
    /// Seqs of publishes neither acknowledged nor dropped.
    unfinished: BTreeSet<u64>,
    /// flush() calls: answered when no unfinished seq is below the mark.
    flushes: Vec<(u64, Answer)>,
    deliveries: Vec<Message>,
    heartbeat: Heartbeat,
    backoff: Backoff,
    closing: Option<Closing>,
    first: Option<First>,
    /// The ID of the current session's CONNECT: an answer to an earlier
    /// command belongs to a session that is gone.
    session_start: u64,
    /// The broker refused our key and no handshake has succeeded since.
    refused: bool,
    /// Indexes into `settings.brokers`, in the order they are tried.
    order: Vec<usize>,
    /// The current broker's position in `order`.
    at: usize,
    /// With a pool: when the current socket's attempt to reach its broker
    /// counts as failed (no session yet).
    attempt_deadline: Option<Instant>,
    exit: bool,
    limits: Limits,
    /// The broker of this session sent a delivery in the compact form, so
    /// it reads ACK id lists (`AckForm::List`); until then, and anew with
    /// every CONNECT, one id per frame, which every broker reads.
    lists_acks: bool,
}

impl Session {
    /// A session that asks for its first socket at once. `ready` is the
    /// caller of a plain connect (None with `connect_retry`); `seed` seeds
    /// the backoff's jitter.
    pub fn new(
        settings: Arc<Settings>,
        counters: Arc<Counters>,
        ready: Option<Answer>,
        seed: u64,
        now: Instant,
    ) -> Session {
        let deadline = ready.as_ref().map(|_| now + settings.connect_timeout);
        let mut order: Vec<usize> = (0..settings.brokers.len()).collect();
        if settings.randomize {
            shuffle(&mut order, seed);
        }
        counters.broker.store(order[0], std::sync::atomic::Ordering::Relaxed);
        Session {
            heartbeat: Heartbeat::new(settings.ttl, now),
            backoff: Backoff::new(settings.reconnect_initial, settings.reconnect_max, seed),
            settings,
            counters,
            rid: String::new(),
            state: State::Backoff { until: now },
            next_id: 0,
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            links: VecDeque::new(),
            topics: BTreeMap::new(),
            publishes: VecDeque::new(),
            inflight_puts: 0,
            next_seq: 0,
            unfinished: BTreeSet::new(),
            flushes: Vec::new(),
            deliveries: Vec::new(),
            closing: None,
            first: Some(First { answer: ready, deadline, failures: Vec::new() }),
            session_start: 0,
            refused: false,
            order,
            at: 0,
            attempt_deadline: None,
            exit: false,
            limits: Limits::default(),
            lists_acks: false,
        }
    }

    // ---- what comes out ----

    /// Done: the engine shuts down (see [`shutdown`](Session::shutdown)).
    pub fn finished(&self) -> bool {
        self.exit
    }

    pub fn routing_id(&self) -> &str {
        &self.rid
    }

    /// A link command waits: the current socket is on its way out.
    pub fn has_link(&self) -> bool {
        !self.links.is_empty()
    }

    pub fn take_link(&mut self) -> Option<Link> {
        self.links.pop_front()
    }

    pub fn take_deliveries(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.deliveries)
    }

    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The next frames to hand to the transport.
    pub fn next_out(&mut self) -> Option<Out> {
        self.outbox.pop_front()
    }

    /// The transport did not take `out` now: it goes first next time.
    pub fn unsend(&mut self, out: Out) {
        self.outbox.push_front(out);
    }

    /// The transport took the frames of a [`next_out`](Session::next_out).
    pub fn on_sent(&mut self, now: Instant) {
        self.heartbeat.sent(now);
    }

    /// How long the engine may sleep before [`on_timers`](Session::on_timers)
    /// has something to do (zero while publishes can go out).
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        let mut next = now + Duration::from_secs(60);
        let mut consider = |t: Instant| next = next.min(t);
        if let Some(closing) = &self.closing {
            consider(closing.deadline);
        }
        if let Some(deadline) = self.first.as_ref().and_then(|f| f.deadline) {
            consider(deadline);
        }
        match self.state {
            State::Connecting => self.attempt_deadline.into_iter().for_each(consider),
            State::Handshaking { deadline } => consider(deadline),
            State::Backoff { until } => consider(until),
            State::Ready => {
                if self.can_send_publishes() {
                    return Duration::ZERO;
                }
                consider(self.heartbeat.dead_at());
                self.heartbeat.probe_at().into_iter().for_each(consider);
            }
        }
        next.saturating_duration_since(now)
    }

    // ---- requests from the callers ----

    pub fn on_request(&mut self, request: Request, now: Instant) {
        match request {
            Request::Subscribe { topic, queue, answer } => self.subscribe(topic, queue, answer, now),
            Request::Ack { deliveries } => self.send_ack(deliveries),
            Request::Unsubscribe { topic, answer } => self.unsubscribe(topic, answer, now),
            Request::Publish(publish) => {
                if self.closing.is_some() {
                    self.counters.release_publishes(1);
                    Counters::add(&self.counters.publishes_dropped, 1);
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
                if !self.flushes.is_empty() && self.state == State::Ready {
                    // A barrier: its OK settles every PUT sent before it,
                    // even if the broker dropped their OKs (see
                    // settle_answered_before).
                    self.send_probe();
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
        if self.state != State::Ready || self.settings.close_timeout.is_zero() {
            self.exit = true;
        }
        // Otherwise pump() sends the queued publishes, then DISCONNECT.
    }

    // ---- sending ----

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn send(&mut self, id: u64, frames: Vec<Vec<u8>>) {
        self.outbox.push_back(Out { id, frames });
    }

    /// Sends `NOOP` with an ID: the broker answers at once.
    fn send_probe(&mut self) {
        let id = self.next_id();
        self.pending.insert(id, Pending::Probe);
        self.send(id, Command::Noop { id: Some(id.to_string().as_bytes()) }.to_frames());
    }

    // ---- exit ----

    /// Answers everything still waiting (Closed) and counts what was never
    /// acknowledged as dropped; `leftover` are requests that arrived too
    /// late. Returns the answer of the close() that ended it, to be sent
    /// once the socket is closed.
    pub fn shutdown(&mut self, leftover: Vec<Request>) -> Option<Answer> {
        for request in leftover {
            match request {
                Request::Subscribe { answer, .. }
                | Request::Unsubscribe { answer, .. }
                | Request::Flush { answer }
                | Request::Close { answer } => answer.send(Err(Error::closed())),
                Request::Ack { .. } => {}
                Request::Publish(_) => {
                    self.counters.release_publishes(1);
                    Counters::add(&self.counters.publishes_dropped, 1);
                }
            }
        }
        let mut unacknowledged = 0;
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Unsub { answer: Some(answer) } => answer.send(Err(Error::closed())),
                Pending::Put(q) => {
                    unacknowledged += 1;
                    self.finish_publish(q.seq, false);
                }
                _ => {}
            }
        }
        let unsent = self.publishes.len();
        if unsent > 0 {
            self.counters.release_publishes(unsent);
            self.publishes.clear();
            Counters::add(&self.counters.publishes_dropped, unsent as u64);
        }
        if unsent + unacknowledged > 0 {
            clog!(
                Level::Warn,
                "mc0 connector {}: closed with {unsent} publishes unsent and {unacknowledged} unacknowledged",
                self.rid
            );
        }
        self.outbox.clear();
        self.close_topics();
        for (_, answer) in self.flushes.drain(..) {
            answer.send(Err(Error::closed()));
        }
        if let Some(answer) = self.first.take().and_then(|f| f.answer) {
            answer.send(Err(Error::closed()));
        }
        self.exit = true;
        self.closing.take().map(|c| c.answer)
    }
}

/// Fisher-Yates with xorshift: a fleet started at once gets different
/// orders (the seed mixes pid and time), no dependency needed.
fn shuffle(order: &mut [usize], seed: u64) {
    let mut rng = seed | 1;
    for i in (1..order.len()).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        order.swap(i, (rng % (i as u64 + 1)) as usize);
    }
}

/// What the model tests look at.
#[cfg(test)]
impl Session {
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The broker (index into `Settings::brokers`) the session is on.
    pub fn broker_index(&self) -> usize {
        self.order[self.at]
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking { .. })
    }

    pub fn unsent_publishes(&self) -> usize {
        self.publishes.len()
    }

    /// PUTs handed to the outbox that the transport has not taken yet.
    pub fn puts_in_outbox(&self) -> usize {
        self.outbox.iter().filter(|out| matches!(self.pending.get(&out.id), Some(Pending::Put(_)))).count()
    }

    /// Publishes neither settled nor dropped: queued, or sent and unanswered.
    pub fn outstanding_publishes(&self) -> usize {
        self.publishes.len() + self.inflight_puts
    }
}
