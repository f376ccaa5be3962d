//! The broker's client table, keyed by ZeroMQ routing id, and the deadline
//! heaps that drive heartbeats (NOOP after 0.95 × TTL of broker silence)
//! and expiry (1.05 × TTL of client silence).
//!
//! NOOPs and expiries are kept in two heaps because they are due against
//! different clocks: a NOOP when the broker has been silent until *now*, an
//! expiry only when the client has been silent until the last instant the
//! broker had read all its pending input (see [`Clients::pop_expired`]).
//!
//! The heaps are lazily invalidated: every client has exactly two live
//! entries, its next NOOP in one heap and its next expiry check in the
//! other, each stamped with the client's generation. Traffic only updates
//! the client's `last_heard`/`last_sent` instants, never the heaps; when an
//! entry comes due it is compared against those instants and either fires
//! or is pushed back to the real deadline.
//! A re-CONNECT or removal bumps or drops the generation, so older entries are
//! discarded when they surface. Cost: O(log n) per deadline, no scans.
//!
//! Each session also remembers the connection it was last heard from (the
//! socket's file descriptor, [`Conn`]), indexed, so that when libzmq reports
//! a connection gone the session can be marked [`lost`](Client::lost): it
//! receives nothing until it speaks again, from whatever connection then
//! holds its routing id, under its own key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::protocol::heartbeat;

/// A routing id or topic, shared between the tables without copying.
pub type Bytes = Arc<[u8]>;

/// A client connection as libzmq identifies it: its socket's file
/// descriptor (`ZMQ_SRCFD` on received frames, the value of monitor events).
pub type Conn = i32;

#[derive(Debug)]
pub struct Client {
    pub id: Bytes,
    /// The CURVE key (Z85, from the ZAP handler's `User-Id`) the session was
    /// opened with, whenever CURVE is on. A message from the same routing id
    /// under another key does not belong to this session.
    pub user: Option<Arc<str>>,
    /// The name the key was listed under when the session opened (with an
    /// allowlist): the MCollective identity it acts as.
    pub identity: Option<Arc<str>>,
    /// The connection the session was last heard from.
    pub conn: Option<Conn>,
    /// That connection is gone: nothing is delivered to this routing id
    /// (which another connection could take) until the session speaks again.
    pub lost: bool,
    pub generation: u64,
    pub ttl: Duration,
    pub last_heard: Instant,
    pub last_sent: Instant,
    pub topics: HashSet<Bytes>,
    /// When the session opened (its last CONNECT).
    pub since: Instant,
    /// Messages received from it in this session.
    pub msgs_in: u64,
    /// Messages sent to it (or buffered for it) in this session.
    pub msgs_out: u64,
}

impl Client {
    fn noop_after(&self) -> Duration {
        heartbeat::noop_after(self.ttl)
    }
    fn expire_after(&self) -> Duration {
        heartbeat::dead_after(self.ttl)
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    generation: u64,
    id: Bytes,
}

type Heap = BinaryHeap<Reverse<Entry>>;

/// A deadline that came due (for tests: the broker pops NOOPs and expiries
/// against different clocks).
#[cfg(test)]
#[derive(Debug)]
pub enum Due {
    /// The broker has been silent to this client for 0.95 × TTL: send NOOP.
    Noop(Bytes),
    /// The client has been silent for 1.05 × TTL and was removed.
    Expired(Client),
}

/// What a new session is opened with.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub user: Option<Arc<str>>,
    pub identity: Option<Arc<str>>,
    pub conn: Option<Conn>,
}

/// What a message from a routing id means for its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The session's own key, on the connection it was last heard from.
    Known,
    /// The session's own key on another connection (or on a lost one's
    /// number): call [`rebind`](Clients::rebind), after taking note of
    /// connections lost.
    Moved,
    /// No session.
    Unknown,
    /// The session belongs to this other key; nothing was recorded.
    OtherKey(Option<Arc<str>>),
}

#[derive(Debug, Default)]
pub struct Clients {
    map: HashMap<Bytes, Client>,
    /// Connection -> the routing id of the session last heard on it.
    by_conn: HashMap<Conn, Bytes>,
    noops: Heap,
    expiries: Heap,
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
    pub fn connect(&mut self, id: &[u8], session: Session, ttl: Duration, now: Instant) -> Option<Client> {
        let old = self.remove(id);
        let id: Bytes = match &old {
            Some(c) => c.id.clone(),
            None => Arc::from(id),
        };
        self.next_generation += 1;
        if let Some(conn) = session.conn {
            self.by_conn.insert(conn, id.clone());
        }
        let client = Client {
            id: id.clone(),
            user: session.user,
            identity: session.identity,
            conn: session.conn,
            lost: false,
            generation: self.next_generation,
            ttl,
            last_heard: now,
            last_sent: now,
            topics: HashSet::new(),
            since: now,
            msgs_in: 0,
            msgs_out: 0,
        };
        let entry = |at| Reverse(Entry { at, generation: client.generation, id: client.id.clone() });
        self.noops.push(entry(now + client.noop_after()));
        self.expiries.push(entry(now + client.expire_after()));
        self.map.insert(id, client);
        old
    }

