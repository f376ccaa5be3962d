//! What queue memberships, acknowledgements and PUTs to queued topics do
//! in the engine: the glue between the commands and [`Queues`](super::queues::Queues).
//! Commands only change the queues; what they made deliverable goes out
//! after the command's answer ([`Engine::handle`]), so a consumer's `OK`
//! to its SUB or ACK comes before the deliveries it unlocked.

use std::time::{Duration, Instant};

use mc0::log::Level;
use mc0::protocol::{parse_expires_in, Limits, Reply, EXPIRES_IN};

use super::acl;
use super::transport::Transport;
use super::{more_since, show, Engine, Sender};

impl<T: Transport> Engine<T> {
    /// `SUB QUEUE name [COMPACT 1]`: membership of the named queue of each
    /// topic, under the same identity and role rules as a plain
    /// subscription; `compact`: its deliveries in the compact form.
    pub(super) fn join_queues(
        &mut self,
        rid: &[u8],
        sender: &Sender<'_>,
        name: &[u8],
        compact: bool,
        topics: &[&[u8]],
        now: Instant,
    ) -> Result<(), String> {
        if let Some(actor) = sender.actor() {
            let verdict = topics.iter().try_for_each(|t| acl::check_subscribe(actor, t));
            self.judge(rid, sender, "SUB", verdict, now)?;
        }
        let Some(client) = self.clients.get(rid) else { return Ok(()) };
        let consumer = client.id.clone();
        for topic in topics {
            self.queues.join(topic, name, &consumer, compact, now);
            self.out.log.log(
                Level::Info,
                format_args!("client {} consumes queue {} of {}", show(rid), show(name), show(topic)),
            );
        }
        self.hold_queue_topics();
        Ok(())
    }

    /// A queue holds its topic's cluster interest from its creation until
    /// it is forgotten, with or without consumers: what other brokers
    /// publish to the topic meanwhile is kept for it.
    pub(super) fn hold_queue_topics(&mut self) {
        for (topic, on) in self.queues.take_topic_changes() {
            self.subs.hold(&topic, on);
        }
    }

    /// `UNSUB QUEUE name`: what the member holds goes back to each queue.
    pub(super) fn leave_queues(&mut self, rid: &[u8], name: &[u8], topics: &[&[u8]], now: Instant) {
        for topic in topics {
            self.queues.leave(topic, name, rid, now);
        }
    }

    /// A session ended (disconnect, expiry, revocation, re-CONNECT): its
    /// memberships end and what it held goes to another member or waits.
    pub(super) fn forget_consumer(&mut self, rid: &[u8], now: Instant) {
        if !self.queues.is_empty() {
            self.queues.forget(rid, now);
            self.dispatch_queues(now);
        }
    }

    /// `ACK`: each delivery the client holds is done; ids it does not hold
    /// (acknowledged already, or taken back when it lost its connection) are
    /// ignored, as at-least-once allows.
    pub(super) fn ack(&mut self, rid: &[u8], deliveries: &[u64]) {
        let unknown = deliveries.len() - self.queues.ack_all(rid, deliveries);
        if unknown < deliveries.len() {
            self.store_acked();
        }
        if unknown > 0 && self.out.log.enabled(Level::Debug) {
            self.out.log.log(
                Level::Debug,
                format_args!("client {} acknowledged {unknown} deliveries it does not hold", show(rid)),
            );
        }
    }

    /// Refuses a PUT to a topic one of whose queues is full, before anything
    /// of it is done.
    pub(super) fn check_queue_room(&self, topic: &[u8], headers: &[(&[u8], &[u8])], size: usize) -> Result<(), String> {
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.queues.check_room(topic, size + header_bytes)
    }

    /// Stores a PUT (its headers already stamped) in the queues of its
    /// topic and hands it on to a consumer if one can take it.
    /// With a store, the OK waits for the write, and consumers get the
    /// message once it is written (see `persist`).
    pub(super) fn enqueue(
        &mut self,
        topic: &[u8],
        headers: &[(&[u8], &[u8])],
        body: &[&[u8]],
        now: Instant,
    ) -> Result<(), String> {
        let expires = headers
            .iter()
            .find(|(k, _)| *k == EXPIRES_IN.as_bytes())
            .and_then(|(_, v)| parse_expires_in(v).ok())
            .map(|ms| now + Duration::from_millis(ms));
        let records = self.queues.push(topic, headers, body, expires, now);
        self.store_puts(records);
        Ok(())
    }

    /// Keeps a message another broker published (its MESSAGE `frames`) in
    /// the local queues of `topic`, as [`enqueue`](Engine::enqueue) keeps a
    /// PUT, and hands it on to a consumer. No publisher waits for an OK
    /// here: a message that does not fit, or that the store refuses, is
    /// logged and lost. Across brokers delivery is at most once up to this
    /// point, and at least once from here on.
    pub(super) fn enqueue_from_cluster(&mut self, topic: &[u8], frames: &[Vec<u8>], now: Instant) {
        // The publishing broker enforced the limits; its TOPIC and stamp
        // add a header each.
        let relaxed = Limits { max_headers: usize::MAX, max_frames: usize::MAX, ..self.limits };
        let stored = match Reply::parse(frames, &relaxed) {
            Ok(Reply::Message { topic: t, headers, body }) if t == topic => {
                let size = body.iter().map(|b| b.len()).sum();
                self.check_queue_room(topic, &headers, size).and_then(|()| {
                    // As for a PUT: a connection that ended must not pass its
                    // routing id's deliveries on to one that took the id since.
                    self.connections_lost(true, now);
                    self.enqueue(topic, &headers, &body, now)
                })
            }
            _ => Err("it is not an mc0d MESSAGE of that topic".to_string()),
        };
        match stored {
            Ok(()) => {
                self.nobody_waits_for_store();
                self.dispatch_queues(now);
            }
            Err(why) => {
                self.out.stats.unqueued += 1;
                if let Some(suppressed) = self.unqueued_warn.allow(now) {
                    self.out.log.log(
                        Level::Warn,
                        format_args!(
                            "a message from another broker to {} was not queued: {why}{}",
                            show(topic),
                            more_since(suppressed, "such messages")
                        ),
                    );
                }
            }
        }
    }

    /// Sends what the queues have for consumers whose connection is up.
    pub(super) fn dispatch_queues(&mut self, now: Instant) {
        let clients = &self.clients;
        let deliveries = self.queues.dispatch(now, |rid| clients.get(rid).is_some_and(|c| !c.lost));
        for delivery in deliveries {
            if delivery.with_frames(|frames| self.out.send_parts(&delivery.consumer, frames, now)) {
                self.clients.sent(&delivery.consumer, now);
                self.out.stats.delivered += 1;
            }
        }
    }

    /// Time-driven queue work: expired messages, idle queues.
    pub(super) fn tick_queues(&mut self, now: Instant) {
        if self.queues.next_sweep().is_some_and(|at| at <= now) {
            let expired = self.queues.sweep(now);
            if expired > 0 {
                self.out.log.log(Level::Info, format_args!("{expired} queued messages expired"));
            }
            // Idle queues may have gone.
            self.hold_queue_topics();
            self.dispatch_queues(now);
        }
    }
}
