//! The link to the broker: what the transport reports, the clock, and
//! when to start, renegotiate or give up a session.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use super::{Link, Pending, Session, State};
use crate::connector::config::Server;
use crate::connector::logging::clog;
use crate::connector::message::Counters;
use crate::connector::transport::Event;
use crate::connector::{secs, Error, ErrorKind};
use crate::log::Level;
use crate::protocol::{self, Command};

impl Session {
    // ---- the transport ----

    /// The transport opened a socket for the [`Link::Open`] asked for.
    pub fn on_opened(&mut self, rid: String, now: Instant) {
        self.rid = rid;
        if let Some(first) = self.first.as_mut().filter(|f| f.answer.is_none()) {
            first.deadline = Some(now + self.settings.connect_timeout);
        }
        // With a pool, a broker that takes the TCP connection but never
        // completes a session (wrong key, hung) is left for the next one;
        // connect() gives each broker its share of connect_timeout.
        let pool = self.settings.brokers.len() as u32;
        self.attempt_deadline = (pool > 1).then(|| {
            let share = if self.waits_for_first() { pool } else { 1 };
            now + self.settings.connect_timeout / share
        });
    }

    /// The broker currently used or tried.
    pub(super) fn server(&self) -> &Server {
        &self.settings.brokers[self.order[self.at]]
    }

    fn pool(&self) -> bool {
        self.settings.brokers.len() > 1
    }

    /// A plain connect() waits for the first session.
    fn waits_for_first(&self) -> bool {
        self.first.as_ref().is_some_and(|f| f.answer.is_some())
    }

    /// The first connect() cannot use this broker (`error`): with brokers
    /// of the pool left untried, the link moves on (true); otherwise
    /// connect() fails, naming each broker and why (false: nothing left).
    pub(super) fn first_failed(&mut self, error: Error, now: Instant) -> bool {
        let name = self.server().name();
        let pool = self.settings.brokers.len();
        let Some(first) = self.first.as_mut().filter(|f| f.answer.is_some()) else { return false };
        first.failures.push(format!("{name}: {}", error.message()));
        if first.failures.len() < pool {
            self.reset_link(error.message(), now);
            return true;
        }
        let error = if pool == 1 {
            error
        } else {
            Error::new(error.kind(), format!("no broker of the pool answered: {}", first.failures.join("; ")))
        };
        if let Some(answer) = first.answer.take() {
            answer.send(Err(error));
        }
        self.exit = true;
        true
    }

    /// The transport could not open a socket (the broker's name does not
    /// resolve, libzmq failed).
    pub fn on_open_failed(&mut self, error: Error, now: Instant) {
        self.counters.note_error(error.to_string());
        if self.first_failed(error.clone(), now) {
            return;
        }
        self.fail_over(error.message());
        let delay = self.schedule_backoff(now);
        if self.first.is_some() {
            self.log_retry(error.message(), delay);
        } else {
            clog!(Level::Error, "mc0 connector {}: {error}; retrying in {}", self.rid, secs(delay));
        }
    }

    /// Sending or receiving failed for good on this socket.
    pub fn on_failure(&mut self, error: Error, now: Instant) {
        self.counters.note_error(error.to_string());
        clog!(Level::Error, "mc0 connector {}: {error}", self.rid);
        self.reset_link(error.message(), now);
    }

