//! The broker's client table, keyed by ZeroMQ routing id, and the one
//! deadline heap that drives heartbeats (NOOP after 0.95 × TTL of broker
//! silence) and expiry (1.05 × TTL of client silence).
//!
//! The heap is lazily invalidated: every client has exactly two live entries
//! (its next NOOP and its next expiry check), each stamped with the client's
//! generation. Traffic only updates the client's `last_heard`/`last_sent`
//! instants, never the heap; when an entry comes due it is compared against
//! those instants and either fires or is pushed back to the real deadline.
//! A re-CONNECT or removal bumps or drops the generation, so older entries are
//! discarded when they surface. Cost: O(log n) per deadline, no scans.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A routing id or topic, shared between the tables without copying.
pub type Bytes = Arc<[u8]>;

#[derive(Debug)]
pub struct Client {
    pub id: Bytes,
    /// The CURVE key (Z85, from the ZAP handler's `User-Id`) the session was
    /// opened with, when an allowlist is in force. A message from the same
    /// routing id under another key does not belong to this session.
    pub user: Option<Arc<str>>,
    pub generation: u64,
    pub ttl: Duration,
    pub last_heard: Instant,
    pub last_sent: Instant,
    pub topics: HashSet<Bytes>,
}

impl Client {
    fn noop_after(&self) -> Duration {
        self.ttl.mul_f64(0.95)
    }
    fn expire_after(&self) -> Duration {
        self.ttl.mul_f64(1.05)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Noop,
    Expire,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    generation: u64,
    kind: Kind,
    id: Bytes,
}

/// A deadline that came due.
#[derive(Debug)]
pub enum Due {
    /// The broker has been silent to this client for 0.95 × TTL: send NOOP.
    Noop(Bytes),
    /// The client has been silent for 1.05 × TTL and was removed.
    Expired(Client),
}

#[derive(Debug, Default)]
pub struct Clients {
    map: HashMap<Bytes, Client>,
    heap: BinaryHeap<Reverse<Entry>>,
    next_generation: u64,
}

impl Clients {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, id: &[u8]) -> Option<&Client> {
        self.map.get(id)
    }

    pub fn get_mut(&mut self, id: &[u8]) -> Option<&mut Client> {
        self.map.get_mut(id)
    }

    /// Registers `id` with a fresh session (new generation, no topics) and
    /// returns the previous session if there was one, so the caller can drop
    /// its subscriptions.
    pub fn connect(&mut self, id: &[u8], user: Option<Arc<str>>, ttl: Duration, now: Instant) -> Option<Client> {
        let old = self.map.remove(id);
        let id: Bytes = match &old {
            Some(c) => c.id.clone(),
            None => Arc::from(id),
        };
        self.next_generation += 1;
        let client = Client {
            id: id.clone(),
            user,
            generation: self.next_generation,
            ttl,
            last_heard: now,
            last_sent: now,
            topics: HashSet::new(),
        };
        self.push(Kind::Noop, &client, now + client.noop_after());
        self.push(Kind::Expire, &client, now + client.expire_after());
        self.map.insert(id, client);
        old
    }

    /// Removes `id`; its heap entries become stale.
    pub fn remove(&mut self, id: &[u8]) -> Option<Client> {
        self.map.remove(id)
    }

    /// Records traffic from `id` to a session opened without a key; false if
    /// there is none.
    pub fn heard(&mut self, id: &[u8], now: Instant) -> bool {
        self.heard_as(id, None, now)
    }

