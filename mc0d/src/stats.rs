//! The broker's counters.

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
