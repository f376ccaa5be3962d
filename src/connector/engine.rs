//! The engine: the one thread that owns the transport (the DEALER socket).
//!
//! Each turn it hands the callers' requests and the clock to the session,
//! carries out the link commands the session gives (open a socket, close
//! it), hands the session's outbox to the transport, moves received
//! messages to the inbox, and then sleeps in one poll on the wake-up pipe
//! and the transport until the session's next deadline. Frames and events
//! from the transport go back to the session. It never sleep-polls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::logging::clog;
use super::message::Message;
use super::oneshot::Answer;
use super::session::{Link, Session};
use super::shared::{Request, Shared};
use super::transport::{Event, SendError, Transport};
use crate::log::Level;

/// Messages read per wake-up before attending to requests again.
const RECV_BATCH: usize = 4096;

pub(crate) struct Engine<T: Transport> {
    session: Session,
    transport: T,
    shared: Arc<Shared>,
    receive_queue: usize,
    /// Thousands of dropped messages already warned about.
    dropped_warned: u64,
}

impl<T: Transport> Engine<T> {
    pub fn new(session: Session, transport: T, shared: Arc<Shared>, receive_queue: usize) -> Engine<T> {
        Engine { session, transport, shared, receive_queue, dropped_warned: 0 }
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
            clog!(
                Level::Error,
                "mc0 connector {}: internal error, connector closed: {what}",
                self.session.routing_id()
            );
        }
        self.shutdown();
    }

    fn main_loop(&mut self) {
        loop {
            let now = Instant::now();
            // Acknowledgements taken since the last turn go out as one ACK
            // (each in its place: before any later request).
            let mut acks: Vec<u64> = Vec::new();
            for request in self.shared.take_requests() {
                match request {
                    Request::Ack { deliveries } => acks.extend(deliveries),
                    other => {
                        if !acks.is_empty() {
                            self.session.on_request(Request::Ack { deliveries: std::mem::take(&mut acks) }, now);
                        }
                        self.session.on_request(other, now);
                    }
                }
            }
            if !acks.is_empty() {
                self.session.on_request(Request::Ack { deliveries: acks }, now);
            }
            self.session.on_timers(now);
            self.apply_links(now);
            self.session.pump(now);
            self.transmit(now);
            self.apply_links(now);
            self.deliver();
            if self.session.finished() {
                return;
            }
            let timeout = self.session.poll_timeout(now);
            let ready = self.transport.wait(self.shared.waker.fd(), self.session.has_outbox(), timeout);
            if ready.woken {
                self.shared.waker.drain();
            }
            // Input first: what the broker sent before a disconnect belongs
            // to the session the disconnect ends.
            if ready.readable {
                self.receive(Instant::now());
            }
            if ready.events {
                self.events(Instant::now());
            }
        }
    }

    /// Opens or closes the socket as the session asks.
    fn apply_links(&mut self, now: Instant) {
        while let Some(link) = self.session.take_link() {
            match link {
                Link::Close => self.transport.close(),
                Link::Open(broker) => match self.transport.open(broker) {
                    Ok(rid) => {
                        self.shared.set_routing_id(&rid);
                        self.session.on_opened(rid, now);
                    }
                    Err(e) => self.session.on_open_failed(e, now),
                },
            }
        }
    }

    /// Hands the outbox to the transport, as far as it takes it.
    fn transmit(&mut self, now: Instant) {
        while let Some(out) = self.session.next_out() {
            match self.transport.send(out.frames) {
                Ok(()) => self.session.on_sent(now),
                Err(SendError::WouldBlock(frames)) => {
                    self.session.unsend(super::session::Out { id: out.id, frames });
                    return;
                }
                Err(SendError::Fatal(e)) => {
                    self.session.on_failure(e, now);
                    return;
                }
            }
        }
    }

    fn receive(&mut self, now: Instant) {
        for _ in 0..RECV_BATCH {
            match self.transport.recv() {
                Ok(Some(frames)) => self.session.on_frames(&frames, now),
                Ok(None) => break,
                Err(e) => self.session.on_failure(e, now),
            }
            // A session that ended (or asked for another socket) reads no
            // more of this one.
            if self.session.finished() || self.session.has_link() {
                break;
            }
        }
        self.deliver();
    }

    fn events(&mut self, now: Instant) {
        while let Some(event) = self.transport.next_event() {
            if matches!(event, Event::Up | Event::Down) {
                // What arrived before belongs to the session that ends.
                self.transport.settle();
                self.receive(now);
            }
            if self.session.finished() || self.session.has_link() {
                return;
            }
            self.session.on_event(event, now);
            if self.session.finished() || self.session.has_link() {
                return;
            }
        }
    }

    fn deliver(&mut self) {
        let messages: Vec<Message> = self.session.take_deliveries();
        if messages.is_empty() {
            return;
        }
        let mut dropped = 0u64;
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            for message in messages {
                if inbox.messages.len() < self.receive_queue {
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
                    self.session.routing_id(),
                    self.receive_queue
                );
            }
        }
    }

    fn shutdown(&mut self) {
        let leftover = self.shared.stop_requests();
        self.shared.close_inbox();
        let closed: Option<Answer> = self.session.shutdown(leftover);
        self.transport.close();
        if let Some(answer) = closed {
            answer.send(Ok(()));
        }
        clog!(Level::Debug, "mc0 connector {}: engine stopped", self.session.routing_id());
    }
}
