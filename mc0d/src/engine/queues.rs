//! Named queues of topics (competing consumers, at-least-once) as a state
//! machine with no socket and no clock of its own: the engine feeds it
//! PUTs, memberships, acknowledgements, departures and time, and sends the
//! deliveries it hands back. Checked against a simple model by the property
//! test at the end of this file.
//!
//! A queue `(topic, name)` keeps the topic's messages while none of its
//! consumers can take them, gives each message to one consumer at a time
//! (round robin, at most `prefetch` unacknowledged per consumer), and puts a
//! message back at the head of the queue, marked redelivered, when the
//! consumer holding it leaves (unsubscribes, disconnects, expires, is
//! revoked, or its connection closes) before acknowledging it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::protocol::{queue_delivery, DELIVERY, EXPIRES_IN, QUEUE, QUEUE_DELIVERY, REDELIVERED};

use super::clients::Bytes;
use crate::store::Record;

/// Default bound of one queue's messages (`--queue-max-messages`).
pub const DEFAULT_MAX_MESSAGES: usize = 100_000;
/// Default bound of one queue's bytes, bodies and headers
/// (`--queue-max-bytes`).
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Default time after which an empty, undeclared queue nobody consumes from
/// is forgotten (`--queue-idle`).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// Unacknowledged deliveries one consumer holds at most, per queue: enough
/// to keep a consumer busy across a round trip, few enough that a slow one
/// does not hoard the queue.
pub const DEFAULT_PREFETCH: usize = 1000;
/// How often expired messages and idle queues are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The bounds every queue keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub idle: Duration,
    pub prefetch: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: DEFAULT_MAX_MESSAGES,
            max_bytes: DEFAULT_MAX_BYTES,
            idle: DEFAULT_IDLE,
            prefetch: DEFAULT_PREFETCH,
        }
    }
}

/// One stored message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Its delivery id: unique in the broker's lifetime.
    pub seq: u64,
    /// The PUT's headers as its MESSAGE carries them (sender stamp
    /// included), without `EXPIRES-IN`, which is recomputed per delivery.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub expires: Option<Instant>,
    /// Delivered before and not acknowledged.
    pub redelivered: bool,
}

impl Stored {
    fn size(&self) -> usize {
        self.body.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// A consumer of a queue.
#[derive(Debug)]
struct Member {
    id: Bytes,
    /// Its SUB asked for the compact delivery form (`COMPACT 1`).
    compact: bool,
}

/// Messages are shared between their queue and their deliveries, so a
/// delivery's MESSAGE is sent from the stored bytes without a copy of them.
#[derive(Debug)]
struct Queue {
    ready: VecDeque<Arc<Stored>>,
    /// Delivery id -> (consumer, message).
    inflight: HashMap<u64, (Bytes, Arc<Stored>)>,
    /// How many of `inflight` each consumer holds (absent: none), so
    /// dispatching does not count them per message.
    held: HashMap<Bytes, usize>,
    consumers: Vec<Member>,
    /// Where round robin goes on.
    cursor: usize,
    bytes: usize,
    declared: bool,
    /// Last time it had a consumer or a message: for forgetting idle queues.
    used: Instant,
    /// Its messages removed because their time ran out, and its deliveries
    /// marked redelivered: for the metrics.
    expired: u64,
    redelivered: u64,
}

impl Queue {
    fn new(declared: bool, now: Instant) -> Self {
        Queue {
            ready: VecDeque::new(),
            inflight: HashMap::new(),
            held: HashMap::new(),
            consumers: Vec::new(),
            cursor: 0,
            bytes: 0,
            declared,
            used: now,
            expired: 0,
            redelivered: 0,
        }
    }

    fn len(&self) -> usize {
        self.ready.len() + self.inflight.len()
    }

    fn held_by(&self, consumer: &[u8]) -> usize {
        self.held.get(consumer).copied().unwrap_or(0)
    }

    /// Takes delivery `seq` back from its holder (acknowledged).
    fn take(&mut self, seq: u64) -> Option<(Bytes, Arc<Stored>)> {
        let (consumer, message) = self.inflight.remove(&seq)?;
        if let Some(n) = self.held.get_mut(&consumer) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&consumer);
            }
        }
        Some((consumer, message))
    }

    /// Puts back every message `consumer` holds, marked redelivered, in
    /// delivery order at the head of the queue.
    fn release(&mut self, consumer: &[u8]) -> usize {
        if self.held.remove(consumer).is_none() {
            return 0;
        }
        let mut back: Vec<Arc<Stored>> = Vec::new();
        self.inflight.retain(|_, (c, m)| {
            if &c[..] == consumer {
                back.push(m.clone());
                false
            } else {
                true
            }
        });
        back.sort_by_key(|m| m.seq);
        let n = back.len();
        for mut m in back.into_iter().rev() {
            Arc::make_mut(&mut m).redelivered = true;
            self.ready.push_front(m);
        }
        n
    }
}

