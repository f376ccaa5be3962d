//! Property-based test of the connector's session against a model, as
//! tests/broker_fuzz.rs does for the broker: random sequences of caller
//! requests (subscribe, unsubscribe, publish, flush, close), broker replies
//! (OK, ERROR, "not connected", "access denied", dropped answers, MESSAGE,
//! NOOP, a broker that forgets us), transport events (up, down, key
//! refused, a full socket, a name that does not resolve) and time steps
//! drive [`Session`], the state machine without sockets. A fake transport
//! and a fake broker (mc0d's rules, in a few lines) stand around it, and
//! after every step the model checks:
//! - nothing but CONNECT goes out on a connection before CONNECT's OK;
//! - every publish settles exactly once (acknowledged, dropped and counted,
//!   or still queued), the broker executes none twice, and one is sent
//!   again only after the broker said "not connected" to it;
//! - the heartbeat: a silent broker is given up at 1.05 × TTL, a probe goes
//!   out at 0.95 × TTL, and the engine's sleep never oversleeps either
//!   (time advances only by the session's own poll timeout);
//! - CONNECT's answer is waited for at most `connect_timeout`, close ends
//!   within `close_timeout`;
//! - MESSAGEs are delivered in order with their sender stamp, and a queue
//!   delivery with the same `QUEUE` and `DELIVERY` headers whether it came
//!   in the compact form or the classic one;
//! - an ACK lists several ids in one frame only on a connection whose
//!   broker sent a compact delivery since the last CONNECT went out (a
//!   broker that never did may not read the list), and always does there;
//! - with a pool of brokers, every socket after the first goes to the next
//!   broker of one fixed (shuffled) cycle through the whole pool, each move
//!   counted as a failover, and the stats name the broker in use;
//! - at the end (link healed, one more reconnect: with a pool, to another
//!   broker), the held subscriptions are the model's (counted by holder)
//!   and exactly what the (new) broker has, every queued publish went out
//!   once, every flush and close is answered, and every caller got an
//!   answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::config::Settings;
use super::message::Counters;
use super::oneshot::{oneshot, Waiter};
use super::session::{Link, Session};
use super::shared::{Publish, Request};
use super::transport::Event;
use super::{Error, ErrorKind};
use crate::protocol::{self, heartbeat, Command, Limits, Reply};

mod ops;

use ops::{op, settings, Op, Verdict, FORBIDDEN, SEND_QUEUE, TOPICS};

/// A MESSAGE the broker sent: topic, body, sender and the headers the
/// application must see.
type Expected = (String, Vec<u8>, Option<String>, Vec<(String, Vec<u8>)>);

/// The broker's side of our connection, by mc0d's rules.
#[derive(Default)]
struct Broker {
    /// Commands received and not handled yet.
    inbound: VecDeque<Vec<Vec<u8>>>,
    /// Whether it knows us (a CONNECT it accepted).
    known: bool,
    subs: BTreeSet<Vec<u8>>,
}

struct Call {
    what: String,
    waiter: Waiter,
    result: Option<Result<(), Error>>,
}

struct Harness {
    settings: Arc<Settings>,
    session: Session,
    counters: Arc<Counters>,
    ready: Option<Call>,
    now: Instant,
    requests: Vec<Request>,
    // The fake transport.
    open: bool,
    up: bool,
    blocked: bool,
    /// The handshake was refused: this socket never comes up.
    refused: bool,
    resolve_fails: bool,
    rids: u32,
    /// Brokers in the pool, and the broker of each socket opened, in order.
    pool: usize,
    opened: Vec<usize>,
    broker: Broker,
    // The model.
    holders: BTreeMap<Vec<u8>, u32>,
    calls: Vec<Call>,
    accepted: u64,
    bodies: u32,
    /// Per publish body: sent, refused as "not connected", executed.
    sent: BTreeMap<Vec<u8>, u32>,
    not_connected: BTreeMap<Vec<u8>, u32>,
    executed: BTreeMap<Vec<u8>, u32>,
    /// CONNECT's OK has reached the session since the last CONNECT went out.
    connect_acked: bool,
    handshaking_since: Option<Instant>,
    last_heard: Instant,
    last_sent: Instant,
    last_probe: Option<Instant>,
    /// Topic, body, sender and headers of each MESSAGE the broker sent.
    expected: VecDeque<Expected>,
    messages: u32,
    /// A compact delivery reached the ready session since the last CONNECT
    /// went out.
    compact_heard: bool,
    /// Per ACK asked for (by its first delivery id): whether it must list
    /// its ids in one frame.
    ack_forms: BTreeMap<u64, bool>,
    close_at: Option<Instant>,
    shut_down: bool,
    /// Publishes the session may drop without sending them: asked for
    /// while closing, or still queued when it shut down.
    may_drop_unsent: u64,
    /// Subscribes that must be answered at once (connect_retry, no
    /// session yet).
    immediate: Vec<usize>,
}