    /// Removes `id`; its heap entries become stale.
    pub fn remove(&mut self, id: &[u8]) -> Option<Client> {
        let client = self.map.remove(id)?;
        self.unindex(&client);
        Some(client)
    }

    fn unindex(&mut self, client: &Client) {
        if let Some(conn) = client.conn {
            if self.by_conn.get(&conn) == Some(&client.id) {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// Records traffic from `id` to a session opened without a key or
    /// connection; false if there is none.
    #[cfg(test)]
    pub fn heard(&mut self, id: &[u8], now: Instant) -> bool {
        self.heard_as(id, None, None, now) == Heard::Known
    }

    /// Records traffic from `id` sent under `user` over `conn` (unless it
    /// is [`Heard::OtherKey`] or [`Heard::Unknown`]).
    pub fn heard_as(&mut self, id: &[u8], user: Option<&str>, conn: Option<Conn>, now: Instant) -> Heard {
        match self.map.get_mut(id) {
            None => Heard::Unknown,
            Some(c) if c.user.as_deref() != user => Heard::OtherKey(c.user.clone()),
            Some(c) => {
                c.last_heard = now;
                c.msgs_in += 1;
                if c.conn == conn && !c.lost {
                    Heard::Known
                } else {
                    // A lost session heard on "its" connection number is on a
                    // new connection that reuses the number.
                    Heard::Moved
                }
            }
        }
    }

    /// Ties the session of `id` to `conn`, the connection it was just heard
    /// on, and ends its [`lost`](Client::lost) state.
    pub fn rebind(&mut self, id: &[u8], conn: Option<Conn>) {
        let Some(client) = self.map.get_mut(id) else { return };
        let old = std::mem::replace(&mut client.conn, conn);
        client.lost = false;
        let rid = client.id.clone();
        if let Some(old) = old {
            if self.by_conn.get(&old) == Some(&rid) {
                self.by_conn.remove(&old);
            }
        }
        if let Some(conn) = conn {
            self.by_conn.insert(conn, rid);
        }
    }

    /// Marks the session last heard on `conn` as lost; returns its routing
    /// id, if there was one.
    pub fn connection_lost(&mut self, conn: Conn) -> Option<Bytes> {
        let rid = self.by_conn.remove(&conn)?;
        let client = self.map.get_mut(&rid[..])?;
        if client.conn != Some(conn) {
            return None;
        }
        client.lost = true;
        Some(rid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.map.values()
    }

    /// Records traffic to `id` (ignored for unknown clients).
    pub fn sent(&mut self, id: &[u8], now: Instant) {
        if let Some(c) = self.map.get_mut(id) {
            c.last_sent = now;
            c.msgs_out += 1;
        }
    }

    /// When the loop must wake up next. May be early (for a stale entry, or
    /// an expiry that must wait for pending input to be read), never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        let top = |heap: &Heap| heap.peek().map(|Reverse(e)| e.at);
        match (top(&self.noops), top(&self.expiries)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next client due a NOOP at `now`, if any. Assumes the caller sends
    /// it: the client's `last_sent` becomes `now`.
    pub fn pop_noop(&mut self, now: Instant) -> Option<Bytes> {
        while let Some(entry) = Self::pop_before(&mut self.noops, now) {
            let Some(client) = self.map.get_mut(&entry.id[..]) else { continue };
            if client.generation != entry.generation {
                continue;
            }
            let due = client.last_sent + client.noop_after();
            if due <= now {
                client.last_sent = now;
                let next = now + client.noop_after();
                let id = client.id.clone();
                self.noops.push(Reverse(Entry { at: next, ..entry }));
                return Some(id);
            }
            self.noops.push(Reverse(Entry { at: due, ..entry }));
        }
        None
    }

    /// Removes and returns the next client that was silent for 1.05 × TTL up
    /// to `heard_until`: the last instant at which everything clients had
    /// sent was read. Taking the current time instead would expire a client
    /// whose heartbeat is already waiting in the socket when the broker falls
    /// behind.
    pub fn pop_expired(&mut self, heard_until: Instant) -> Option<Client> {
        while let Some(entry) = Self::pop_before(&mut self.expiries, heard_until) {
            let Some(client) = self.map.get(&entry.id[..]) else { continue };
            if client.generation != entry.generation {
                continue;
            }
            let due = client.last_heard + client.expire_after();
            if due <= heard_until {
                return self.remove(&entry.id[..]);
            }
            self.expiries.push(Reverse(Entry { at: due, ..entry }));
        }
        None
    }

    /// The next deadline due at `now`, NOOPs first; for a caller with no
    /// pending input, so expiry counts silence up to `now`.
    #[cfg(test)]
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.pop_noop(now) {
            Some(id) => Some(Due::Noop(id)),
            None => self.pop_expired(now).map(Due::Expired),
        }
    }

    fn pop_before(heap: &mut Heap, at: Instant) -> Option<Entry> {
        match heap.peek() {
            Some(Reverse(e)) if e.at <= at => heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.noops.len() + self.expiries.len()
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
        c.connect(b"a", Session::default(), TTL, t0);
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
    fn expiry_counts_silence_only_up_to_the_read_horizon() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        c.connect(b"a", Session::default(), TTL, t0);
        // The broker fell behind: it is 1.2 TTL later, but input was last
        // drained at 1 TTL. The NOOP is due; the expiry (1.05 TTL) is not.
        let now = t0 + Duration::from_millis(1200);
        let drained = t0 + Duration::from_millis(1000);
        assert!(c.next_deadline().is_some_and(|d| d <= now));
        assert!(matches!(c.pop_noop(now), Some(id) if &id[..] == b"a"));
        assert!(c.pop_expired(drained).is_none());
        assert!(c.get(b"a").is_some());
        // Reading the backlog turns up the client's heartbeat.
        assert!(c.heard(b"a", now));
        assert!(c.pop_expired(now).is_none());
        assert!(c.get(b"a").is_some());
        // Once all input up to 2.3 TTL has been read without a word from it,
        // it is gone.
        assert!(c.pop_expired(t0 + Duration::from_millis(2200)).is_none());
        let gone = c.pop_expired(t0 + Duration::from_millis(2300)).expect("expired");
        assert_eq!(&gone.id[..], b"a");
        assert!(c.is_empty());
    }

    #[test]
    fn silent_client_expires_and_traffic_defers_expiry() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        c.connect(b"a", Session::default(), TTL, t0);
        c.connect(b"b", Session::default(), TTL, t0);
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
        c.connect(b"a", Session::default(), Duration::from_millis(100), t0);
        c.get_mut(b"a").unwrap().topics.insert(Arc::from(&b"t"[..]));
        let old = c.connect(b"a", Session::default(), TTL, t0 + Duration::from_millis(50)).expect("was known");
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
        let session = Session { user: Some(k1.clone()), identity: None, conn: Some(7) };
        c.connect(b"a", session, TTL, t0);
        assert_eq!(c.heard_as(b"a", Some("k1"), Some(7), t0), Heard::Known);
        assert_eq!(c.heard_as(b"a", Some(&k2), Some(7), t0), Heard::OtherKey(Some(k1.clone())), "other key");
        assert_eq!(c.heard_as(b"a", None, Some(7), t0), Heard::OtherKey(Some(k1)), "no key");
        assert_eq!(c.heard_as(b"b", None, Some(7), t0), Heard::Unknown);
        assert_eq!(c.iter().count(), 1);
    }

    #[test]
    fn a_lost_connection_marks_its_session_until_it_is_heard_again() {
        let t0 = Instant::now();
        let mut c = Clients::new();
        let on = |conn| Session { conn: Some(conn), ..Session::default() };
        c.connect(b"a", on(7), TTL, t0);
        c.connect(b"b", on(8), TTL, t0);
        assert_eq!(c.connection_lost(9), None, "no session on it");
        assert_eq!(c.connection_lost(7).as_deref(), Some(&b"a"[..]));
        assert!(c.get(b"a").unwrap().lost && !c.get(b"b").unwrap().lost);
        assert_eq!(c.connection_lost(7), None, "reported once");
        // Heard again, on a new connection (which may reuse the number).
        assert_eq!(c.heard_as(b"a", None, Some(7), t0), Heard::Moved);
        assert_eq!(c.heard_as(b"a", None, Some(8), t0), Heard::Moved);
        c.rebind(b"a", Some(8));
        assert!(!c.get(b"a").unwrap().lost);
        // "b" no longer owns connection 8 in the index, "a" does.
        assert_eq!(c.connection_lost(8).as_deref(), Some(&b"a"[..]));
        assert!(!c.get(b"b").unwrap().lost);
        // Removal forgets the index entry.
        c.rebind(b"a", Some(10));
        c.remove(b"a");
        assert_eq!(c.connection_lost(10), None);
    }
}