/// A queue is a topic and a name.
pub type QueueKey = (Bytes, Bytes);

/// One queue at one moment (see [`Queues::figures`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFigures {
    pub topic: Bytes,
    pub name: Bytes,
    /// Waiting or delivered and not yet acknowledged.
    pub messages: usize,
    pub bytes: usize,
    pub unacknowledged: usize,
    pub consumers: usize,
    /// Removed because their time ran out, since the queue was made.
    pub expired: u64,
    /// Deliveries marked redelivered, since the queue was made.
    pub redelivered: u64,
}

/// One delivery to send: to `consumer`, the stored message as a MESSAGE
/// from its queue (see [`with_frames`](Delivery::with_frames)).
#[derive(Debug)]
pub struct Delivery {
    pub consumer: Bytes,
    pub seq: u64,
    key: QueueKey,
    message: Arc<Stored>,
    /// Milliseconds left to live, for `EXPIRES-IN`.
    left: Option<u128>,
    /// In the compact form: `QUEUE-DELIVERY` instead of `QUEUE` and
    /// `DELIVERY`, two frames less.
    compact: bool,
}

impl Delivery {
    /// Calls `f` with the MESSAGE's frames (delimiter first), borrowed from
    /// the stored message: the queue's name and the delivery id (folded
    /// in one header in the compact form), the redelivery mark and the
    /// time left come first, then the PUT's headers (the order
    /// [`Reply::Message`](mc0::protocol::Reply::Message) gives them).
    pub fn with_frames<R>(&self, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        let m = &self.message;
        let left = self.left.map(|ms| ms.to_string());
        let mut frames: Vec<&[u8]> = Vec::with_capacity(14 + 2 * m.headers.len());
        frames.extend([&b""[..], b"MESSAGE", b"TOPIC", &self.key.0]);
        let folded;
        let seq;
        if self.compact {
            folded = queue_delivery(m.seq, &self.key.1);
            frames.extend([QUEUE_DELIVERY.as_bytes(), &folded]);
        } else {
            seq = m.seq.to_string();
            frames.extend([QUEUE.as_bytes(), &self.key.1, DELIVERY.as_bytes(), seq.as_bytes()]);
        }
        if m.redelivered {
            frames.extend([REDELIVERED.as_bytes(), b"1"]);
        }
        if let Some(left) = &left {
            frames.extend([EXPIRES_IN.as_bytes(), left.as_bytes()]);
        }
        for (k, v) in &m.headers {
            frames.extend([&k[..], &v[..]]);
        }
        frames.extend([&b""[..], &m.body]);
        f(&frames)
    }

    /// The MESSAGE's frames, owned.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.with_frames(|frames| frames.iter().map(|f| f.to_vec()).collect())
    }
}

/// Every queue of the broker.
#[derive(Debug)]
pub struct Queues {
    limits: QueueLimits,
    queues: HashMap<QueueKey, Queue>,
    /// Topic -> its queues' names, so a PUT finds them in one lookup.
    by_topic: HashMap<Bytes, Vec<Bytes>>,
    /// Queues that may have something to deliver.
    dirty: HashSet<QueueKey>,
    next_seq: u64,
    next_sweep: Option<Instant>,
    /// Messages removed because their time ran out.
    pub expired: u64,
    /// With a store: what [`push`](Queues::push) returns records for, and
    /// delivery ids of messages done with since the last [`take_removed`](Queues::take_removed).
    persist: bool,
    removed: Vec<u64>,
    /// Topics that gained their first queue (true) or lost their last
    /// (false) since the last [`take_topic_changes`](Queues::take_topic_changes):
    /// a queue holds its topic's cluster interest.
    topic_changes: Vec<(Bytes, bool)>,
    /// With a store: the highest delivery id known to be written. Later
    /// ones wait (at the tail of their queues: ids rise) until
    /// [`settle`](Queues::settle) says they are.
    settled: u64,
}

