//! Per-client send buffers, bounded in bytes: where messages to a client
//! wait while libzmq's queue to it is full.
//!
//! libzmq bounds a client's queue in messages (`ZMQ_SNDHWM`), which a burst
//! of small messages exhausts: one broadcast request to a fleet of more
//! than `--sndhwm` nodes brings that many replies to one `mco` client at
//! once, and MCollective's Ruby client reads a few thousand per second. So
//! when a send to a client would block, that message and every later one
//! to the same client wait here, in order, and are sent as the client
//! drains. Only a client holding more than `--client-buffer` bytes here is
//! taken as stuck: what does not fit is dropped (and counted), nobody else
//! ever waits for it.
//!
//! ROUTER sockets have no per-peer POLLOUT, so a buffered client is retried
//! on a timer: 1 ms after it blocked, doubling while it makes no progress
//! up to [`RETRY_MAX`], back to 1 ms as soon as a send goes through. A
//! client that reads steadily is retried often; a stuck one costs a failed
//! send every [`RETRY_MAX`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clients::Bytes;

/// A message's frames, delimiter first (shared by the recipients of a
/// fan-out that are buffered).
pub type Frames = Arc<Vec<Vec<u8>>>;

const RETRY_MIN: Duration = Duration::from_millis(1);
/// Longest wait between two tries of a buffered client.
pub const RETRY_MAX: Duration = Duration::from_millis(50);

struct Buffer {
    queue: VecDeque<(Frames, usize)>,
    bytes: usize,
    next_try: Instant,
    delay: Duration,
}

/// What a retry of one client's buffer did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retried {
    /// Messages that went to libzmq.
    pub sent: usize,
    /// Their bytes.
    pub bytes: usize,
    /// A send failed for good (peer gone): the error, and how many messages
    /// (the failed one included) were dropped with the buffer.
    pub failed: Option<(zmq::Error, usize)>,
}

/// Every client's buffer. Holds no socket: sends go through the closure
/// [`retry`](Buffers::retry) is given.
pub struct Buffers {
    limit: usize,
    clients: HashMap<Bytes, Buffer>,
    messages: usize,
    bytes: usize,
}

/// The bytes a message makes the broker hold.
pub fn size<F: AsRef<[u8]>>(frames: &[F]) -> usize {
    frames.iter().map(|f| f.as_ref().len()).sum()
}

impl Buffers {
    /// Buffers of at most `limit` bytes per client (one larger message is
    /// still taken when the buffer is empty, so no size is undeliverable).
    pub fn new(limit: usize) -> Self {
        Buffers { limit, clients: HashMap::new(), messages: 0, bytes: 0 }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether messages to `rid` must queue behind its buffer.
    pub fn holds(&self, rid: &[u8]) -> bool {
        // Usually nobody is buffered: skip hashing the id on every send.
        !self.clients.is_empty() && self.clients.contains_key(rid)
    }

    /// Messages waiting in all buffers.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Bytes waiting in all buffers.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a message to `rid`'s buffer (starting one if needed); false
    /// if it does not fit and was not taken.
    pub fn push(&mut self, rid: &[u8], frames: Frames, now: Instant) -> bool {
        let size = size(&frames);
        match self.clients.get_mut(rid) {
            Some(buffer) => {
                if buffer.bytes.saturating_add(size) > self.limit {
                    return false;
                }
                buffer.queue.push_back((frames, size));
                buffer.bytes += size;
            }
            None => {
                let queue = VecDeque::from([(frames, size)]);
                let buffer = Buffer { queue, bytes: size, next_try: now + RETRY_MIN, delay: RETRY_MIN };
                self.clients.insert(Arc::from(rid), buffer);
            }
        }
        self.messages += 1;
        self.bytes += size;
        true
    }

    /// When the next client is due a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.clients.values().map(|b| b.next_try).min()
    }

    /// The clients due a retry at `now`.
    pub fn due(&self, now: Instant) -> Vec<Bytes> {
        self.clients.iter().filter(|(_, b)| b.next_try <= now).map(|(rid, _)| rid.clone()).collect()
    }

