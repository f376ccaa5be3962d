//! What the connector hands out: received messages and counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A message received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to (lossily decoded as UTF-8).
    pub topic: String,
    /// The publisher's `X-` headers in arrival order; values are binary.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The payload. Several body frames (never sent by MCollective) are
    /// concatenated.
    pub body: Vec<u8>,
    /// The publisher's authenticated identity: the name its key is listed
    /// under in mc0d's allowlist (the `SENDER` header mc0d sets with
    /// `--authorized-keys`). `None` from a broker without an allowlist. Only
    /// mc0d sets it: a legacy broker forwards whatever a client put there.
    pub sender: Option<String>,
    /// The publisher's CURVE public key, Z85 (the `SENDER-KEY` header mc0d
    /// sets instead of `SENDER` when it has no name for the key: in open
    /// mode, or for a key listed without one). At most one of the two is
    /// set. Trust it as [`sender`](Message::sender).
    pub sender_key: Option<String>,
}

impl Message {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| &v[..])
    }

    /// The delivery id of a message from a queue (its `DELIVERY` header),
    /// which [`Connector::ack`](crate::connector::Connector::ack) acknowledges.
    pub fn delivery(&self) -> Option<u64> {
        self.header(crate::protocol::DELIVERY).and_then(|v| crate::protocol::parse_delivery(v).ok())
    }

    /// Whether this queue message was delivered before and not acknowledged.
    pub fn redelivered(&self) -> bool {
        self.header(crate::protocol::REDELIVERED).is_some()
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful CONNECT handshakes (1 after connect).
    pub handshakes: u64,
    /// Times a session with the broker ended and the connector started
    /// reconnecting: the broker closed the connection, or it was silent for
    /// 1.05 × TTL (then a new socket is opened).
    pub reconnects: u64,
    /// PUTs handed to the socket (a publish sent again after a reconnect
    /// counts again).
    pub sent: u64,
    /// Publishes acknowledged by the broker.
    pub published: u64,
    /// Publishes dropped: sent on a link that died before the broker
    /// acknowledged them, refused by the broker, or still queued at close.
    pub publishes_dropped: u64,
    /// Messages received from the broker (including dropped ones).
    pub received: u64,
    /// Received messages dropped because `receive_queue` was full.
    pub messages_dropped: u64,
    /// Publishes never sent because their time-to-live ran out while they
    /// waited in the send queue (e.g. while the broker was unreachable).
    pub expired: u64,
    /// Moves from one broker of the pool to another after its link was
    /// declared dead (0 with a single broker).
    pub failovers: u64,
    /// The broker in use or being tried: an index into the pool as
    /// configured ([`Settings::brokers`](super::Settings::brokers)).
    pub broker: usize,
}

/// The connector's last error: what and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub message: String,
    pub at: SystemTime,
}

impl Stats {
    /// The counters and the last error as one JSON object, the form the C
    /// ABI (`mc0_connector_stats_json`), Ruby and the `mc0` agent hand on:
    /// a new figure is one more key here, and every layer passes it along.
    pub fn to_json(&self, last_error: Option<&LastError>) -> serde_json::Value {
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        serde_json::json!({
            "handshakes": self.handshakes,
            "reconnects": self.reconnects,
            "sent": self.sent,
            "acknowledged": self.published,
            "published": self.published,
            "publishes_dropped": self.publishes_dropped,
            "received": self.received,
            "messages_dropped": self.messages_dropped,
            "expired": self.expired,
            "failovers": self.failovers,
            "broker_index": self.broker,
            "last_error": last_error.map(|e| e.message.as_str()),
            "last_error_at": last_error.map(|e| unix(e.at)),
        })
    }
}

/// The live counters behind [`Stats`], shared by the handle and the engine.
#[derive(Default)]
pub(crate) struct Counters {
    pub handshakes: AtomicU64,
    pub reconnects: AtomicU64,
    pub sent: AtomicU64,
    pub published: AtomicU64,
    pub publishes_dropped: AtomicU64,
    pub received: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub failovers: AtomicU64,
    pub broker: AtomicUsize,
    pub expired: AtomicU64,
    /// Publishes accepted from callers and not yet handed to the socket;
    /// `publish` reserves a slot here first, so that concurrent publishers
    /// cannot overshoot `send_queue`.
    pub queued_publishes: AtomicUsize,
    pub last_error: Mutex<Option<LastError>>,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        Stats {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            publishes_dropped: self.publishes_dropped.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            messages_dropped: self.messages_dropped.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            broker: self.broker.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }

    /// Takes one of `limit` slots for a publish; false when all are taken.
    pub fn reserve_publish(&self, limit: usize) -> bool {
        self.queued_publishes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1)).is_ok()
    }

    /// Gives back `n` slots: those publishes left the queue (sent or dropped).
    pub fn release_publishes(&self, n: usize) {
        self.queued_publishes.fetch_sub(n, Ordering::SeqCst);
    }

    /// Remembers `message` as the last error (for stats).
    pub fn note_error(&self, message: impl Into<String>) {
        let error = LastError { message: message.into(), at: SystemTime::now() };
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_takes_the_first() {
        let m = Message {
            topic: "t".into(),
            headers: vec![("X-A".into(), b"1".to_vec()), ("X-A".into(), b"2".to_vec())],
            body: vec![],
            sender: None,
            sender_key: None,
        };
        assert_eq!(m.header("X-A"), Some(&b"1"[..]));
        assert_eq!(m.header("X-B"), None);
    }

    #[test]
    fn publish_slots_are_bounded() {
        let c = Counters::default();
        assert!(c.reserve_publish(2) && c.reserve_publish(2));
        assert!(!c.reserve_publish(2));
        c.release_publishes(1);
        assert!(c.reserve_publish(2));
    }
}