impl Harness {
    fn new(retry: bool, pool: usize) -> Harness {
        let settings = settings(retry, pool);
        let counters = Arc::new(Counters::default());
        let now = Instant::now();
        let (answer, waiter) = oneshot();
        let ready = (!retry).then(|| Call { what: "connect".into(), waiter, result: None });
        let session = Session::new(settings.clone(), counters.clone(), ready.as_ref().map(|_| answer), 0x5eed, now);
        let mut h = Harness {
            settings,
            session,
            counters,
            ready,
            now,
            requests: Vec::new(),
            open: false,
            up: false,
            blocked: false,
            refused: false,
            resolve_fails: false,
            rids: 0,
            pool,
            opened: Vec::new(),
            broker: Broker::default(),
            holders: BTreeMap::new(),
            calls: Vec::new(),
            accepted: 0,
            bodies: 0,
            sent: BTreeMap::new(),
            not_connected: BTreeMap::new(),
            executed: BTreeMap::new(),
            connect_acked: false,
            handshaking_since: None,
            last_heard: now,
            last_sent: now,
            last_probe: None,
            expected: VecDeque::new(),
            messages: 0,
            compact_heard: false,
            ack_forms: BTreeMap::new(),
            close_at: None,
            shut_down: false,
            may_drop_unsent: 0,
            immediate: Vec::new(),
        };
        h.turn();
        h
    }

    fn call(&mut self, what: String, make: impl FnOnce(super::oneshot::Answer) -> Request) {
        let (answer, waiter) = oneshot();
        self.requests.push(make(answer));
        self.calls.push(Call { what, waiter, result: None });
    }

