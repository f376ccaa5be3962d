//! The engine's side of a cluster (`mc0d --cluster`, see
//! `crate::cluster`): it reports which topics have local subscribers or a
//! queue (the broker's NATS interest), hands every accepted PUT over for
//! one publish, and fans out (and queues) what other brokers published. No socket here either: the
//! server loop carries [`ToCluster`] to the NATS thread and back.

use std::sync::Arc;
use std::time::Instant;

use mc0::log::Level;

use super::clients::Bytes;
use super::shared::Shared;
use super::transport::Transport;
use super::{show, Engine, LOST};
use crate::cluster::payload;
use crate::logger::Logger;
use crate::stats::DropReason;

/// Work for the NATS side, in the order it arose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCluster {
    /// The first local subscriber or queue of a topic came (true) or the
    /// last one left (false): subscribe to or drop its subject.
    Interest(Bytes, bool),
    /// Publish this payload ([`payload::encode`]d MESSAGE frames) under
    /// the topic's subject.
    Publish(Bytes, Vec<u8>),
}

pub(super) struct ClusterLink {
    /// Largest payload the NATS server takes (its `max_payload`).
    max_payload: usize,
    publishes: Vec<ToCluster>,
}

impl ClusterLink {
    /// Queues `frames` for the cluster, or refuses the PUT (nothing is
    /// delivered anywhere) when they would not fit in one NATS message.
    pub(super) fn publish(&mut self, topic: &[u8], frames: &[Vec<u8>], log: &Logger) -> Result<(), String> {
        let size = payload::overhead(frames) + frames.iter().map(Vec::len).sum::<usize>();
        if size > self.max_payload {
            let why = format!(
                "message to {} is {size} bytes with its headers, over the cluster's limit of {} bytes \
                 (the NATS server's max_payload): not delivered",
                show(topic),
                self.max_payload
            );
            log.log(Level::Warn, format_args!("refused a PUT: {why}"));
            return Err(why);
        }
        self.publishes.push(ToCluster::Publish(Arc::from(topic), payload::encode(frames)));
        Ok(())
    }
}

impl<T: Transport> Engine<T> {
    /// Makes this engine a cluster member: from now on it reports interest
    /// changes and publishes (see [`take_cluster_work`](Engine::take_cluster_work)).
    /// The topics already subscribed are reported as interest.
    pub fn join_cluster(&mut self, max_payload: usize) {
        self.subs.track_interest();
        self.cluster = Some(ClusterLink { max_payload, publishes: Vec::new() });
    }

    /// The largest payload the cluster takes, as the NATS server announced it.
    pub fn set_cluster_max_payload(&mut self, max_payload: usize) {
        if let Some(cluster) = &mut self.cluster {
            cluster.max_payload = max_payload;
        }
    }

    /// Hands over the cluster work gathered since the last call: interest
    /// changes (in order) first, then publishes (in order).
    pub fn take_cluster_work(&mut self, mut each: impl FnMut(ToCluster)) {
        let Some(cluster) = &mut self.cluster else { return };
        for (topic, on) in self.subs.take_interest() {
            each(ToCluster::Interest(topic, on));
        }
        for work in cluster.publishes.drain(..) {
            each(work);
        }
    }

    /// Delivers a message another broker published (its MESSAGE frames,
    /// stamp included) to the local subscribers of `topic`, and keeps it in
    /// the topic's local queues as a local PUT would be; never back to the
    /// cluster. Returns how many subscribers got it.
    pub fn deliver_from_cluster(&mut self, topic: &[u8], frames: Vec<Vec<u8>>, now: Instant) -> usize {
        self.out.stats.msgs_in += 1;
        if self.queues.has_topic(topic) {
            self.enqueue_from_cluster(topic, &frames, now);
        }
        if self.subs.subscribers(topic).next().is_none() {
            return 0;
        }
        let delivered = self.fan_out(topic, &mut Shared::new(frames), now);
        self.out.stats.delivered += delivered as u64;
        delivered
    }

    /// Sends `message` to every local subscriber of `topic`; returns to how
    /// many.
    pub(super) fn fan_out(&mut self, topic: &[u8], message: &mut Shared, now: Instant) -> usize {
        // A connection that ended must not pass its routing id's
        // deliveries on to one that took the id since.
        self.connections_lost(true, now);
        let mut delivered = 0;
        for sub in self.subs.subscribers(topic) {
            let Some(client) = self.clients.get_mut(sub) else { continue };
            let sent = if client.lost {
                self.out.dropped(sub, 1, DropReason::ConnectionLost, LOST, now);
                false
            } else {
                self.out.send_shared(sub, message, now)
            };
            if sent {
                client.last_sent = now;
                client.msgs_out += 1;
                delivered += 1;
            }
        }
        delivered
    }
}
