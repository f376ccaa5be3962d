//! The broker's command handling as a state machine with no socket of its
//! own: the client table and heartbeats ([`clients`]), the subscription
//! table ([`subscriptions`]), the identity and role rules ([`acl`]), and the
//! per-client send buffers ([`buffers`]). Messages go in through
//! [`Engine::handle`], time through [`Engine::tick`]; everything it sends
//! goes out through a [`Transport`], so it can be driven (and fuzzed against
//! a model, `tests/broker_fuzz.rs`) without the network.

pub mod acl;
pub mod buffers;
pub mod clients;
mod cluster;
pub mod queues;
pub mod shared;
pub mod subscriptions;

mod commands;
mod out;
mod persist;
mod queue_commands;
mod refusals;
#[cfg(test)]
mod tests;
mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::log::Level;
use mc0::protocol::{self, Command, Limits, ProtocolError, Reply, ACCESS_DENIED, NOT_CONNECTED, SENDER, SENDER_KEY};

use crate::auth::allowlist::{Allowlist, Entry};
use crate::config::{Config, IdentityCheck};
use crate::logger::{Logger, RateLimit};
use crate::stats::{DropReason, RefusalReason, Stats};
use acl::{Actor, Policy};
use buffers::Buffers;
use clients::{Bytes, Clients, Heard};
use cluster::ClusterLink;
use out::Out;
use queues::Queues;
use subscriptions::Subscriptions;

pub use clients::Conn;
pub use cluster::ToCluster;
pub use shared::Shared;
pub use transport::Transport;

/// Why nothing goes to a session whose connection closed.
const LOST: &str = "its connection closed; nothing goes to it until it speaks again";

/// Where a message came from, as libzmq reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The connection's `User-Id` metadata: its key (Z85) whenever CURVE
    /// is on.
    pub user: Option<&'a str>,
    /// The connection (`ZMQ_SRCFD`), when known.
    pub conn: Option<Conn>,
}

/// The sender of one command, as far as the broker knows it.
struct Sender<'a> {
    key: Option<&'a str>,
    /// With an allowlist: the list's copy of the key and how it is listed.
    listed: Option<(&'a Arc<str>, &'a Entry)>,
    conn: Option<Conn>,
}

impl Sender<'_> {
    fn actor(&self) -> Option<Actor<'_>> {
        self.listed.map(|(_, entry)| Actor { identity: entry.name.as_deref(), role: entry.role })
    }

    /// The one header that names this sender on its MESSAGEs: the name its
    /// key is listed under, else (open mode, or a key listed without a name)
    /// the key; none without CURVE. One header, not both: each is two more
    /// frames every recipient gets and CURVE encrypts (docs/BENCHMARKS.md).
    fn stamp(&self) -> Option<(&'static str, &str)> {
        match (self.listed.and_then(|(_, entry)| entry.name.as_deref()), self.key) {
            (Some(name), _) => Some((SENDER, name)),
            (None, Some(key)) => Some((SENDER_KEY, key)),
            (None, None) => None,
        }
    }
}

/// The broker's command handling: client table, subscriptions, heartbeats,
/// limits and authorization, as a state machine. Messages go in through
/// [`handle`](Engine::handle), time through [`tick`](Engine::tick); every
/// reply and delivery goes out through the [`Transport`].
pub struct Engine<T: Transport> {
    out: Out<T>,
    clients: Clients,
    subs: Subscriptions,
    queues: Queues,
    /// With a store for queued messages (`--queue-dir`): what it must
    /// write and the answers waiting for it.
    store: Option<persist::StoreWork>,
    limits: Limits,
    max_body_size: usize,
    max_subscriptions: usize,
    malformed_warn: RateLimit,
    denied_warn: RateLimit,
    violation_warn: RateLimit,
    impostor_warn: RateLimit,
    /// Messages from other brokers a local queue could not keep.
    unqueued_warn: RateLimit,
    /// With an allowlist, every message must come from a listed key.
    allowlist: Option<Arc<Allowlist>>,
    identity_check: IdentityCheck,
    policy: Policy,
    /// Reused buffer for [`Transport::lost_connections`].
    lost: Vec<Conn>,
    /// In a cluster (`--cluster`): what goes to the other brokers.
    cluster: Option<ClusterLink>,
}