    /// Records traffic from `id` sent under `user`; false (and nothing
    /// recorded) if there is no such session, or it belongs to another key.
    pub fn heard_as(&mut self, id: &[u8], user: Option<&Arc<str>>, now: Instant) -> bool {
        match self.map.get_mut(id) {
            Some(c) if c.user.as_ref() == user => {
                c.last_heard = now;
                true
            }
            _ => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.map.values()
    }

    /// Records traffic to `id` (ignored for unknown clients).
    pub fn sent(&mut self, id: &[u8], now: Instant) {
        if let Some(c) = self.map.get_mut(id) {
            c.last_sent = now;
        }
    }

    /// When the loop must wake up next. May be early (for a stale entry),
    /// never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// The next deadline that is due at `now`, if any. A NOOP deadline
    /// assumes the caller sends the NOOP (and it reschedules from `now`).
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        loop {
            match self.heap.peek() {
                Some(Reverse(e)) if e.at <= now => {}
                _ => return None,
            }
            let Reverse(entry) = self.heap.pop().expect("peeked");
            let Some(client) = self.map.get_mut(&entry.id[..]) else { continue };
            if client.generation != entry.generation {
                continue;
            }
            match entry.kind {
                Kind::Noop => {
                    let due = client.last_sent + client.noop_after();
                    if due <= now {
                        client.last_sent = now;
                        let next = now + client.noop_after();
                        let id = client.id.clone();
                        self.heap.push(Reverse(Entry { at: next, ..entry }));
                        return Some(Due::Noop(id));
                    }
                    self.heap.push(Reverse(Entry { at: due, ..entry }));
                }
                Kind::Expire => {
                    let due = client.last_heard + client.expire_after();
                    if due <= now {
                        let client = self.map.remove(&entry.id[..]).expect("present");
                        return Some(Due::Expired(client));
                    }
                    self.heap.push(Reverse(Entry { at: due, ..entry }));
                }
            }
        }
    }

    fn push(&mut self, kind: Kind, client: &Client, at: Instant) {
        self.heap.push(Reverse(Entry { at, generation: client.generation, kind, id: client.id.clone() }));
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(1000);

    #[test]
    fn noop_fires_after_silence_and_is_pushed_back_by_traffic() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        c.connect(b"a", None, TTL, t0);
        assert!(c.pop_due(t0 + Duration::from_millis(900)).is_none());
        c.sent(b"a", t0 + Duration::from_millis(500));
        c.heard(b"a", t0 + Duration::from_millis(500));
        // The entry at 950 ms is stale: the real NOOP deadline is 1450 ms.
        assert!(c.pop_due(t0 + Duration::from_millis(1000)).is_none());
        match c.pop_due(t0 + Duration::from_millis(1460)) {
            Some(Due::Noop(id)) => assert_eq!(&id[..], b"a"),
            other => panic!("expected NOOP, got {other:?}"),
        }
        assert!(c.pop_due(t0 + Duration::from_millis(1460)).is_none());
        assert_eq!(c.heap_len(), 2, "one live entry per kind");
    }

    #[test]
    fn silent_client_expires_and_traffic_defers_expiry() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        c.connect(b"a", None, TTL, t0);
        c.connect(b"b", None, TTL, t0);
        assert!(c.heard(b"b", t0 + Duration::from_millis(1000)));
        let mut expired = vec![];
        let now = t0 + Duration::from_millis(1100);
        while let Some(d) = c.pop_due(now) {
            if let Due::Expired(client) = d {
                expired.push(client.id.to_vec());
            }
        }
        assert_eq!(expired, vec![b"a".to_vec()]);
        assert!(c.get(b"a").is_none());
        assert!(c.get(b"b").is_some());
        assert!(!c.heard(b"a", now));
    }

    #[test]
    fn reconnect_invalidates_old_entries_and_returns_old_session() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        c.connect(b"a", None, Duration::from_millis(100), t0);
        c.get_mut(b"a").unwrap().topics.insert(Arc::from(&b"t"[..]));
        let old = c.connect(b"a", None, TTL, t0 + Duration::from_millis(50)).expect("was known");
        assert_eq!(old.topics.len(), 1);
        assert!(c.get(b"a").unwrap().topics.is_empty());
        // The short-TTL entries are stale now; nothing is due before 1 s.
        let mut now = t0;
        while now < t0 + Duration::from_millis(990) {
            assert!(c.pop_due(now).is_none(), "at {:?}", now - t0);
            now += Duration::from_millis(10);
        }
        c.remove(b"a");
        assert!(c.pop_due(t0 + Duration::from_secs(10)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn a_session_belongs_to_its_key() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        let (k1, k2): (Arc<str>, Arc<str>) = (Arc::from("k1"), Arc::from("k2"));
        c.connect(b"a", Some(k1.clone()), TTL, t0);
        assert!(c.heard_as(b"a", Some(&k1), t0));
        assert!(!c.heard_as(b"a", Some(&k2), t0), "same routing id, other key");
        assert!(!c.heard(b"a", t0), "no key");
        assert_eq!(c.iter().count(), 1);
    }
}
