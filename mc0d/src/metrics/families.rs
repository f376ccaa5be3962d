//! The exported metric families, as one table: name (without the `mc0d_`
//! prefix and, for counters, without `_total`, which the encoder adds),
//! help, type and how to read the value off a [`Snapshot`]. A new figure
//! (a cluster link, a queue) is one field in the snapshot and one row
//! here; README's "Monitoring" list, the Grafana dashboard and the tests
//! are checked against this table.

use crate::engine::queues::QueueFigures;
use crate::stats::{DropReason, RefusalReason};

use super::snapshot::{ClusterFigures, KeyRefusal, Snapshot};

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// What a family's samples are.
pub enum Values {
    One(f64),
    /// One sample per value of the labels (as many values as names).
    Labelled(&'static [&'static str], Vec<(Vec<String>, f64)>),
    /// Not exported at all (a figure of a feature that is off, such as
    /// the cluster link without `--cluster`).
    Absent,
}

/// One metric family.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub read: fn(&Snapshot) -> Values,
}

impl Family {
    /// The name as scraped: `mc0d_` prefix, `_total` for counters.
    pub fn exported_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("mc0d_{}_total", self.name),
            Kind::Gauge => format!("mc0d_{}", self.name),
        }
    }
}

fn n(v: impl TryInto<u64>) -> Values {
    Values::One(v.try_into().unwrap_or(u64::MAX) as f64)
}

/// A cluster figure, absent without `--cluster`.
fn cluster(s: &Snapshot, read: fn(&ClusterFigures) -> u64) -> Values {
    s.cluster.as_ref().map_or(Values::Absent, |c| n(read(c)))
}

/// One sample per reason, each under its label.
fn by_reason<R: Copy>(all: &[R], label: fn(R) -> &'static str, count: impl Fn(R) -> u64) -> Values {
    Values::Labelled(&["reason"], all.iter().map(|&r| (vec![label(r).to_string()], count(r) as f64)).collect())
}

fn drops(s: &Snapshot) -> Values {
    by_reason(DropReason::ALL, DropReason::label, |r| s.stats.drops_by.get(r))
}

fn refused(s: &Snapshot) -> Values {
    by_reason(RefusalReason::ALL, RefusalReason::label, |r| s.stats.refused.get(r))
}

fn keys_refused(s: &Snapshot) -> Values {
    by_reason(KeyRefusal::ALL, KeyRefusal::label, |r| s.keys_refused[r as usize])
}

/// One sample per queue, labelled with its topic and name (a queue is
/// both: two topics may have queues of the same name).
fn per_queue(s: &Snapshot, read: fn(&QueueFigures) -> u64) -> Values {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let v = s.queues.iter().map(|q| (vec![text(&q.topic), text(&q.name)], read(q) as f64)).collect();
    Values::Labelled(&["topic", "queue"], v)
}

const fn family(name: &'static str, help: &'static str, kind: Kind, read: fn(&Snapshot) -> Values) -> Family {
    Family { name, help, kind, read }
}

use Kind::{Counter, Gauge};

