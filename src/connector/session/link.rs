//! The link to the broker: what the transport reports, the clock, and
//! when to start, renegotiate or give up a session.

use std::time::{Duration, Instant};

use super::{Link, Pending, Session, State};
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
    }

    /// The transport could not open a socket (the broker's name does not
    /// resolve, libzmq failed).
    pub fn on_open_failed(&mut self, error: Error, now: Instant) {
        self.counters.note_error(error.to_string());
        if let Some(answer) = self.first.as_mut().and_then(|f| f.answer.take()) {
            answer.send(Err(error));
            self.exit = true;
            return;
        }
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
        self.reset_link(now);
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
            Event::Down => self.on_transport_down(),
            Event::KeyRefused { zap_status } => {
                self.key_refused(&format!("handshake refused, ZAP status {zap_status}"), now)
            }
            Event::HandshakeFailed { code } => {
                self.counters.note_error(format!(
                    "handshake with {} failed: ZMTP protocol error {code:#x}",
                    self.settings.endpoint
                ));
                clog!(
                    Level::Warn,
                    "mc0 connector {}: handshake with {} failed: ZMTP protocol error {code:#x} \
                     (do both sides agree on curve?)",
                    self.rid,
                    self.settings.endpoint
                );
                // libzmq does not retry this. connect() fails at its
                // deadline with a hint; otherwise a new socket retries.
                if !self.first.as_ref().is_some_and(|f| f.answer.is_some()) {
                    self.reset_link(now);
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
                self.settings.endpoint
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
            let message = self.no_answer_message();
            match self.first.as_mut().and_then(|f| f.answer.take()) {
                Some(answer) => {
                    answer.send(Err(Error::new(ErrorKind::Timeout, message)));
                    self.exit = true;
                }
                None => {
                    if let Some(delay) = self.give_up_link(now) {
                        self.log_retry(&message, delay);
                    }
                }
            }
            return;
        }
        match self.state {
            // The transport keeps reconnecting; Event::Up says when it succeeded.
            State::Connecting => {}
            State::Handshaking { deadline } if now >= deadline => {
                let message = self.no_answer_message();
                clog!(Level::Warn, "mc0 connector {}: {message}; reconnecting", self.rid);
                self.reset_link(now);
            }
            State::Handshaking { .. } => {}
            State::Backoff { until } if now >= until => {
                self.state = State::Connecting;
                self.links.push_back(Link::Open);
            }
            State::Backoff { .. } => {}
            State::Ready => {
                if now >= self.heartbeat.dead_at() {
                    clog!(
                        Level::Warn,
                        "mc0 connector {}: no traffic from broker {} for {}; reconnecting",
                        self.rid,
                        self.settings.endpoint,
                        secs(self.heartbeat.silent_for(now))
                    );
                    self.reset_link(now);
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
            "no answer from broker {}:{} within {} ({hint})",
            self.settings.host,
            self.settings.port,
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
        // With connect_retry, the next attempt's bound starts with its socket.
        if let Some(first) = self.first.as_mut().filter(|f| f.answer.is_none()) {
            first.deadline = None;
        }
        delay
    }

    /// Ends the session and closes the socket; a new one follows after the
    /// backoff (returned), unless closing.
    pub(super) fn give_up_link(&mut self, now: Instant) -> Option<Duration> {
        self.abandon_session();
        self.links.push_back(Link::Close);
        if self.closing.is_some() {
            self.exit = true;
            return None;
        }
        Some(self.schedule_backoff(now))
    }

    /// Declares the link dead: closes the socket and schedules a new one.
    pub(super) fn reset_link(&mut self, now: Instant) {
        if let Some(delay) = self.give_up_link(now) {
            clog!(Level::Info, "mc0 connector: reconnecting to {} in {}", self.settings.endpoint, secs(delay));
        }
    }

    /// Sends CONNECT (on the current socket) and waits for its OK.
    pub(super) fn start_handshake(&mut self, now: Instant) {
        self.requeue_outbox();
        // Whatever the broker held for us is gone or about to be.
        self.mark_all_wanted();
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
                self.settings.endpoint
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
                clog!(Level::Info, "mc0 connector {}: connected to {}", self.rid, self.settings.endpoint);
                if let Some(answer) = first.answer {
                    answer.send(Ok(()));
                }
            }
            None => clog!(
                Level::Info,
                "mc0 connector {}: connected again to {}; re-subscribing {} topics",
                self.rid,
                self.settings.endpoint,
                self.topics.len()
            ),
        }
        self.resubscribe();
    }
}