impl Queues {
    pub fn new(limits: QueueLimits) -> Self {
        Queues {
            limits,
            queues: HashMap::new(),
            by_topic: HashMap::new(),
            dirty: HashSet::new(),
            next_seq: 1,
            next_sweep: None,
            expired: 0,
            persist: false,
            removed: Vec::new(),
            topic_changes: Vec::new(),
            settled: u64::MAX,
        }
    }

    /// Keeps what a store needs from now on, and takes back what one held:
    /// the messages wait in their queues (created if need be) in delivery
    /// id order, and new ids follow the highest.
    pub fn restore(&mut self, mut records: Vec<Record>, now: Instant) {
        self.persist = true;
        records.sort_by_key(|r| r.message.seq);
        for record in records {
            self.next_seq = self.next_seq.max(record.message.seq + 1);
            let key: QueueKey = (Bytes::from(&record.topic[..]), Bytes::from(&record.name[..]));
            let queue = self.entry(&record.topic, &record.name, false, now);
            queue.bytes += record.message.size();
            queue.ready.push_back(Arc::new(record.message));
            self.dirty.insert(key);
        }
        self.settled = self.next_seq - 1;
    }

    /// Messages up to delivery id `seq` are written: they may go out.
    pub fn settle(&mut self, seq: u64) {
        self.settled = self.settled.max(seq);
        for (key, queue) in &self.queues {
            if !queue.ready.is_empty() {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Topics that gained their first queue (true) or lost their last
    /// (false) since the last call, oldest first.
    pub fn take_topic_changes(&mut self) -> Vec<(Bytes, bool)> {
        std::mem::take(&mut self.topic_changes)
    }

    /// Delivery ids of messages acknowledged or expired since the last call.
    pub fn take_removed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.removed)
    }

    /// Takes back the messages [`push`](Queues::push) stored with these
    /// delivery ids (their store write failed; not settled, so not
    /// delivered).
    pub fn unpush(&mut self, seqs: &[u64]) {
        let seqs: HashSet<u64> = seqs.iter().copied().collect();
        for queue in self.queues.values_mut() {
            let mut freed = 0;
            queue.ready.retain(|m| {
                let keep = !seqs.contains(&m.seq);
                if !keep {
                    freed += m.size();
                }
                keep
            });
            queue.bytes -= freed;
        }
    }

    /// Whether no queue exists: the plain pub/sub path then costs one check.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn count(&self) -> usize {
        self.queues.len()
    }

    /// Messages stored now, delivered or not.
    pub fn messages(&self) -> usize {
        self.queues.values().map(Queue::len).sum()
    }