impl<T: Transport> Engine<T> {
    /// An engine with `config`'s limits, rules and log level, no clients and
    /// no allowlist.
    pub fn new(transport: T, config: &Config) -> Self {
        let log = Logger::new(config.log_level);
        let every_second = || RateLimit::new(Duration::from_secs(1));
        let mut engine = Engine {
            out: Out {
                transport,
                stats: Stats::default(),
                drop_warn: every_second(),
                log,
                buffers: Buffers::new(config.client_buffer),
            },
            clients: Clients::new(),
            subs: Subscriptions::new(),
            queues: {
                let mut queues = Queues::new(config.queue_limits);
                let now = Instant::now();
                for (topic, name) in &config.queues {
                    queues.declare(topic.as_bytes(), name.as_bytes(), now);
                }
                queues
            },
            store: None,
            limits: config.limits,
            max_body_size: config.max_body_size,
            max_subscriptions: config.max_subscriptions,
            malformed_warn: every_second(),
            denied_warn: every_second(),
            violation_warn: every_second(),
            impostor_warn: every_second(),
            unqueued_warn: every_second(),
            allowlist: None,
            identity_check: config.identity_check,
            policy: Policy::new(&config.node_publish_agents),
            lost: Vec::new(),
            cluster: None,
        };
        engine.hold_queue_topics();
        engine
    }

    pub fn transport(&self) -> &T {
        &self.out.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.out.transport
    }