    fn apply(&mut self, op: Op) {
        if self.session.finished() {
            return;
        }
        let closing = self.close_at.is_some();
        match op {
            Op::Subscribe(t) => {
                let topic = TOPICS[t].to_vec();
                if !closing {
                    *self.holders.entry(topic.clone()).or_default() += 1;
                    if self.ready.is_none() && self.counters.snapshot().handshakes == 0 {
                        self.immediate.push(self.calls.len());
                    }
                }
                self.call(format!("subscribe {t}"), |answer| Request::Subscribe { topic, queue: None, answer });
            }
            Op::Unsubscribe(t) => {
                let topic = TOPICS[t].to_vec();
                if !closing {
                    if let Some(n) = self.holders.get_mut(&topic) {
                        *n -= 1;
                        if *n == 0 {
                            self.holders.remove(&topic);
                        }
                    }
                }
                self.call(format!("unsubscribe {t}"), |answer| Request::Unsubscribe { topic, answer });
            }
            // As Connector::publish does: a slot first, or QueueFull.
            Op::Publish(t) if self.counters.reserve_publish(SEND_QUEUE) => {
                self.may_drop_unsent += u64::from(closing);
                self.bodies += 1;
                let body = format!("p{}", self.bodies).into_bytes();
                self.accepted += 1;
                self.requests.push(Request::Publish(Publish {
                    topic: TOPICS[t].to_vec(),
                    headers: vec![],
                    body,
                    expires: None,
                }));
            }
            Op::Flush => self.call("flush".into(), |answer| Request::Flush { answer }),
            Op::Close => {
                if !closing {
                    self.close_at = Some(self.now);
                }
                self.call("close".into(), |answer| Request::Close { answer });
            }
            Op::Up if self.open && !self.up && !self.refused => {
                self.up = true;
                self.connect_acked = false;
                self.event(Event::Up);
            }
            Op::Down if self.up => {
                self.up = false;
                self.broker.inbound.clear();
                self.event(Event::Down);
            }
            Op::KeyRefused if self.open && !self.up && !self.refused => {
                self.refused = true;
                self.event(Event::KeyRefused { zap_status: 400 });
            }
            Op::Refused if self.open && !self.up => self.event(Event::Refused),
            Op::Block(blocked) => self.blocked = blocked,
            Op::ResolveFails => self.resolve_fails = true,
            Op::Answer(verdict) => self.broker_answers(verdict),
            Op::Forget => {
                self.broker.known = false;
                self.broker.subs.clear();
            }
            Op::Message(n) if self.up && self.broker.known && !self.broker.subs.is_empty() => {
                let topic = self.broker.subs.iter().nth(n % self.broker.subs.len()).expect("some").clone();
                self.messages += 1;
                let body = format!("m{}", self.messages).into_bytes();
                let sender = (self.messages % 2 == 0).then(|| "n1".to_string());
                let mut headers: Vec<(&[u8], &[u8])> = vec![(b"X-A", b"1")];
                if let Some(s) = &sender {
                    headers.insert(0, (protocol::SENDER.as_bytes(), s.as_bytes()));
                }
                let frames = Reply::Message { topic: &topic, headers, body: vec![&body] }.to_frames();
                let seen = vec![("X-A".to_string(), b"1".to_vec())];
                self.expected.push_back((String::from_utf8_lossy(&topic).into_owned(), body, sender, seen));
                self.hear(frames);
            }
            Op::Delivery(n, compact) if self.up && self.broker.known && !self.broker.subs.is_empty() => {
                let topic = self.broker.subs.iter().nth(n % self.broker.subs.len()).expect("some").clone();
                self.messages += 1;
                let body = format!("m{}", self.messages).into_bytes();
                let delivery = u64::from(self.messages);
                let id = delivery.to_string();
                let folded = protocol::queue_delivery(delivery, b"q 1");
                let mut headers: Vec<(&[u8], &[u8])> = vec![(b"X-A", b"1")];
                if compact {
                    headers.insert(0, (protocol::QUEUE_DELIVERY.as_bytes(), &folded));
                } else {
                    headers.splice(
                        0..0,
                        [(protocol::QUEUE.as_bytes(), &b"q 1"[..]), (protocol::DELIVERY.as_bytes(), id.as_bytes())],
                    );
                }
                let frames = Reply::Message { topic: &topic, headers, body: vec![&body] }.to_frames();
                let seen = vec![
                    (protocol::QUEUE.to_string(), b"q 1".to_vec()),
                    (protocol::DELIVERY.to_string(), id.into_bytes()),
                    ("X-A".to_string(), b"1".to_vec()),
                ];
                self.expected.push_back((String::from_utf8_lossy(&topic).into_owned(), body, None, seen));
                self.compact_heard |= compact && self.session.is_ready();
                self.hear(frames);
                // Taken and acknowledged with an id the broker no longer
                // holds: two ids, so the ACK's form shows.
                if self.session.is_ready() {
                    self.ack_forms.insert(delivery, self.compact_heard);
                }
                self.requests.push(Request::Ack { deliveries: vec![delivery, delivery + 1_000_000] });
            }
            Op::Noop if self.up => self.hear(Reply::Noop.to_frames()),
            Op::Advance(ms) => self.advance(Duration::from_millis(ms)),
            _ => {}
        }
        self.turn();
    }

    fn event(&mut self, event: Event) {
        self.session.on_event(event, self.now);
    }

    /// Frames from the broker reach the session.
    fn hear(&mut self, frames: Vec<Vec<u8>>) {
        self.last_heard = self.now;
        self.session.on_frames(&frames, self.now);
    }

