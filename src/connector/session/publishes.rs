//! The publish queue: PUTs handed out in batches within the window of
//! unacknowledged ones, put back in order when they never left, settled
//! exactly once (acknowledged or dropped), and flush() barriers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Pending, Queued, Session, State, SEND_BATCH};
use crate::connector::logging::clog;
use crate::connector::message::Counters;
use crate::connector::shared::Publish;
use crate::log::Level;
use crate::protocol::{self, AckForm, Command, EXPIRES_IN};

/// Delivery ids per `ACK`: well within a broker's frame limit (4096).
const MAX_ACK_IDS: usize = 1000;

impl Session {
    /// Whether a queued publish may go out: the broker's OKs keep up.
    /// Closing sends everything queued; otherwise at most `send_queue` wait
    /// for their OK.
    pub(super) fn may_send_publish(&self) -> bool {
        let window = if self.closing.is_some() { usize::MAX } else { self.settings.send_queue };
        !self.publishes.is_empty() && self.inflight_puts < window
    }

    /// Whether [`pump`](Session::pump) would hand out PUTs now.
    pub(super) fn can_send_publishes(&self) -> bool {
        self.state == State::Ready && self.outbox.is_empty() && self.may_send_publish()
    }

    /// Moves a batch of queued publishes to the outbox once the transport
    /// has taken everything before them, then DISCONNECT when closing.
    pub fn pump(&mut self, now: Instant) {
        if self.exit || self.state != State::Ready {
            return;
        }
        if self.outbox.is_empty() {
            for _ in 0..SEND_BATCH {
                if !self.may_send_publish() {
                    break;
                }
                let Some(q) = self.publishes.pop_front() else { break };
                self.counters.release_publishes(1);
                let Some(left) = time_left(&q.publish, now) else {
                    self.expire(q);
                    continue;
                };
                let id = self.next_id();
                let frames = put_frames(&q.publish, id, left);
                self.inflight_puts += 1;
                self.pending.insert(id, Pending::Put(q));
                self.send(id, frames);
                Counters::add(&self.counters.sent, 1);
            }
        }
        let disconnect_due = matches!(&self.closing, Some(c) if c.disconnect_id.is_none()) && self.publishes.is_empty();
        if disconnect_due {
            let id = self.next_id();
            self.pending.insert(id, Pending::Disconnect);
            if let Some(closing) = &mut self.closing {
                closing.disconnect_id = Some(id);
            }
            self.send(id, Command::Disconnect { id: Some(id.to_string().as_bytes()) }.to_frames());
        }
    }

    /// A publish whose time-to-live ran out before it could be sent: it
    /// must not run late (a stale request on a fleet), so it is dropped,
    /// counted and logged, and settled for flush().
    fn expire(&mut self, q: Queued) {
        self.unfinished.remove(&q.seq);
        Counters::add(&self.counters.expired, 1);
        clog!(
            Level::Warn,
            "mc0 connector {}: publish to {:?} expired in the send queue (its time-to-live ran out before the broker \
             could take it); not sent",
            self.rid,
            String::from_utf8_lossy(&q.publish.topic)
        );
        self.check_flushes();
    }

    /// `ACK` for queue deliveries, without ID: a lost one only means the
    /// broker delivers the message again (at least once). Dropped while no
    /// session is up, for the same reason.
    pub(super) fn send_ack(&mut self, deliveries: Vec<u64>) {
        if self.state != State::Ready {
            return;
        }
        let form = if self.lists_acks { AckForm::List } else { AckForm::FramePerId };
        for chunk in deliveries.chunks(MAX_ACK_IDS) {
            let id = self.next_id();
            self.send(id, protocol::ack_frames(None, chunk, form));
        }
    }

    /// Frames that never left us are not lost: PUTs go back to the queue,
    /// others are settled as if lost (subscriptions wait for the next
    /// session).
    pub(super) fn requeue_outbox(&mut self) {
        for out in std::mem::take(&mut self.outbox) {
            match self.pending.remove(&out.id) {
                Some(Pending::Put(q)) => {
                    self.inflight_puts -= 1;
                    self.requeue(q);
                }
                Some(other) => {
                    self.settle_lost(out.id, other);
                }
                None => {}
            }
        }
    }

    /// Puts a PUT back into the send queue at its place in publish order.
    pub(super) fn requeue(&mut self, q: Queued) {
        self.counters.queued_publishes.fetch_add(1, Ordering::SeqCst);
        let at = self.publishes.partition_point(|p| p.seq < q.seq);
        self.publishes.insert(at, q);
    }

    /// Settles a PUT that was in flight: acknowledged, or dropped for good.
    pub(super) fn finish_publish(&mut self, seq: u64, acknowledged: bool) {
        self.inflight_puts -= 1;
        self.unfinished.remove(&seq);
        Counters::add(if acknowledged { &self.counters.published } else { &self.counters.publishes_dropped }, 1);
    }

    pub(super) fn check_flushes(&mut self) {
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
}

/// `Some(None)`: no time-to-live; `Some(Some(ms))`: what is left of it;
/// `None`: it ran out.
fn time_left(publish: &Publish, now: Instant) -> Option<Option<u64>> {
    match publish.expires {
        None => Some(None),
        Some(at) if at <= now => None,
        Some(at) => Some(Some((at - now).as_millis().max(1) as u64)),
    }
}

fn put_frames(publish: &Publish, id: u64, expires_in: Option<u64>) -> Vec<Vec<u8>> {
    let id = id.to_string();
    let left = expires_in.map(|ms| ms.to_string());
    let mut headers: Vec<(&[u8], &[u8])> = publish.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    if let Some(left) = &left {
        headers.push((EXPIRES_IN.as_bytes(), left.as_bytes()));
    }
    Command::Put { topic: &publish.topic, headers, id: Some(id.as_bytes()), body: vec![&publish.body] }.to_frames()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;

    #[test]
    fn put_frames_carry_topic_headers_id_and_body() {
        let p = Publish {
            topic: b"c agent".to_vec(),
            headers: vec![(b"X-REPLY-TO".to_vec(), b"c reply me 1".to_vec())],
            body: b"\x00\x01".to_vec(),
            expires: None,
        };
        let frames = put_frames(&p, 42, None);
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
}
