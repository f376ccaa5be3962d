//! What queue memberships, acknowledgements and PUTs to queued topics do
//! in the engine: the glue between the commands and [`Queues`](super::queues::Queues).
//! Commands only change the queues; what they made deliverable goes out
//! after the command's answer ([`Engine::handle`]), so a consumer's `OK`
//! to its SUB or ACK comes before the deliveries it unlocked.

use std::time::{Duration, Instant};

use mc0::log::Level;
use mc0::protocol::{parse_expires_in, EXPIRES_IN};

use super::acl;
use super::transport::Transport;
use super::{show, Engine, Sender};

impl<T: Transport> Engine<T> {
    /// `SUB QUEUE name`: membership of the named queue of each topic, under
    /// the same identity and role rules as a plain subscription.
    pub(super) fn join_queues(
        &mut self,
        rid: &[u8],
        sender: &Sender<'_>,
        name: &[u8],
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
            self.queues.join(topic, name, &consumer, now);
            self.out.log.log(
                Level::Info,
                format_args!("client {} consumes queue {} of {}", show(rid), show(name), show(topic)),
            );
        }
        Ok(())
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
        let mut unknown = 0;
        for seq in deliveries {
            if !self.queues.ack(rid, *seq) {
                unknown += 1;
            }
        }
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

    /// Sends what the queues have for consumers whose connection is up.
    pub(super) fn dispatch_queues(&mut self, now: Instant) {
        let clients = &self.clients;
        let deliveries = self.queues.dispatch(now, |rid| clients.get(rid).is_some_and(|c| !c.lost));
        for delivery in deliveries {
            if self.out.send(&delivery.consumer, &delivery.frames, now) {
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
            self.dispatch_queues(now);
        }
    }
}
