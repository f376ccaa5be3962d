//! What the socket thread hands the HTTP thread. The socket thread copies
//! its counters into a [`Snapshot`] at most every [`COUNTERS_EVERY`] (a
//! copy of a few dozen integers and of each queue's figures, nothing
//! proportional to clients), and
//! builds the session table only when an HTTP request asked for it and the
//! last one is older than [`SESSIONS_EVERY`]: at most one O(sessions) pass
//! per second, however many requests come.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::ClusterCounters;
use crate::engine::queues::{QueueFigures, QueueLimits};
use crate::engine::{Conn, Engine, Transport};
use crate::router::Peer;
use crate::stats::Stats;

/// How stale the counters may be.
pub const COUNTERS_EVERY: Duration = Duration::from_millis(100);
/// How stale a session table may be before a request makes the socket
/// thread build another.
pub const SESSIONS_EVERY: Duration = Duration::from_secs(1);
/// How long a request waits for a session table.
const SESSIONS_WAIT: Duration = Duration::from_secs(3);

/// Why the ZAP handler refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The key is not in the allowlist.
    NotAuthorized,
    /// Not a CURVE handshake.
    NotCurve,
    /// Another ZAP domain, or a malformed request.
    BadRequest,
}

impl KeyRefusal {
    pub const ALL: &'static [KeyRefusal] = &[KeyRefusal::NotAuthorized, KeyRefusal::NotCurve, KeyRefusal::BadRequest];
    pub fn label(self) -> &'static str {
        match self {
            KeyRefusal::NotAuthorized => "not_authorized",
            KeyRefusal::NotCurve => "not_curve",
            KeyRefusal::BadRequest => "bad_request",
        }
    }
}

/// The ZAP handler's refusals, counted on its own thread.
#[derive(Debug, Default)]
pub struct KeyRefusals([AtomicU64; 3]);

impl KeyRefusals {
    pub fn count(&self, reason: KeyRefusal) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn read(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The broker's figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stats: Stats,
    pub handshake_failures: u64,
    pub keys_refused: [u64; 3],
    pub allowlist_keys: usize,
    pub allowlist_reloads: u64,
    /// Connections open now that have sent a message (their peer addresses
    /// are held for `/connz`).
    pub tcp_connections: usize,
    /// With `--cluster`: the NATS link's figures.
    pub cluster: Option<ClusterFigures>,
    /// Each queue's figures (sorted by topic and name when read through
    /// [`Hub::snapshot`]) and the bounds they keep.
    pub queues: Vec<QueueFigures>,
    pub queue_limits: QueueLimits,
}

/// The cluster link at one moment (see [`ClusterCounters`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterFigures {
    pub up: bool,
    pub forwarded: u64,
    pub received: u64,
    pub unforwarded: u64,
}

impl ClusterFigures {
    fn of(counters: &ClusterCounters) -> Self {
        let (forwarded, received, unforwarded) = counters.counts();
        ClusterFigures { up: counters.up(), forwarded, received, unforwarded }
    }
}

/// One live session, as `/connz` lists it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The routing id (escaped where not printable).
    pub id: String,
    /// The name its key is listed under (with an allowlist).
    pub name: Option<Arc<str>>,
    /// Its CURVE public key (Z85).
    pub key: Option<Arc<str>>,
    pub peer: Option<Arc<str>>,
    /// Unix times, seconds.
    pub connected: f64,
    pub last_heard: f64,
    pub ttl_ms: u64,
    pub subscriptions: usize,
    pub msgs_in: u64,
    pub msgs_out: u64,
    /// Messages waiting in mc0d's buffer for it.
    pub queued: usize,
    /// Its connection closed; nothing goes to it until it speaks again.
    pub lost: bool,
}

/// A session table and when it was built.
#[derive(Debug, Default)]
pub struct Sessions {
    pub rows: Vec<Session>,
    pub built: Option<Instant>,
    /// Unix time it was built, seconds.
    pub at: f64,
    /// How long the socket thread spent building it.
    pub took: Duration,
}

#[derive(Default)]
struct State {
    snapshot: Arc<Snapshot>,
    sessions: Arc<Sessions>,
}