    fn broker_answers(&mut self, verdict: Verdict) {
        if !self.up {
            return;
        }
        let Some(frames) = self.broker.inbound.pop_front() else { return };
        let command = Command::parse(&frames, &Limits::default()).expect("the session sends valid commands");
        if let Command::Ack { .. } = command {
            // Without ID: at least once, no answer.
            return;
        }
        let id = command.id().expect("every command but ACK carries an ID").to_vec();
        let reply = |message: &str| Reply::Error { message: message.as_bytes(), id: Some(&id) }.to_frames();
        let ok = Reply::Ok { id: &id }.to_frames();
        let answer = match (&command, verdict) {
            (_, Verdict::AccessDenied) => reply(protocol::ACCESS_DENIED),
            (Command::Connect { .. }, Verdict::Error) => reply("identity check failed: not you"),
            (Command::Connect { .. }, _) => {
                self.broker.known = true;
                self.broker.subs.clear();
                ok
            }
            (_, _) if !self.broker.known => reply(protocol::NOT_CONNECTED),
            (Command::Sub { topics, .. }, _) if topics.contains(&FORBIDDEN) => reply("role check failed"),
            (Command::Sub { topics, .. }, _) => {
                self.broker.subs.extend(topics.iter().map(|t| t.to_vec()));
                ok
            }
            (Command::Unsub { .. } | Command::Put { .. }, Verdict::Error) => reply("refused"),
            (Command::Unsub { topics, .. }, _) => {
                for topic in topics {
                    self.broker.subs.remove(*topic);
                }
                ok
            }
            (Command::Put { body, .. }, _) => {
                *self.executed.entry(body[0].to_vec()).or_default() += 1;
                ok
            }
            (Command::Disconnect { .. }, _) => {
                self.broker.known = false;
                ok
            }
            _ => ok,
        };
        if matches!(verdict, Verdict::Drop) {
            return;
        }
        match Reply::parse(&answer, &Limits::default()).expect("valid reply") {
            Reply::Ok { .. } if matches!(command, Command::Connect { .. }) => self.connect_acked = true,
            Reply::Error { message, .. } if message == protocol::NOT_CONNECTED.as_bytes() => {
                if let Command::Put { body, .. } = &command {
                    *self.not_connected.entry(body[0].to_vec()).or_default() += 1;
                }
            }
            _ => {}
        }
        self.hear(answer);
    }