    /// Sends `rid`'s messages in order through `send` until it would block
    /// (EAGAIN: retried later) or the buffer is empty (then removed). Any
    /// other error drops the whole buffer.
    pub fn retry(
        &mut self,
        rid: &[u8],
        now: Instant,
        mut send: impl FnMut(&[Vec<u8>]) -> Result<(), zmq::Error>,
    ) -> Retried {
        let mut done = Retried::default();
        let Some(buffer) = self.clients.get_mut(rid) else { return done };
        while let Some((frames, size)) = buffer.queue.front() {
            match send(frames) {
                Ok(()) => {
                    buffer.bytes -= size;
                    self.bytes -= size;
                    self.messages -= 1;
                    done.bytes += size;
                    buffer.queue.pop_front();
                    done.sent += 1;
                }
                Err(zmq::Error::EAGAIN) => {
                    buffer.delay = if done.sent > 0 { RETRY_MIN } else { (buffer.delay * 2).min(RETRY_MAX) };
                    buffer.next_try = now + buffer.delay;
                    return done;
                }
                Err(e) => {
                    done.failed = Some((e, self.discard(rid)));
                    return done;
                }
            }
        }
        self.clients.remove(rid);
        done
    }

    /// Messages waiting for `rid`.
    pub fn queued(&self, rid: &[u8]) -> usize {
        self.clients.get(rid).map_or(0, |b| b.queue.len())
    }

    /// Drops `rid`'s buffer; returns how many messages it held.
    pub fn discard(&mut self, rid: &[u8]) -> usize {
        let Some(buffer) = self.clients.remove(rid) else { return 0 };
        self.messages -= buffer.queue.len();
        self.bytes -= buffer.bytes;
        buffer.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8, len: usize) -> Frames {
        Arc::new(vec![vec![], vec![n; len]])
    }

    /// Buffers of 1000 bytes, `count` messages of 10 bytes waiting for "a".
    fn holding(count: u8, now: Instant) -> Buffers {
        let mut b = Buffers::new(1000);
        for n in 0..count {
            assert!(b.push(b"a", msg(n, 10), now));
        }
        b
    }

    #[test]
    fn bounded_in_bytes_per_client_and_in_order() {
        let t0 = Instant::now();
        let mut b = Buffers::new(100);
        assert!(b.push(b"a", msg(1, 60), t0));
        assert!(b.push(b"a", msg(2, 40), t0));
        assert!(!b.push(b"a", msg(3, 1), t0), "over the bound");
        assert!(b.push(b"b", msg(4, 500), t0), "an empty buffer takes one message of any size");
        assert_eq!((b.messages(), b.bytes()), (3, 600));
        let mut sent = Vec::new();
        let r = b.retry(b"a", t0, |f| {
            sent.push(f[1][0]);
            Ok(())
        });
        assert_eq!(r, Retried { sent: 2, bytes: 100, failed: None });
        assert_eq!(sent, vec![1, 2]);
        assert!(!b.holds(b"a"), "an emptied buffer is gone");
        assert_eq!((b.messages(), b.bytes()), (1, 500));
    }

    #[test]
    fn a_blocked_client_is_retried_later_and_sooner_after_progress() {
        let t0 = Instant::now();
        let mut b = holding(4, t0);
        assert!(b.due(t0).is_empty());
        let mut now = t0 + RETRY_MIN;
        assert_eq!(b.due(now).len(), 1);
        // No progress: the delay doubles up to RETRY_MAX.
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            assert_eq!(b.retry(b"a", now, |_| Err(zmq::Error::EAGAIN)).sent, 0);
            let wait = b.next_retry().unwrap() - now;
            assert!(wait >= last && wait <= RETRY_MAX, "{wait:?}");
            last = wait;
            now += wait;
        }
        assert_eq!(last, RETRY_MAX);
        // One send through: back to the shortest delay.
        let mut first = true;
        let r = b.retry(b"a", now, |_| if std::mem::take(&mut first) { Ok(()) } else { Err(zmq::Error::EAGAIN) });
        assert_eq!(r.sent, 1);
        assert_eq!(b.next_retry().unwrap() - now, RETRY_MIN);
        assert_eq!(b.messages(), 3);
    }

    #[test]
    fn a_peer_gone_drops_its_buffer() {
        let t0 = Instant::now();
        let mut b = holding(3, t0);
        b.push(b"b", msg(9, 10), t0);
        let r = b.retry(b"a", t0, |_| Err(zmq::Error::EHOSTUNREACH));
        assert_eq!(r, Retried { sent: 0, bytes: 0, failed: Some((zmq::Error::EHOSTUNREACH, 3)) });
        assert!(!b.holds(b"a"));
        assert_eq!((b.messages(), b.bytes()), (1, 10));
        assert_eq!(b.discard(b"b"), 1);
        assert_eq!((b.messages(), b.bytes(), b.next_retry()), (0, 0, None));
    }
}