    /// The bounds every queue keeps.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Each queue's figures, for the metrics (O(queues), no copy of a
    /// message).
    pub fn figures(&self) -> impl Iterator<Item = QueueFigures> + '_ {
        self.queues.iter().map(|((topic, name), q)| QueueFigures {
            topic: topic.clone(),
            name: name.clone(),
            messages: q.len(),
            bytes: q.bytes,
            unacknowledged: q.inflight.len(),
            consumers: q.consumers.len(),
            expired: q.expired,
            redelivered: q.redelivered,
        })
    }

    /// Whether `topic` has a queue.
    pub fn has_topic(&self, topic: &[u8]) -> bool {
        !self.by_topic.is_empty() && self.by_topic.contains_key(topic)
    }

    fn entry(&mut self, topic: &[u8], name: &[u8], declared: bool, now: Instant) -> &mut Queue {
        let key: QueueKey = (Bytes::from(topic), Bytes::from(name));
        if !self.queues.contains_key(&key) {
            let names = self.by_topic.entry(key.0.clone()).or_default();
            if names.is_empty() {
                self.topic_changes.push((key.0.clone(), true));
            }
            names.push(key.1.clone());
            self.next_sweep.get_or_insert(now + SWEEP_EVERY);
        }
        self.queues.entry(key).or_insert_with(|| Queue::new(declared, now))
    }

    /// Declares a queue that is kept even while empty and unused.
    pub fn declare(&mut self, topic: &[u8], name: &[u8], now: Instant) {
        self.entry(topic, name, true, now).declared = true;
    }

    /// Makes `consumer` a member of the queue (created if new), its
    /// deliveries in the compact form or not as its latest SUB asked.
    pub fn join(&mut self, topic: &[u8], name: &[u8], consumer: &Bytes, compact: bool, now: Instant) {
        let queue = self.entry(topic, name, false, now);
        match queue.consumers.iter_mut().find(|c| c.id == *consumer) {
            Some(member) => member.compact = compact,
            None => queue.consumers.push(Member { id: consumer.clone(), compact }),
        }
        queue.used = now;
        self.dirty.insert((Bytes::from(topic), Bytes::from(name)));
    }

    /// Ends `consumer`'s membership; what it holds goes back to the queue.
    pub fn leave(&mut self, topic: &[u8], name: &[u8], consumer: &[u8], now: Instant) {
        let key: QueueKey = (Bytes::from(topic), Bytes::from(name));
        let Some(queue) = self.queues.get_mut(&key) else { return };
        queue.consumers.retain(|c| &c.id[..] != consumer);
        queue.used = now;
        if queue.release(consumer) > 0 {
            self.dirty.insert(key);
        }
    }

    /// Ends every membership of `consumer` (it disconnected, expired or was
    /// revoked); what it holds goes back to its queues.
    pub fn forget(&mut self, consumer: &[u8], now: Instant) {
        for (key, queue) in self.queues.iter_mut() {
            let before = queue.consumers.len();
            queue.consumers.retain(|c| &c.id[..] != consumer);
            if before != queue.consumers.len() {
                queue.used = now;
            }
            if queue.release(consumer) > 0 {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Takes back what `consumer` holds (its connection closed, so it may
    /// never have arrived) but keeps its memberships; call
    /// [`wake`](Queues::wake) when it is heard again.
    pub fn release(&mut self, consumer: &[u8]) {
        for (key, queue) in self.queues.iter_mut() {
            if queue.release(consumer) > 0 {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Marks the queues `consumer` is a member of as having work.
    pub fn wake(&mut self, consumer: &[u8]) {
        for (key, queue) in &self.queues {
            if queue.consumers.iter().any(|c| &c.id[..] == consumer) {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Whether a message of `size` bytes fits in every queue of `topic`;
    /// else the refusal naming the queue and the limit.
    pub fn check_room(&self, topic: &[u8], size: usize) -> Result<(), String> {
        let Some(names) = self.by_topic.get(topic) else { return Ok(()) };
        for name in names {
            let Some(queue) = self.queues.get(&(Bytes::from(topic), name.clone())) else { continue };
            let name = String::from_utf8_lossy(name);
            if queue.len() >= self.limits.max_messages {
                return Err(format!(
                    "queue {name:?} is full: {} messages, the limit of {} (--queue-max-messages)",
                    queue.len(),
                    self.limits.max_messages
                ));
            }
            if queue.bytes + size > self.limits.max_bytes {
                return Err(format!(
                    "queue {name:?} is full: {} + {size} bytes, over the limit of {} (--queue-max-bytes)",
                    queue.bytes, self.limits.max_bytes
                ));
            }
        }
        Ok(())
    }

    /// Stores a message in every queue of `topic` (after
    /// [`check_room`](Queues::check_room)); with a store, returns the
    /// records it must keep.
    pub fn push(
        &mut self,
        topic: &[u8],
        headers: &[(&[u8], &[u8])],
        body: &[&[u8]],
        expires: Option<Instant>,
        now: Instant,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        let Some(names) = self.by_topic.get(topic) else { return records };
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .iter()
            .filter(|(k, _)| *k != EXPIRES_IN.as_bytes())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let mut message = Stored { seq: 0, headers, body: body.concat(), expires, redelivered: false };
        let topic = Bytes::from(topic);
        // Each queue but the last gets a copy; the last takes the message.
        let mut names = names.iter().peekable();
        while let Some(name) = names.next() {
            let key: QueueKey = (topic.clone(), name.clone());
            let Some(queue) = self.queues.get_mut(&key) else { continue };
            let mut kept = if names.peek().is_some() { message.clone() } else { std::mem::take(&mut message) };
            kept.seq = self.next_seq;
            self.next_seq += 1;
            if self.persist {
                records.push(Record { topic: key.0.to_vec(), name: key.1.to_vec(), message: kept.clone() });
            }
            queue.bytes += kept.size();
            queue.ready.push_back(Arc::new(kept));
            queue.used = now;
            self.dirty.insert(key);
        }
        records
    }

    /// Acknowledges delivery `seq` by `consumer`: the message is done.
    /// False if `consumer` does not hold it (already acknowledged, or
    /// taken back since and maybe delivered to another).
    pub fn ack(&mut self, consumer: &[u8], seq: u64) -> bool {
        self.ack_all(consumer, &[seq]) == 1
    }

    /// [`ack`](Queues::ack) for each of `seqs`; returns how many `consumer`
    /// held.
    pub fn ack_all(&mut self, consumer: &[u8], seqs: &[u64]) -> usize {
        let mut done = 0;
        for (key, queue) in self.queues.iter_mut() {
            let before = done;
            for &seq in seqs {
                if queue.inflight.get(&seq).is_none_or(|(holder, _)| &holder[..] != consumer) {
                    continue;
                }
                let (_, message) = queue.take(seq).expect("present");
                queue.bytes -= message.size();
                if self.persist {
                    self.removed.push(seq);
                }
                done += 1;
            }
            if done > before {
                // It has room for more now.
                self.dirty.insert(key.clone());
            }
            if done == seqs.len() {
                break;
            }
        }
        done
    }

    /// Hands the ready messages of the queues that may have work to their
    /// consumers for which `available` says yes (round robin, up to the
    /// prefetch bound), dropping expired ones on the way.
    pub fn dispatch(&mut self, now: Instant, mut available: impl FnMut(&[u8]) -> bool) -> Vec<Delivery> {
        let mut out = Vec::new();
        if self.dirty.is_empty() {
            return out;
        }
        let prefetch = self.limits.prefetch;
        for key in std::mem::take(&mut self.dirty) {
            let Some(queue) = self.queues.get_mut(&key) else { continue };
            let mut held: Vec<usize> = queue.consumers.iter().map(|c| queue.held_by(&c.id)).collect();
            while let Some(head) = queue.ready.front() {
                if head.expired(now) {
                    let m = queue.ready.pop_front().expect("head");
                    queue.bytes -= m.size();
                    self.expired += 1;
                    queue.expired += 1;
                    if self.persist {
                        self.removed.push(m.seq);
                    }
                    continue;
                }
                if head.seq > self.settled {
                    break;
                }
                let n = queue.consumers.len();
                let Some(pick) = (0..n)
                    .map(|i| (queue.cursor + i) % n)
                    .find(|&i| held[i] < prefetch && available(&queue.consumers[i].id))
                else {
                    break;
                };
                queue.cursor = (pick + 1) % n;
                held[pick] += 1;
                let message = queue.ready.pop_front().expect("head");
                queue.redelivered += u64::from(message.redelivered);
                let member = &queue.consumers[pick];
                let consumer = member.id.clone();
                out.push(Delivery {
                    consumer: consumer.clone(),
                    seq: message.seq,
                    key: key.clone(),
                    message: message.clone(),
                    left: message.expires.map(|at| at.saturating_duration_since(now).as_millis().max(1)),
                    compact: member.compact,
                });
                queue.used = now;
                *queue.held.entry(consumer.clone()).or_default() += 1;
                queue.inflight.insert(message.seq, (consumer, message));
            }
        }
        out
    }

    /// When [`sweep`](Queues::sweep) is due.
    pub fn next_sweep(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Removes expired messages that wait (those delivered are the
    /// consumer's) and forgets undeclared queues that were empty and
    /// without consumers for the idle time. Returns how many expired.
    pub fn sweep(&mut self, now: Instant) -> u64 {
        if self.next_sweep.is_none_or(|at| at > now) {
            return 0;
        }
        let mut expired = 0;
        let removed = &mut self.removed;
        let persist = self.persist;
        for queue in self.queues.values_mut() {
            let before = queue.ready.len();
            let mut freed = 0;
            queue.ready.retain(|m| {
                let keep = !m.expired(now);
                if !keep {
                    freed += m.size();
                    if persist {
                        removed.push(m.seq);
                    }
                }
                keep
            });
            queue.bytes -= freed;
            queue.expired += (before - queue.ready.len()) as u64;
            expired += (before - queue.ready.len()) as u64;
        }
        self.expired += expired;
        let idle = self.limits.idle;
        let gone: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(_, q)| {
                !q.declared && q.consumers.is_empty() && q.len() == 0 && now.saturating_duration_since(q.used) >= idle
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.queues.remove(&key);
            if let Some(names) = self.by_topic.get_mut(&key.0) {
                names.retain(|n| *n != key.1);
                if names.is_empty() {
                    self.by_topic.remove(&key.0);
                    self.topic_changes.push((key.0.clone(), false));
                }
            }
        }
        self.next_sweep = (!self.queues.is_empty()).then(|| now + SWEEP_EVERY);
        expired
    }

    /// How many deliveries of a queue `consumer` holds by its count.
    #[cfg(test)]
    fn held_by(&self, topic: &[u8], name: &[u8], consumer: &[u8]) -> usize {
        self.queues.get(&(Bytes::from(topic), Bytes::from(name))).map_or(0, |q| q.held_by(consumer))
    }

    /// What a queue holds, for tests.
    #[cfg(test)]
    fn snapshot(&self, topic: &[u8], name: &[u8]) -> Option<Snapshot> {
        let q = self.queues.get(&(Bytes::from(topic), Bytes::from(name)))?;
        let mut inflight: Vec<(Bytes, u64)> = q.inflight.iter().map(|(s, (c, _))| (c.clone(), *s)).collect();
        inflight.sort();
        Some((q.ready.iter().map(|m| m.seq).collect(), inflight))
    }
}

/// A queue's ready delivery ids and (consumer, id) of those in flight.
#[cfg(test)]
type Snapshot = (Vec<u64>, Vec<(Bytes, u64)>);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.as_bytes())
    }

    #[test]
    fn round_robin_ack_and_redelivery() {
        let t0 = Instant::now();
        let mut q = Queues::new(QueueLimits::default());
        q.declare(b"t", b"q", t0);
        for body in [b"1", b"2", b"3"] {
            q.push(b"t", &[], &[body], None, t0);
        }
        assert!(q.dispatch(t0, |_| true).is_empty(), "kept while nobody consumes");
        let (a, c) = (b("a"), b("c"));
        q.join(b"t", b"q", &a, false, t0);
        q.join(b"t", b"q", &c, true, t0);
        let sent = q.dispatch(t0, |_| true);
        let got: Vec<(Bytes, u64)> = sent.iter().map(|d| (d.consumer.clone(), d.seq)).collect();
        assert_eq!(got, vec![(a.clone(), 1), (c.clone(), 2), (a.clone(), 3)]);
        let frames = |parts: &[&[u8]]| parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        let classic = frames(&[b"", b"MESSAGE", b"TOPIC", b"t", b"QUEUE", b"q", b"DELIVERY", b"1", b"", b"1"]);
        assert_eq!(sent[0].frames(), classic, "a member that did not ask gets the classic form");
        let compact = frames(&[b"", b"MESSAGE", b"TOPIC", b"t", b"QUEUE-DELIVERY", b"2 q", b"", b"2"]);
        assert_eq!(sent[1].frames(), compact, "one that asked, the compact form");
        assert!(q.ack(b"a", 1));
        assert!(!q.ack(b"c", 3), "only its holder acknowledges a delivery");
        q.forget(b"a", t0);
        let again = q.dispatch(t0, |_| true);
        assert_eq!(again.len(), 1);
        assert_eq!((&again[0].consumer, again[0].seq), (&c, 3));
        let redelivered =
            frames(&[b"", b"MESSAGE", b"TOPIC", b"t", b"QUEUE-DELIVERY", b"3 q", b"REDELIVERED", b"1", b"", b"3"]);
        assert_eq!(again[0].frames(), redelivered);
        q.join(b"t", b"q", &c, false, t0);
        q.forget(b"c", t0);
        q.join(b"t", b"q", &c, false, t0);
        let classic = q.dispatch(t0, |_| true);
        assert_eq!(classic[0].frames()[4], b"QUEUE", "the latest SUB decides the form");
    }

    #[test]
    fn bounds_name_the_queue() {
        let t0 = Instant::now();
        let mut q = Queues::new(QueueLimits { max_messages: 1, ..QueueLimits::default() });
        q.declare(b"t", b"replies", t0);
        q.check_room(b"t", 10).unwrap();
        q.push(b"t", &[], &[b"x"], None, t0);
        let err = q.check_room(b"t", 10).unwrap_err();
        assert!(err.contains("\"replies\"") && err.contains("limit of 1"), "{err}");
        assert!(q.check_room(b"other", 10).is_ok());
    }

    #[test]
    fn expired_messages_are_never_delivered_and_idle_queues_go() {
        let t0 = Instant::now();
        let limits = QueueLimits { idle: Duration::from_secs(5), ..QueueLimits::default() };
        let mut q = Queues::new(limits);
        q.join(b"t", b"q", &b("a"), false, t0);
        q.forget(b"a", t0);
        q.push(b"t", &[], &[b"x"], Some(t0 + Duration::from_millis(100)), t0);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(q.sweep(later), 1);
        assert_eq!(q.messages(), 0);
        assert_eq!(q.count(), 1, "not idle long enough");
        assert_eq!(q.take_topic_changes(), vec![(b("t"), true)], "its topic gained a queue");
        q.sweep(t0 + Duration::from_secs(10));
        assert!(q.is_empty(), "an empty undeclared queue nobody uses is forgotten");
        assert_eq!(q.take_topic_changes(), vec![(b("t"), false)], "and lost it");
    }

    #[test]
    fn figures_count_expiries_and_redeliveries_per_queue() {
        let t0 = Instant::now();
        let mut q = Queues::new(QueueLimits::default());
        q.declare(b"t", b"q", t0);
        q.declare(b"t", b"other", t0);
        q.push(b"t", &[], &[b"12345"], None, t0);
        q.push(b"t", &[], &[b"x"], Some(t0 + Duration::from_millis(10)), t0);
        q.join(b"t", b"q", &b("a"), false, t0);
        assert_eq!(q.dispatch(t0, |_| true).len(), 2);
        q.release(b"a");
        let later = t0 + Duration::from_secs(2);
        assert_eq!(q.dispatch(later, |_| true).len(), 1, "the expired one is not redelivered");
        let of = |q: &Queues, name: &[u8]| q.figures().find(|f| &f.name[..] == name).unwrap();
        let f = of(&q, b"q");
        assert_eq!((f.messages, f.bytes, f.unacknowledged, f.consumers), (1, 5, 1, 1));
        assert_eq!((f.expired, f.redelivered), (1, 1));
        let f = of(&q, b"other");
        assert_eq!((f.messages, f.consumers, f.expired, f.redelivered), (2, 0, 0, 0));
        assert_eq!(q.sweep(later), 1);
        assert_eq!(of(&q, b"other").expired, 1);
    }

    /// Operations of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Publish {
            ttl: Option<u8>,
        },
        /// A consumer joins, asking for the compact form or not.
        Join(u8, bool),
        Leave(u8),
        Ack(u8, u8),
        Lose(u8),
        Advance(u8),
        /// The store wrote everything pushed so far.
        Settle,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::option::of(1u8..50).prop_map(|ttl| Op::Publish { ttl }),
            2 => (0u8..3, any::<bool>()).prop_map(|(c, compact)| Op::Join(c, compact)),
            1 => (0u8..3).prop_map(Op::Leave),
            3 => (0u8..3, any::<u8>()).prop_map(|(c, i)| Op::Ack(c, i)),
            1 => (0u8..3).prop_map(Op::Lose),
            1 => (1u8..40).prop_map(Op::Advance),
            2 => Just(Op::Settle),
        ]
    }

    proptest! {
        /// Against a model that only knows which messages exist, who holds
        /// which, and which were delivered before: no message is delivered
        /// to two consumers at once, none is lost before it is acknowledged
        /// or expired, none is delivered past its time, an acknowledged one
        /// never comes back, every redelivery is marked, and each goes out
        /// in the form its consumer's latest SUB asked for. With a store
        /// (`durable`), none goes out before it is written.
        #[test]
        fn queue_matches_model(ops in proptest::collection::vec(op(), 1..80), durable in any::<bool>()) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut q = Queues::new(QueueLimits { prefetch: 2, ..QueueLimits::default() });
            q.declare(b"t", b"q", t0);
            let mut settled = u64::MAX;
            if durable {
                q.restore(Vec::new(), t0);
                settled = 0;
            }
            let names: Vec<Bytes> = (0..3).map(|i| b(&format!("c{i}"))).collect();
            // Model: live message -> (expires, holder, delivered before).
            let mut live: BTreeMap<u64, (Option<Instant>, Option<usize>, bool)> = BTreeMap::new();
            let mut members = [false; 3];
            let mut compact = [false; 3];
            let mut acked: HashSet<u64> = HashSet::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Publish { ttl } => {
                        let expires = ttl.map(|ms| now + Duration::from_millis(ms as u64));
                        q.push(b"t", &[], &[b"m"], expires, now);
                        live.insert(next, (expires, None, false));
                        next += 1;
                    }
                    Op::Join(c, asks) => {
                        q.join(b"t", b"q", &names[c as usize], asks, now);
                        members[c as usize] = true;
                        compact[c as usize] = asks;
                    }
                    Op::Leave(c) | Op::Lose(c) => {
                        if matches!(op, Op::Leave(_)) {
                            q.leave(b"t", b"q", &names[c as usize], now);
                            members[c as usize] = false;
                        } else {
                            q.release(&names[c as usize]);
                        }
                        for (_, holder, _) in live.values_mut() {
                            if *holder == Some(c as usize) {
                                *holder = None;
                            }
                        }
                    }
                    Op::Ack(c, i) => {
                        let held: Vec<u64> =
                            live.iter().filter(|(_, (_, h, _))| *h == Some(c as usize)).map(|(s, _)| *s).collect();
                        let expect = !held.is_empty();
                        let seq = if expect { held[i as usize % held.len()] } else { i as u64 };
                        let ok = q.ack(&names[c as usize], seq);
                        prop_assert_eq!(ok, expect);
                        if ok {
                            live.remove(&seq);
                            acked.insert(seq);
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms as u64);
                        q.sweep(now);
                    }
                    Op::Settle => {
                        q.settle(next - 1);
                        settled = settled.max(next - 1);
                    }
                }
                for d in q.dispatch(now, |_| true) {
                    let c = names.iter().position(|n| *n == d.consumer).expect("a consumer");
                    prop_assert!(members[c], "delivered to a non-member");
                    prop_assert!(!acked.contains(&d.seq), "an acknowledged message came back");
                    prop_assert!(d.seq <= settled, "delivered before it was written");
                    let m = live.get_mut(&d.seq).expect("a live message");
                    prop_assert!(m.1.is_none(), "delivered while held");
                    prop_assert!(m.0.is_none_or(|at| at > now), "delivered past its time");
                    let frames = d.frames();
                    let marked = frames.windows(2).any(|w| w[0] == b"REDELIVERED");
                    prop_assert_eq!(marked, m.2);
                    let folded = format!("{} q", d.seq).into_bytes();
                    let form = if compact[c] {
                        [&b"QUEUE-DELIVERY"[..], &folded[..]].map(<[u8]>::to_vec).to_vec()
                    } else {
                        [&b"QUEUE"[..], b"q", b"DELIVERY", d.seq.to_string().as_bytes()].map(<[u8]>::to_vec).to_vec()
                    };
                    prop_assert_eq!(&frames[4..4 + form.len()], &form[..]);
                    m.1 = Some(c);
                    m.2 = true;
                }
                // Expired waiting messages may be gone; everything else is there.
                let (ready, inflight) = q.snapshot(b"t", b"q").expect("declared");
                for (seq, (expires, holder, _)) in &live {
                    match holder {
                        Some(c) => prop_assert!(inflight.contains(&(names[*c].clone(), *seq))),
                        None => prop_assert!(ready.contains(seq) || expires.is_some_and(|at| at <= now)),
                    }
                }
                prop_assert_eq!(ready.len() + inflight.len(), q.messages());
                live.retain(|seq, (_, holder, _)| holder.is_some() || ready.contains(seq));
                // Held by members within the prefetch bound.
                for (i, n) in names.iter().enumerate() {
                    let held = inflight.iter().filter(|(c, _)| c == n).count();
                    prop_assert!(held <= 2);
                    prop_assert_eq!(q.held_by(b"t", b"q", n), held, "the count agrees");
                    prop_assert!(members[i] || held == 0);
                }
            }
        }
    }
}