    /// Time passes as the engine sleeps: never beyond the session's own
    /// poll timeout, so a deadline it forgot shows up as a broken invariant.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        let mut turns = 0;
        while self.now < until && !self.session.finished() {
            let step = self.session.poll_timeout(self.now).min(until - self.now);
            if self.session.is_ready() {
                let due = self.heartbeat_due();
                assert!(self.now + step <= due, "the engine would sleep past a heartbeat deadline");
            }
            self.now += step;
            self.turn();
            turns += 1;
            assert!(turns < 10_000, "the engine would spin: poll timeout stays 0");
        }
    }

    /// The next heartbeat deadline by the protocol's rules: a probe after
    /// 0.95 × TTL of not sending (unless one waits for the socket) or of
    /// silence (unless probed since), giving up after 1.05 × TTL of silence.
    fn heartbeat_due(&self) -> Instant {
        let ttl = self.settings.ttl;
        let mut due = self.last_heard + heartbeat::dead_after(ttl);
        if !self.blocked {
            due = due.min(self.last_sent + heartbeat::noop_after(ttl));
            if self.last_probe.map_or(true, |p| p < self.last_heard) {
                due = due.min(self.last_heard + heartbeat::noop_after(ttl));
            }
        }
        due
    }

    /// One turn of the engine loop (engine.rs), then the invariants.
    fn turn(&mut self) {
        let now = self.now;
        for request in std::mem::take(&mut self.requests) {
            if self.session.finished() {
                // The engine is gone: the queue refuses requests.
                drop(request);
                continue;
            }
            self.session.on_request(request, now);
        }
        self.session.on_timers(now);
        self.links();
        self.session.pump(now);
        self.transmit();
        self.links();
        self.check_deliveries();
        if self.session.finished() && !std::mem::replace(&mut self.shut_down, true) {
            // As the engine does once the session is finished.
            // Queued, or in the outbox when the transport stopped taking frames.
            self.may_drop_unsent += (self.session.unsent_publishes() + self.session.puts_in_outbox()) as u64;
            if let Some(answer) = self.session.shutdown(Vec::new()) {
                answer.send(Ok(()));
            }
        }
        self.check();
    }

    fn links(&mut self) {
        while let Some(link) = self.session.take_link() {
            match link {
                Link::Close => {
                    self.open = false;
                    self.up = false;
                    self.broker.inbound.clear();
                }
                Link::Open(broker) if std::mem::take(&mut self.resolve_fails) => {
                    self.opened_to(broker);
                    let error = Error::new(ErrorKind::Resolve, "cannot resolve the broker host name");
                    self.session.on_open_failed(error, self.now);
                }
                Link::Open(broker) => {
                    self.opened_to(broker);
                    // A new socket is a new routing id: a client the broker
                    // does not know.
                    self.open = true;
                    self.up = false;
                    self.refused = false;
                    self.broker = Broker::default();
                    self.rids += 1;
                    self.session.on_opened(format!("model {}", self.rids), self.now);
                }
            }
        }
    }

    /// A socket to `broker`: the next of the pool's cycle, as counted.
    fn opened_to(&mut self, broker: usize) {
        assert!(broker < self.pool);
        self.opened.push(broker);
        let k = self.opened.len() - 1;
        if k < self.pool {
            assert!(!self.opened[..k].contains(&broker), "broker {broker} again before the pool was tried");
        } else {
            assert_eq!(broker, self.opened[k % self.pool], "the pool is tried in one fixed order");
        }
        let stats = self.counters.snapshot();
        assert_eq!(stats.broker, broker, "the stats name the broker in use");
        assert_eq!(self.session.broker_index(), broker);
        // Every socket after the first follows a failover (with a pool).
        let moves = if self.pool > 1 { k as u64 } else { 0 };
        assert!(stats.failovers >= moves && stats.failovers <= moves + 1, "{stats:?} after {k} moves");
    }

    fn transmit(&mut self) {
        while let Some(out) = self.session.next_out() {
            if !self.up || self.blocked {
                self.session.unsend(out);
                return;
            }
            let command = Command::parse(&out.frames, &Limits::default()).expect("valid command");
            match &command {
                Command::Connect { ttl_ms, version, .. } => {
                    assert_eq!((*ttl_ms, *version), (1000, protocol::PROTOCOL_VERSION.as_bytes()));
                    self.connect_acked = false;
                    self.compact_heard = false;
                }
                other => {
                    assert!(self.connect_acked, "{other:?} went out before CONNECT's OK on this connection");
                    if let Command::Put { body, .. } = other {
                        let body = body[0].to_vec();
                        let sent = self.sent.entry(body.clone()).or_default();
                        *sent += 1;
                        let allowed = 1 + self.not_connected.get(&body).copied().unwrap_or(0);
                        assert!(
                            *sent <= allowed,
                            "PUT {:?} sent {sent} times, allowed {allowed}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    if let Command::Noop { .. } = other {
                        self.last_probe = Some(self.now);
                    }
                    if let Command::Ack { deliveries, .. } = other {
                        let listed = out.frames.len() == 4;
                        let expected = self.ack_forms.remove(&deliveries[0]).expect("an ACK asked for while ready");
                        assert_eq!(listed, expected, "ACK {:?} (compact delivery heard: {expected})", out.frames);
                        assert!(listed <= self.compact_heard, "an ACK list to a broker that sent no compact delivery");
                    }
                }
            }
            self.broker.inbound.push_back(out.frames);
            self.session.on_sent(self.now);
            self.last_sent = self.now;
        }
    }

    fn check_deliveries(&mut self) {
        for m in self.session.take_deliveries() {
            let (topic, body, sender, headers) =
                self.expected.pop_front().expect("a MESSAGE nobody sent was delivered");
            assert_eq!((m.topic, m.body, m.sender), (topic, body, sender));
            assert_eq!(m.headers, headers, "SENDER is not a header; a compact delivery looks classic");
        }
        assert!(self.expected.is_empty(), "a MESSAGE was not delivered: {:?}", self.expected);
    }

    fn check(&mut self) {
        let stats = self.counters.snapshot();
        // Every publish is acknowledged, dropped (and counted) or still queued: once.
        let outstanding = self.session.outstanding_publishes() as u64;
        assert_eq!(stats.published + stats.publishes_dropped + outstanding, self.accepted, "{stats:?}");
        assert_eq!(
            self.counters.queued_publishes.load(std::sync::atomic::Ordering::SeqCst),
            self.session.unsent_publishes(),
            "publish slots"
        );
        // Dropped only if it left us (its fate unknown, or refused), or unsent at close.
        let left = self.sent.len() as u64;
        assert!(stats.publishes_dropped <= left + self.may_drop_unsent, "a publish that never left was dropped");
        // At most send_queue PUTs wait for their answer (all of them while closing).
        let unanswered = self.broker.inbound.iter().filter(|f| f.get(1).is_some_and(|v| v == b"PUT")).count();
        assert!(self.close_at.is_some() || unanswered <= SEND_QUEUE, "{unanswered} PUTs unanswered");
        for i in std::mem::take(&mut self.immediate) {
            let call = &mut self.calls[i];
            assert_eq!(poll(call).cloned(), Some(Ok(())), "{}: connect_retry, no session yet: at once", call.what);
        }
        let executed: u32 = self.executed.values().sum();
        assert!(self.executed.values().all(|n| *n <= 1), "the broker executed a publish twice");
        assert!(stats.published <= executed as u64, "acknowledged {} but executed {executed}", stats.published);
        // The heartbeat, at the engine's wake-ups.
        let ttl = self.settings.ttl;
        if self.session.is_ready() && !self.session.finished() {
            assert!(self.now < self.last_heard + heartbeat::dead_after(ttl), "a silent broker was not given up");
            if !self.blocked {
                assert!(self.now < self.last_sent + heartbeat::noop_after(ttl), "nothing sent for 0.95 × TTL");
                if self.now >= self.last_heard + heartbeat::noop_after(ttl) {
                    assert!(self.last_probe.is_some_and(|p| p >= self.last_heard), "a silent broker was not probed");
                }
            }
        }
        // Every change of state is seen here, at the time it happened.
        if self.session.is_handshaking() && !self.session.finished() {
            let since = *self.handshaking_since.get_or_insert(self.now);
            assert!(self.now < since + self.settings.connect_timeout, "CONNECT's answer waited for too long");
        } else {
            self.handshaking_since = None;
        }
        if let Some(at) = self.close_at {
            assert!(self.now < at + self.settings.close_timeout || self.session.finished(), "close overran");
        }
        let failed_first = self.ready.as_mut().is_some_and(|r| poll(r).is_some_and(|r| r.is_err()));
        assert!(!self.session.finished() || self.close_at.is_some() || failed_first, "finished unasked");
        for call in &mut self.calls {
            poll(call);
        }
    }

    /// Brings the link up and lets the broker answer everything, as long
    /// as the session makes progress.
    fn heal(&mut self) {
        // Through a turn, as the engine wakes when the socket takes frames again.
        self.apply(Op::Block(false));
        self.resolve_fails = false;
        for _ in 0..200 {
            if self.session.finished() {
                return;
            }
            if !self.broker.inbound.is_empty() && self.up {
                self.apply(Op::Answer(Verdict::Ok));
            } else if self.open && !self.up && !self.refused {
                self.apply(Op::Up);
            } else if self.session.is_ready() && !self.session.has_outbox() && self.broker.inbound.is_empty() {
                return;
            } else {
                self.apply(Op::Advance(200));
            }
        }
        panic!("the link did not heal: ready {}, open {}, up {}", self.session.is_ready(), self.open, self.up);
    }

    fn flushed(&mut self) {
        if self.session.finished() {
            return;
        }
        self.apply(Op::Flush);
        self.heal();
        if !self.session.finished() {
            let flush = self.calls.last_mut().unwrap();
            assert_eq!(poll(flush).cloned(), Some(Ok(())), "flush on a healed link");
        }
    }

    fn finish(mut self) {
        if !self.session.finished() {
            self.heal();
            // On a healthy link a flush completes, even if answers were lost.
            self.flushed();
            // One more reconnect: what is held is made again from scratch
            // (with a pool, on the next broker).
            let before = self.session.broker_index();
            if self.up {
                self.apply(Op::Down);
            }
            self.heal();
            if self.pool > 1 && !self.session.finished() {
                assert_ne!(self.session.broker_index(), before, "the connection closed: on to another broker");
            }
        }
        if !self.session.finished() {
            let held = self.session.held_topics();
            assert!(!held.contains_key(FORBIDDEN), "a topic the broker refused is still held");
            self.holders.remove(FORBIDDEN);
            assert_eq!(held, self.holders, "held subscriptions");
            let on_broker: BTreeSet<Vec<u8>> = held.keys().cloned().collect();
            assert_eq!(self.broker.subs, on_broker, "the broker's subscriptions are the held ones");
            self.flushed();
            assert_eq!(self.session.outstanding_publishes(), 0);
            self.apply(Op::Close);
            while !self.session.finished() {
                if self.up && !self.broker.inbound.is_empty() {
                    self.apply(Op::Answer(Verdict::Ok));
                } else {
                    self.apply(Op::Advance(100));
                }
            }
        }
        let stats = self.counters.snapshot();
        assert_eq!(stats.published + stats.publishes_dropped, self.accepted, "settled once each: {stats:?}");
        for call in &mut self.calls {
            let what = call.what.clone();
            let result = poll(call).unwrap_or_else(|| panic!("{what}: never answered")).clone();
            if what.starts_with("subscribe") && !what.ends_with('3') {
                assert!(result.as_ref().map_or_else(|e| e.kind() != ErrorKind::Broker, |_| true), "{what}: {result:?}");
            }
        }
    }
}