/// Shared by the socket thread (which publishes) and the HTTP thread.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    fresh: Condvar,
    sessions_wanted: AtomicBool,
    /// Written to (a byte, non-blocking) after asking for a session table:
    /// its other end is polled with the ROUTER, so the loop wakes at once
    /// rather than at its next timeout.
    wake: OnceLock<UnixStream>,
    key_refusals: Mutex<Arc<KeyRefusals>>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the ZAP handler counts its refusals.
    pub fn set_key_refusals(&self, refusals: Arc<KeyRefusals>) {
        *self.key_refusals.lock().unwrap_or_else(|p| p.into_inner()) = refusals;
    }

    /// The latest counters (at most [`COUNTERS_EVERY`] old while the broker
    /// runs), with the ZAP handler's counts as of now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = (*self.lock().snapshot).clone();
        // Here rather than on the socket thread, which copies them in
        // whatever order its table holds them.
        snapshot.queues.sort_unstable_by(|a, b| (&a.topic, &a.name).cmp(&(&b.topic, &b.name)));
        snapshot.keys_refused = self.key_refusals.lock().unwrap_or_else(|p| p.into_inner()).read();
        snapshot
    }

    /// A session table at most [`SESSIONS_EVERY`] old, asking the socket
    /// thread for one if needed; the last one there is if it does not
    /// answer in time.
    pub fn sessions(&self) -> Arc<Sessions> {
        let deadline = Instant::now() + SESSIONS_WAIT;
        let mut state = self.lock();
        let asked = Instant::now();
        loop {
            if state.sessions.built.is_some_and(|b| b + SESSIONS_EVERY > asked) {
                return state.sessions.clone();
            }
            self.sessions_wanted.store(true, Ordering::Release);
            if let Some(mut wake) = self.wake.get() {
                // Full means a wake-up is pending already.
                let _ = wake.write(&[1]);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return state.sessions.clone();
            }
            state = self.fresh.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The socket thread's side: publishes into the [`Hub`].
pub struct Publisher {
    hub: Arc<Hub>,
    last: Option<Instant>,
    pub allowlist_keys: usize,
    pub allowlist_reloads: u64,
    /// With `--cluster`: the bridge's counters.
    pub cluster: Option<Arc<ClusterCounters>>,
}

impl Publisher {
    /// The publisher, and the end of `hub`'s wake-up the loop must poll
    /// (`Router::wake_on`).
    pub fn new(hub: Arc<Hub>) -> std::io::Result<(Self, UnixStream)> {
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        // A second publisher on one hub would not be woken: none is made.
        let _ = hub.wake.set(wake);
        Ok((Publisher { hub, last: None, allowlist_keys: 0, allowlist_reloads: 0, cluster: None }, woken))
    }

    /// Called on every wake-up of the loop: copies the counters when due,
    /// builds the session table when asked. `peers` maps a connection to its
    /// peer address; `handshake_failures` comes from the socket monitor.
    pub fn publish<T: Transport>(
        &mut self,
        engine: &Engine<T>,
        peers: &HashMap<Conn, Peer>,
        handshake_failures: u64,
        now: Instant,
    ) {
        let wanted = self.hub.sessions_wanted.swap(false, Ordering::AcqRel);
        if !wanted && self.last.is_some_and(|l| l + COUNTERS_EVERY > now) {
            return;
        }
        self.last = Some(now);
        let (queues, queue_limits) = engine.queue_figures();
        let snapshot = Arc::new(Snapshot {
            stats: engine.stats(),
            handshake_failures,
            keys_refused: [0; 3],
            allowlist_keys: self.allowlist_keys,
            allowlist_reloads: self.allowlist_reloads,
            tcp_connections: peers.len(),
            cluster: self.cluster.as_deref().map(ClusterFigures::of),
            queues,
            queue_limits,
        });
        let sessions = wanted.then(|| Arc::new(table(engine, peers, now)));
        let mut state = self.hub.lock();
        state.snapshot = snapshot;
        if let Some(sessions) = sessions {
            state.sessions = sessions;
            drop(state);
            self.hub.fresh.notify_all();
        }
    }
}

fn table<T: Transport>(engine: &Engine<T>, peers: &HashMap<Conn, Peer>, now: Instant) -> Sessions {
    let started = Instant::now();
    let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let unix = |at: Instant| wall - now.saturating_duration_since(at).as_secs_f64();
    let rows = engine
        .sessions()
        .map(|(c, queued)| Session {
            id: c.id.escape_ascii().to_string(),
            name: c.identity.clone(),
            key: c.user.clone(),
            peer: c.conn.and_then(|conn| peers.get(&conn)).map(|p| p.address.clone()),
            connected: unix(c.since),
            last_heard: unix(c.last_heard),
            ttl_ms: c.ttl.as_millis() as u64,
            subscriptions: c.topics.len(),
            msgs_in: c.msgs_in,
            msgs_out: c.msgs_out,
            queued,
            lost: c.lost,
        })
        .collect();
    Sessions { rows, built: Some(now), at: wall, took: started.elapsed() }
}