/// Every family `/metrics` exports (the process ones follow from
/// [`super::process`]).
pub const FAMILIES: &[Family] = &[
    family("connections", "Client sessions open now (connected by CONNECT, not yet ended).", Gauge, |s| {
        n(s.stats.clients)
    }),
    family(
        "tcp_connections",
        "Connections open now that have sent a message (a session's, or one not CONNECTed yet).",
        Gauge,
        |s| n(s.tcp_connections),
    ),
    family("connects", "Sessions opened by a CONNECT (re-CONNECTs included).", Counter, |s| n(s.stats.connects)),
    family("disconnects", "Sessions ended by the client's DISCONNECT.", Counter, |s| n(s.stats.disconnects)),
    family("expiries", "Sessions ended because the client was silent past 1.05 x its TTL.", Counter, |s| {
        n(s.stats.expiries)
    }),
    family(
        "revocations",
        "Sessions dropped because their key left the allowlist or is listed under another name.",
        Counter,
        |s| n(s.stats.revocations),
    ),
    family(
        "handshake_failures",
        "CURVE handshakes that failed (bad key, refused by ZAP, protocol error).",
        Counter,
        |s| n(s.handshake_failures),
    ),
    family("keys_refused", "Connections the ZAP handler refused, by reason.", Counter, keys_refused),
    family("subscriptions", "Subscriptions (session, topic pairs) now.", Gauge, |s| n(s.stats.subscriptions)),
    family("topics", "Topics with at least one subscriber now.", Gauge, |s| n(s.stats.topics)),
    family("messages_in", "Messages received (any verb, malformed included).", Counter, |s| n(s.stats.msgs_in)),
    family("messages_out", "Messages sent (MESSAGE, OK, ERROR, NOOP).", Counter, |s| n(s.stats.msgs_out)),
    family("bytes_in", "Bytes received (every frame after the routing id).", Counter, |s| n(s.stats.bytes_in)),
    family("bytes_out", "Bytes sent (every frame after the routing id).", Counter, |s| n(s.stats.bytes_out)),
    family("puts", "PUTs accepted for routing.", Counter, |s| n(s.stats.puts)),
    family("deliveries", "MESSAGEs handed to a subscriber (sent or buffered for it).", Counter, |s| {
        n(s.stats.delivered)
    }),
    family("drops", "Messages to clients dropped, by reason.", Counter, drops),
    family("refused", "Commands refused with an ERROR, by reason.", Counter, refused),
    family("errors_sent", "ERROR replies sent.", Counter, |s| n(s.stats.errors_sent)),
    family("noops_sent", "Heartbeat NOOPs sent.", Counter, |s| n(s.stats.noops_sent)),
    family("buffered_messages", "Messages waiting in mc0d's per-client buffers now.", Gauge, |s| n(s.stats.buffered)),
    family("buffered_bytes", "Bytes waiting in mc0d's per-client buffers now.", Gauge, |s| n(s.stats.buffered_bytes)),
    family(
        "allowlist_keys",
        "Keys in the allowlist now (0 without --authorized-keys).",
        Gauge,
        |s| n(s.allowlist_keys),
    ),
    family("queues", "Queues held now (declared with --queue or made by a queue subscription).", Gauge, |s| {
        n(s.stats.queues)
    }),
    family("queued_messages", "Messages held in queues now (delivered ones until acknowledged).", Gauge, |s| {
        n(s.stats.queued)
    }),
    family("queue_expired", "Queued messages removed because their EXPIRES-IN ran out.", Counter, |s| {
        n(s.stats.expired)
    }),
    family("queue_messages", "Messages in one queue now, waiting or delivered and not yet acknowledged.", Gauge, |s| {
        per_queue(s, |q| q.messages as u64)
    }),
    family("queue_bytes", "Bytes (bodies and headers) of one queue's messages now.", Gauge, |s| {
        per_queue(s, |q| q.bytes as u64)
    }),
    family(
        "queue_messages_unacknowledged",
        "Messages of one queue delivered and not yet acknowledged now.",
        Gauge,
        |s| per_queue(s, |q| q.unacknowledged as u64),
    ),
    family("queue_consumers", "Consumers (queue subscriptions) of one queue now.", Gauge, |s| {
        per_queue(s, |q| q.consumers as u64)
    }),
    family(
        "queue_messages_expired",
        "Messages of one queue removed because their EXPIRES-IN ran out, since the queue was made.",
        Counter,
        |s| per_queue(s, |q| q.expired),
    ),
    family(
        "queue_messages_redelivered",
        "Deliveries of one queue marked REDELIVERED (its consumer left without acknowledging it).",
        Counter,
        |s| per_queue(s, |q| q.redelivered),
    ),
    family("queue_max_messages", "The bound of each queue's messages (--queue-max-messages).", Gauge, |s| {
        n(s.queue_limits.max_messages)
    }),
    family("queue_max_bytes", "The bound of each queue's bytes (--queue-max-bytes).", Gauge, |s| {
        n(s.queue_limits.max_bytes)
    }),
    family("cluster_up", "1 while the NATS link of --cluster is up, else 0 (absent without --cluster).", Gauge, |s| {
        cluster(s, |c| u64::from(c.up))
    }),
    family("cluster_forwarded", "PUTs published to the cluster through NATS.", Counter, |s| {
        cluster(s, |c| c.forwarded)
    }),
    family("cluster_received", "Messages received from other brokers through NATS.", Counter, |s| {
        cluster(s, |c| c.received)
    }),
    family("cluster_unforwarded", "PUTs not published to the cluster because the NATS link was down.", Counter, |s| {
        cluster(s, |c| c.unforwarded)
    }),
    family(
        "cluster_unqueued",
        "Messages from other brokers that a queue here could not take (full, or not an mc0d MESSAGE): dropped and logged.",
        Counter,
        |s| if s.cluster.is_some() { n(s.stats.unqueued) } else { Values::Absent },
    ),
    family("allowlist_reloads", "Times the allowlist was reloaded (SIGHUP or a change on disk).", Counter, |s| {
        n(s.allowlist_reloads)
    }),
];