    pub fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Up => {
                if std::mem::take(&mut self.refused) {
                    clog!(Level::Info, "mc0 connector {}: the broker accepts our key again", self.rid);
                }
                if self.state != State::Connecting {
                    // A new session can only follow the end of the previous one.
                    self.on_transport_down();
                }
                if self.state == State::Connecting && !self.exit {
                    self.start_handshake(now);
                }
            }
            // With a pool another broker is as good as this one's return.
            Event::Down if self.pool() && matches!(self.state, State::Ready | State::Handshaking { .. }) => {
                self.reset_link("it closed the connection", now)
            }
            Event::Down => self.on_transport_down(),
            // A single broker is waited for: libzmq keeps retrying it.
            Event::Refused if self.pool() && self.state == State::Connecting => {
                let error = Error::new(ErrorKind::Zmq, "TCP connection refused or timed out");
                if !self.first_failed(error, now) {
                    self.reset_link("TCP connection refused or timed out", now);
                }
            }
            Event::Refused => {}
            Event::KeyRefused { zap_status } => {
                self.key_refused(&format!("handshake refused, ZAP status {zap_status}"), now)
            }
            Event::HandshakeFailed { code } => {
                let why = format!("handshake failed: ZMTP protocol error {code:#x} (do both sides agree on curve?)");
                self.counters.note_error(format!("{why} with {}", self.server().endpoint));
                clog!(Level::Warn, "mc0 connector {}: {why} with {}", self.rid, self.server().endpoint);
                // libzmq does not retry this. connect() fails at its
                // deadline with a hint (or tries the next broker of the
                // pool); otherwise a new socket retries.
                if !self.waits_for_first() {
                    self.reset_link(&why, now);
                } else if self.pool() {
                    self.first_failed(Error::new(ErrorKind::Broker, why), now);
                }
            }
        }
    }

    pub(super) fn on_transport_down(&mut self) {
        match self.state {
            State::Connecting | State::Backoff { .. } => return,
            State::Ready => clog!(
                Level::Warn,
                "mc0 connector {}: broker {} closed the connection; reconnecting",
                self.rid,
                self.server().endpoint
            ),
            State::Handshaking { .. } => {}
        }
        self.abandon_session();
        self.state = State::Connecting;
        if self.closing.is_some() {
            self.exit = true;
        }
    }

    // ---- the clock ----

    pub fn on_timers(&mut self, now: Instant) {
        if let Some(closing) = &self.closing {
            if now >= closing.deadline {
                clog!(
                    Level::Warn,
                    "mc0 connector {}: broker did not confirm DISCONNECT within {}; closing anyway",
                    self.rid,
                    secs(self.settings.close_timeout)
                );
                self.exit = true;
                return;
            }
        }
        if self.first.as_ref().and_then(|f| f.deadline).is_some_and(|d| now >= d) {
            let mut message = self.no_answer_message();
            match self.first.as_mut().and_then(|f| f.answer.take().map(|a| (a, &f.failures))) {
                Some((answer, failures)) => {
                    if !failures.is_empty() {
                        message = format!("{message}; before: {}", failures.join("; "));
                    }
                    answer.send(Err(Error::new(ErrorKind::Timeout, message)));
                    self.exit = true;
                }
                None => {
                    if let Some(delay) = self.give_up_link(&message, now) {
                        self.log_retry(&message, delay);
                    }
                }
            }
            return;
        }
        let attempt_over = self.attempt_deadline.is_some_and(|d| now >= d);
        match self.state {
            // With a pool, a broker that does not let us in soon is left.
            State::Connecting if attempt_over => {
                let why = "no session in time (connect_timeout)";
                let error = Error::new(ErrorKind::Timeout, self.no_answer_message());
                if !self.first_failed(error, now) {
                    self.reset_link(why, now);
                }
            }
            // The transport keeps reconnecting; Event::Up says when it succeeded.
            State::Connecting => {}
            State::Handshaking { deadline } if now >= deadline => {
                let message = self.no_answer_message();
                if !self.first_failed(Error::new(ErrorKind::Timeout, message.clone()), now) {
                    clog!(Level::Warn, "mc0 connector {}: {message}; reconnecting", self.rid);
                    self.reset_link(&message, now);
                }
            }
            State::Handshaking { .. } => {}
            State::Backoff { until } if now >= until => {
                self.state = State::Connecting;
                self.links.push_back(Link::Open(self.order[self.at]));
            }
            State::Backoff { .. } => {}
            State::Ready => {
                if now >= self.heartbeat.dead_at() {
                    let why = format!("no traffic for {}", secs(self.heartbeat.silent_for(now)));
                    clog!(
                        Level::Warn,
                        "mc0 connector {}: {why} from broker {}; reconnecting",
                        self.rid,
                        self.server().endpoint
                    );
                    self.reset_link(&why, now);
                } else if self.heartbeat.probe_at().is_some_and(|at| now >= at) {
                    self.heartbeat.probed(now);
                    self.send_probe();
                }
            }
        }
    }

    pub(super) fn no_answer_message(&self) -> String {
        let hint = if self.settings.curve.is_some() {
            "is it running, and is broker.public_key its key?"
        } else {
            "is it running, and is its CURVE setting off like ours (curve = false)?"
        };
        format!(
            "no answer from broker {} within {} ({hint})",
            self.server().name(),
            secs(self.settings.connect_timeout)
        )
    }

    /// A failed attempt before the first session with `connect_retry`.
    /// Capitalised like the plugins' own "Could not connect" lines, which
    /// it replaces for daemons.
    pub(super) fn log_retry(&self, why: &str, delay: Duration) {
        clog!(Level::Error, "Could not connect to the mc0 broker: {why}; retrying in {}", secs(delay));
    }

    // ---- link management ----

    pub(super) fn schedule_backoff(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.next_delay();
        self.state = State::Backoff { until: now + delay };
        self.attempt_deadline = None;
        // With connect_retry, the next attempt's bound starts with its socket.
        if let Some(first) = self.first.as_mut().filter(|f| f.answer.is_none()) {
            first.deadline = None;
        }
        delay
    }

    /// Ends the session (dead because of `why`) and closes the socket; a
    /// new one, to the next broker of the pool, follows after the backoff
    /// (returned), unless closing.
    pub(super) fn give_up_link(&mut self, why: &str, now: Instant) -> Option<Duration> {
        self.abandon_session();
        self.links.push_back(Link::Close);
        if self.closing.is_some() {
            self.exit = true;
            return None;
        }
        self.fail_over(why);
        Some(self.schedule_backoff(now))
    }

    /// Declares the link dead: closes the socket and schedules a new one.
    pub(super) fn reset_link(&mut self, why: &str, now: Instant) {
        if let Some(delay) = self.give_up_link(why, now) {
            clog!(Level::Info, "mc0 connector: connecting to {} in {}", self.server().endpoint, secs(delay));
        }
    }

    /// Moves on to the next broker of the pool (none with one broker),
    /// logged once per move.
    fn fail_over(&mut self, why: &str) {
        if !self.pool() {
            return;
        }
        let from = self.server().name();
        self.at = (self.at + 1) % self.order.len();
        self.counters.broker.store(self.order[self.at], Ordering::Relaxed);
        Counters::add(&self.counters.failovers, 1);
        clog!(
            Level::Warn,
            "mc0 connector {}: failing over from broker {from} to {} ({from}: {why})",
            self.rid,
            self.server().name()
        );
    }

    /// Sends CONNECT (on the current socket) and waits for its OK.
    pub(super) fn start_handshake(&mut self, now: Instant) {
        self.requeue_outbox();
        // Whatever the broker held for us is gone or about to be, and the
        // broker may be another (or another version) than the last.
        self.mark_all_wanted();
        self.lists_acks = false;
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
        self.send(id, frames);
    }

    /// The broker no longer knows us: CONNECT again on the same socket.
    pub(super) fn renegotiate(&mut self, now: Instant) {
        if self.closing.is_some() {
            self.exit = true;
            return;
        }
        if self.state == State::Ready {
            clog!(
                Level::Warn,
                "mc0 connector {}: broker {} does not know us (restarted?); sending CONNECT again",
                self.rid,
                self.server().endpoint
            );
            self.start_handshake(now);
        }
    }

    /// Ends the current session: what never left us goes back to the
    /// queues, what was handed to the transport and is unanswered is settled
    /// as lost (PUTs dropped: they may have been delivered).
    pub(super) fn abandon_session(&mut self) {
        Counters::add(&self.counters.reconnects, 1);
        self.requeue_outbox();
        let pending = std::mem::take(&mut self.pending);
        let mut dropped = 0;
        for (id, p) in pending {
            dropped += self.settle_lost(id, p);
        }
        if dropped > 0 {
            clog!(
                Level::Warn,
                "mc0 connector {}: {dropped} publishes were sent but not acknowledged before the link died; \
                 not resending them (at-most-once)",
                self.rid
            );
        }
        self.check_flushes();
        self.heartbeat.forget_probe();
        self.mark_all_wanted();
    }

    pub(super) fn on_handshake_ok(&mut self, connect_id: u64, now: Instant) {
        self.state = State::Ready;
        self.attempt_deadline = None;
        self.backoff.reset();
        self.heartbeat.restart(now);
        Counters::add(&self.counters.handshakes, 1);
        // The broker answers a client's commands in order: anything sent
        // before this CONNECT and still unanswered is gone.
        let stale: Vec<u64> = self.pending.range(..connect_id).map(|(id, _)| *id).collect();
        let mut dropped = 0;
        for id in stale {
            if let Some(p) = self.pending.remove(&id) {
                dropped += self.settle_lost(id, p);
            }
        }
        if dropped > 0 {
            clog!(
                Level::Warn,
                "mc0 connector {}: {dropped} publishes sent before the broker restarted were never acknowledged; \
                 not resending them (at-most-once)",
                self.rid
            );
        }
        self.check_flushes();
        match self.first.take() {
            Some(first) => {
                clog!(Level::Info, "mc0 connector {}: connected to {}", self.rid, self.server().endpoint);
                if let Some(answer) = first.answer {
                    answer.send(Ok(()));
                }
            }
            None => clog!(
                Level::Info,
                "mc0 connector {}: connected again to {}; re-subscribing {} topics",
                self.rid,
                self.server().endpoint,
                self.topics.len()
            ),
        }
        self.resubscribe();
    }
}