    /// The per-message limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            clients: self.clients.len(),
            topics: self.subs.topic_count(),
            buffered: self.out.buffers.messages(),
            buffered_bytes: self.out.buffers.bytes(),
            subscriptions: self.subs.count(),
            queues: self.queues.count(),
            queued: self.queues.messages(),
            expired: self.queues.expired,
            ..self.out.stats.clone()
        }
    }

    /// Each queue's figures and the bounds they keep, for the metrics
    /// (O(queues)).
    pub fn queue_figures(&self) -> (Vec<queues::QueueFigures>, queues::QueueLimits) {
        (self.queues.figures().collect(), self.queues.limits())
    }

    /// Every session with the number of messages waiting in its buffer, for
    /// the metrics' session table (O(sessions): built only when asked).
    pub fn sessions(&self) -> impl Iterator<Item = (&clients::Client, usize)> {
        self.clients.iter().map(|c| (c, self.out.buffers.queued(&c.id)))
    }

    /// Installs (or, with `None`, removes) the allowlist. Every session whose
    /// key is not in the new list, or is now listed under another name, is
    /// dropped: forgotten with its subscriptions and sent [`ACCESS_DENIED`].
    /// Returns how many.
    pub fn set_allowlist(&mut self, list: Option<Arc<Allowlist>>, now: Instant) -> usize {
        self.allowlist = list;
        let Some(list) = self.allowlist.clone() else { return 0 };
        let stale: Vec<(Bytes, String)> = self
            .clients
            .iter()
            .filter_map(|c| {
                let Some((_, entry)) = c.user.as_deref().and_then(|u| list.entry(u)) else {
                    let key = c.user.as_deref().unwrap_or("none");
                    return Some((c.id.clone(), format!("its key {key} is no longer authorized")));
                };
                (entry.name != c.identity).then(|| {
                    let key = list.describe(c.user.as_deref().unwrap_or_default());
                    let was = c.identity.as_deref().unwrap_or("(no name)");
                    (c.id.clone(), format!("its key {key} is no longer listed as {was:?}"))
                })
            })
            .collect();
        for (rid, why) in &stale {
            let Some(client) = self.clients.remove(rid) else { continue };
            self.subs.forget(&client);
            self.forget_consumer(rid, now);
            self.out.discard(rid, DropReason::SessionEnded, why, now);
            self.out.stats.revocations += 1;
            self.out.log.log(
                Level::Warn,
                format_args!("client {} dropped: {why} ({} subscriptions dropped)", show(rid), client.topics.len()),
            );
            self.reply_error(rid, ACCESS_DENIED, None, now);
        }
        stale.len()
    }

    /// Handles one message: `frames[0]` is the routing id, the rest is what
    /// the client sent (delimiter first), over the connection `origin`.
    pub fn handle<F: AsRef<[u8]>>(&mut self, frames: &[F], origin: Origin<'_>, now: Instant) {
        self.handle_received(frames, 0, origin, now);
    }

    /// Takes note of the connections that ended, as the transport reports
    /// them: their sessions receive nothing until they speak again. With
    /// `all`, of every one that ended before this call (which may cost a
    /// system call): before a delivery, and before a session is tied to a
    /// connection, whose number may be that of one that ended.
    pub fn connections_lost(&mut self, all: bool, now: Instant) {
        let mut lost = std::mem::take(&mut self.lost);
        self.out.transport.lost_connections(&mut lost, all);
        for conn in lost.drain(..) {
            if let Some(rid) = self.clients.connection_lost(conn) {
                // What it holds may never have arrived.
                if !self.queues.is_empty() {
                    self.queues.release(&rid);
                }
                // What waits in its buffer would go to whoever takes the id.
                self.out.discard(&rid, DropReason::ConnectionLost, LOST, now);
                if self.out.log.enabled(Level::Debug) {
                    self.out.log.log(
                        Level::Debug,
                        format_args!(
                            "client {}: its connection closed; nothing is delivered to it until it speaks again",
                            show(&rid)
                        ),
                    );
                }
            }
        }
        self.lost = lost;
    }

    /// Sends due heartbeats and forgets expired clients, for a caller that
    /// has read all input up to `now` (see [`tick_drained`](Engine::tick_drained)).
    pub fn tick(&mut self, now: Instant) {
        self.tick_drained(now, now);
    }

    /// Takes note of the connections known to have ended, sends the
    /// heartbeats due at `now` and forgets the clients that were silent for
    /// 1.05 × TTL up to `drained`, the last instant at which the caller had
    /// read every pending message. A client whose heartbeat still waits in
    /// the socket is thus never expired because the broker fell behind.
    pub fn tick_drained(&mut self, now: Instant, drained: Instant) {
        // Buffered deliveries go out now: first every closed connection is
        // taken note of (see `connections_lost`), else only what is ready.
        let retries = self.out.buffers.next_retry().is_some_and(|at| at <= now);
        self.connections_lost(retries, now);
        self.out.retry_buffered(now);
        if !self.queues.is_empty() {
            // Deliveries taken back from closed connections go to others.
            self.dispatch_queues(now);
            self.tick_queues(now);
        }
        while let Some(rid) = self.clients.pop_noop(now) {
            if self.out.send(&rid, &Reply::Noop.to_frames(), now) {
                self.out.stats.noops_sent += 1;
                if let Some(client) = self.clients.get_mut(&rid) {
                    client.msgs_out += 1;
                }
            }
        }
        while let Some(client) = self.clients.pop_expired(drained) {
            self.subs.forget(&client);
            self.forget_consumer(&client.id, now);
            self.out.discard(&client.id, DropReason::SessionEnded, "it expired", now);
            self.out.stats.expiries += 1;
            let silent = now.saturating_duration_since(client.last_heard);
            self.out.log.log(
                Level::Info,
                format_args!(
                    "client {} expired (silent for {} ms, ttl {} ms)",
                    show(&client.id),
                    silent.as_millis(),
                    client.ttl.as_millis()
                ),
            );
        }
    }

    /// When [`tick`](Engine::tick) has work next (possibly early): a
    /// heartbeat, an expiry, or a retry of a client's buffer.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.clients.next_deadline(), self.out.buffers.next_retry(), self.queues.next_sweep()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Checks that the client and subscription tables agree and respect the
    /// limits and the allowlist; the text says what is wrong. For tests and
    /// fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut pairs = 0usize;
        for client in self.clients.iter() {
            if client.topics.len() > self.max_subscriptions {
                return Err(format!("client {} holds {} topics", show(&client.id), client.topics.len()));
            }
            if let Some(list) = &self.allowlist {
                match client.user.as_deref().and_then(|u| list.entry(u)) {
                    None => return Err(format!("client {} has no authorized key", show(&client.id))),
                    Some((_, entry)) if entry.name != client.identity => {
                        return Err(format!(
                            "client {} acts as {:?}, listed as {:?}",
                            show(&client.id),
                            client.identity,
                            entry.name
                        ))
                    }
                    Some(_) => {}
                }
            }
            for topic in &client.topics {
                if !self.subs.subscribers(topic).any(|s| *s == client.id) {
                    return Err(format!("{} missing from the subscribers of {}", show(&client.id), show(topic)));
                }
                pairs += 1;
            }
        }
        let mut listed = 0usize;
        for (topic, subscribers) in self.subs.iter() {
            if subscribers.is_empty() {
                return Err(format!("topic {} has no subscribers but is kept", show(topic)));
            }
            for sub in subscribers {
                match self.clients.get(sub) {
                    Some(c) if c.topics.contains(topic) => listed += 1,
                    _ => {
                        return Err(format!("{} subscribed to {} but not in the client table", show(sub), show(topic)))
                    }
                }
            }
        }
        if pairs != listed {
            return Err(format!("{pairs} client topics vs {listed} subscriptions"));
        }
        Ok(())
    }

    pub(crate) fn flush_suppressed(&mut self) {
        let n = self.out.drop_warn.take_suppressed();
        if n > 0 {
            self.out.log.log(
                Level::Warn,
                format_args!("{n} more messages dropped since the last warning; drops={}", self.out.stats.drops),
            );
        }
        for (limit, what) in [
            (&mut self.malformed_warn, "malformed messages"),
            (&mut self.denied_warn, "unauthorized messages"),
            (&mut self.violation_warn, "identity or role violations"),
            (&mut self.impostor_warn, "messages from routing ids of another key's session"),
            (&mut self.unqueued_warn, "messages from other brokers not queued"),
        ] {
            let n = limit.take_suppressed();
            if n > 0 {
                self.out.log.log(Level::Warn, format_args!("{n} more {what} since the last warning"));
            }
        }
    }

    fn reply(&mut self, rid: &[u8], reply: Reply<'_>, now: Instant) {
        if self.out.send(rid, &reply.to_frames(), now) {
            self.clients.sent(rid, now);
        }
    }

    fn reply_error(&mut self, rid: &[u8], message: &str, id: Option<&[u8]>, now: Instant) {
        self.out.stats.errors_sent += 1;
        self.reply(rid, Reply::Error { message: message.as_bytes(), id }, now);
    }

    /// [`handle`](Engine::handle) for a message of which `extra` frames past
    /// the limit were read and discarded.
    pub(crate) fn handle_received<F: AsRef<[u8]>>(
        &mut self,
        frames: &[F],
        extra: usize,
        origin: Origin<'_>,
        now: Instant,
    ) {
        self.out.stats.msgs_in += 1;
        let Some((rid, rest)) = frames.split_first() else { return };
        self.out.stats.bytes_in += rest.iter().map(|f| f.as_ref().len() as u64).sum::<u64>();
        let rid: &[u8] = rid.as_ref();
        if rest.is_empty() {
            self.out.log.log(Level::Debug, format_args!("ignoring an empty message from {}", show(rid)));
            return;
        }
        // A clone of the Arc, so entries can be borrowed across `&mut self`.
        let list = self.allowlist.clone();
        let listed = match &list {
            None => None,
            Some(list) => match origin.user.and_then(|u| list.entry(u)) {
                Some(entry) => Some(entry),
                None => return self.deny(rid, rest, origin.user, now),
            },
        };
        let sender = Sender { key: origin.user, listed, conn: origin.conn };
        let known = match self.clients.heard_as(rid, origin.user, origin.conn, now) {
            Heard::Known => true,
            Heard::Moved => {
                // Any earlier end of this connection number belongs to
                // another connection: take note of it before reusing it.
                self.connections_lost(true, now);
                self.clients.rebind(rid, origin.conn);
                if !self.queues.is_empty() {
                    self.queues.wake(rid);
                    self.dispatch_queues(now);
                }
                true
            }
            Heard::Unknown => false,
            Heard::OtherKey(owner) => return self.impostor(rid, rest, origin.user, owner.as_deref(), now),
        };
        if extra > 0 {
            let id = self.lenient_id(rest);
            let error = ProtocolError::TooManyFrames { count: rest.len() + extra, limit: self.limits.max_frames };
            return self.malformed(rid, &error, id, now);
        }
        let env = match protocol::split(rest, &self.limits) {
            Ok(env) => env,
            Err(e) => return self.malformed(rid, &e, None, now),
        };
        let id = Command::id_of(&env);
        let command = match Command::from_envelope(env, &self.limits) {
            Ok(c) => c,
            Err(e) => return self.malformed(rid, &e, id, now),
        };
        if !known && !matches!(command, Command::Connect { .. }) {
            if self.out.log.enabled(Level::Debug) {
                self.out.log.log(
                    Level::Debug,
                    format_args!("{} from unknown client {}: answering not connected", verb(&command), show(rid)),
                );
            }
            self.out.stats.refused.add(RefusalReason::NotConnected, 1);
            return self.reply_error(rid, NOT_CONNECTED, id, now);
        }
        let result = self.execute(rid, &sender, command, now);
        if self.answer_later(rid, id, result.is_ok()) {
            // Sent once the store wrote what the command changed.
        } else if let Err(message) = result {
            if self.out.log.enabled(Level::Debug) {
                self.out.log.log(Level::Debug, format_args!("refused a command from {}: {message}", show(rid)));
            }
            self.reply_error(rid, &message, id, now);
        } else if let Some(id) = id {
            self.reply(rid, Reply::Ok { id }, now);
        }
        if !self.queues.is_empty() {
            self.dispatch_queues(now);
        }
    }
}

fn more_since(suppressed: u64, what: &str) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} more {what} since the last warning)")
    } else {
        String::new()
    }
}

fn verb(command: &Command<'_>) -> &'static str {
    match command {
        Command::Connect { .. } => "CONNECT",
        Command::Disconnect { .. } => "DISCONNECT",
        Command::Sub { .. } => "SUB",
        Command::Unsub { .. } => "UNSUB",
        Command::Put { .. } => "PUT",
        Command::Ack { .. } => "ACK",
        Command::Noop { .. } => "NOOP",
    }
}

/// A routing id or topic for the log: quoted, non-printable bytes escaped
/// (libzmq's generated ids are binary).
fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}