fn poll(call: &mut Call) -> Option<&Result<(), Error>> {
    if call.result.is_none() {
        call.result = call.waiter.wait(Duration::ZERO);
    }
    call.result.as_ref()
}

/// The knowledge that the broker reads ACK lists lasts one connection:
/// after a reconnect (maybe to an older broker) ACKs go one id per frame
/// until a compact delivery comes again.
#[test]
fn ack_lists_need_a_compact_delivery_on_each_connection() {
    let mut h = Harness::new(false, 1);
    let ready = [Op::Up, Op::Answer(Verdict::Ok), Op::Answer(Verdict::Ok)];
    let deliveries = [Op::Delivery(0, false), Op::Delivery(0, true), Op::Delivery(0, false)];
    for op in [Op::Subscribe(0)].into_iter().chain(ready.clone()).chain(deliveries) {
        h.apply(op);
    }
    assert!(h.compact_heard && h.ack_forms.is_empty(), "three ACKs went out, the last one listed");
    for op in [Op::Down].into_iter().chain(ready).chain([Op::Delivery(0, false)]) {
        h.apply(op);
    }
    assert!(!h.compact_heard && h.ack_forms.is_empty(), "the ACK after the reconnect went out one id per frame");
    h.finish();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_session_keeps_its_promises(
        retry in any::<bool>(),
        connected in any::<bool>(),
        pool in prop_oneof![1 => Just(1usize), 1 => Just(2usize), 2 => Just(3usize)],
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        let mut h = Harness::new(retry, pool);
        // Half the cases start from a session that is up.
        let start = if connected { vec![Op::Up, Op::Answer(Verdict::Ok)] } else { vec![] };
        for op in start.into_iter().chain(ops) {
            h.apply(op);
        }
        h.finish();
    }
}
