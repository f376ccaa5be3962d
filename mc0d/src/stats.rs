//! The broker's counters.
//!
//! Counters with a reason (drops, refusals) are arrays indexed by a reason
//! enum whose `ALL` lists the label values: a new reason is one variant, and
//! the metrics endpoint (`metrics::families`) exports it without more code.

/// Defines a reason enum: its variants, their label values and `ALL`.
macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant,)+ }
        impl $name {
            /// Every reason, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The value of the `reason` label.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }
        }
    };
}

reasons! {
    /// Why a message to a client was dropped.
    DropReason {
        /// Its libzmq queue (`--sndhwm`) and its buffer in mc0d
        /// (`--client-buffer`) are full: a stuck client.
        BufferFull = "buffer_full",
        /// libzmq no longer knows its routing id (`EHOSTUNREACH`) or the send
        /// failed otherwise: the peer vanished.
        PeerGone = "peer_gone",
        /// Its session's connection closed (nothing goes to the routing id
        /// until the session speaks again).
        ConnectionLost = "connection_lost",
        /// Its session ended (expired, disconnected, revoked) with messages
        /// still buffered for it.
        SessionEnded = "session_ended",
    }
}

reasons! {
    /// Why a received command was refused (answered with `ERROR`, not
    /// carried out).
    RefusalReason {
        /// Not a well-formed command.
        Malformed = "malformed",
        /// Over a limit: body size, subscriptions per client.
        LimitExceeded = "limit_exceeded",
        /// Its connection's key is not authorized.
        AccessDenied = "access_denied",
        /// A command other than CONNECT from a routing id without a session.
        NotConnected = "not_connected",
        /// From the routing id of another key's session.
        Impostor = "impostor",
        /// Broke the identity or role rules (with `--identity-check enforce`).
        Identity = "identity",
    }
}

/// How many of each reason: an array indexed by the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByReason<const N: usize>(pub [u64; N]);

impl<const N: usize> Default for ByReason<N> {
    fn default() -> Self {
        ByReason([0; N])
    }
}

impl ByReason<4> {
    pub fn add(&mut self, reason: DropReason, n: u64) {
        self.0[reason as usize] += n;
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }
}

impl ByReason<6> {
    pub fn add(&mut self, reason: RefusalReason, n: u64) {
        self.0[reason as usize] += n;
    }
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.0[reason as usize]
    }
}

/// Counters, as shown in the status line and returned by [`Broker::run`](crate::Broker::run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub clients: usize,
    pub topics: usize,
    /// Messages received (any verb, malformed included).
    pub msgs_in: u64,
    /// Messages sent (MESSAGE, OK, ERROR, NOOP).
    pub msgs_out: u64,
    pub puts: u64,
    pub delivered: u64,
    /// Messages waiting in mc0d's client buffers now.
    pub buffered: usize,
    /// Queues that exist now.
    pub queues: usize,
    /// Messages stored in queues now (delivered ones until acknowledged).
    pub queued: usize,
    /// Queued messages removed because their `EXPIRES-IN` ran out.
    pub expired: u64,
    /// Messages dropped because a client's buffer was full (a stuck client).
    pub full_drops: u64,
    /// Every message dropped: `full_drops`, those to a client that is gone
    /// (disconnected, expired or revoked), and deliveries not made to a
    /// session whose connection closed.
    pub drops: u64,
    /// CONNECTs, SUBs and PUTs that broke the identity or role rules
    /// (refused, or only logged with `--identity-check log`).
    pub violations: u64,
    /// Messages refused because their routing id belongs to a session of
    /// another key.
    pub impostors: u64,
    /// Bytes received (all frames of every message).
    pub bytes_in: u64,
    /// Bytes sent (all frames of every message sent, routing id excluded).
    pub bytes_out: u64,
    /// Sessions opened by a CONNECT (a re-CONNECT included).
    pub connects: u64,
    /// Sessions ended by a DISCONNECT.
    pub disconnects: u64,
    /// Sessions ended because the client was silent past its TTL.
    pub expiries: u64,
    /// Sessions ended because their key left the allowlist (or now has
    /// another name).
    pub revocations: u64,
    /// Heartbeat NOOPs sent.
    pub noops_sent: u64,
    /// ERROR replies sent.
    pub errors_sent: u64,
    /// Subscriptions (client, topic pairs) now.
    pub subscriptions: usize,
    /// Bytes waiting in mc0d's client buffers now.
    pub buffered_bytes: usize,
    /// Messages from other brokers (`--cluster`) that this broker's queues
    /// could not take (a queue full, or not an mc0d MESSAGE): dropped and
    /// logged. Their publisher had its OK from its own broker.
    pub unqueued: u64,
    /// `drops` by reason.
    pub drops_by: ByReason<4>,
    /// Refused commands by reason.
    pub refused: ByReason<6>,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clients={} topics={} in={} out={} puts={} delivered={} buffered={} full_drops={} drops={} violations={} \
             impostors={} queues={} queued={} expired={}",
            self.clients,
            self.topics,
            self.msgs_in,
            self.msgs_out,
            self.puts,
            self.delivered,
            self.buffered,
            self.full_drops,
            self.drops,
            self.violations,
            self.impostors,
            self.queues,
            self.queued,
            self.expired
        )
    }
}
