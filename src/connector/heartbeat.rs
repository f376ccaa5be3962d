//! The connector's clocks, as pure values: the heartbeat contract of one
//! session (when to probe an idle or silent link, when to give it up) and
//! the reconnect backoff. The factors are the protocol's
//! ([`protocol::heartbeat`]); nothing here reads a clock or a socket.

use std::time::{Duration, Instant};

use crate::protocol::heartbeat;

/// One session's heartbeat: what was last sent and heard, and the probe.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    ttl: Duration,
    last_send: Instant,
    last_recv: Instant,
    /// When the last NOOP probe was queued (it may still wait for the
    /// socket); None once the session restarts.
    probe_sent: Option<Instant>,
}

impl Heartbeat {
    pub fn new(ttl: Duration, now: Instant) -> Heartbeat {
        Heartbeat { ttl, last_send: now, last_recv: now, probe_sent: None }
    }

    /// Something went out on the socket.
    pub fn sent(&mut self, now: Instant) {
        self.last_send = now;
    }

    /// Something came in from the broker.
    pub fn heard(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// A new session starts: the broker counts as just heard.
    pub fn restart(&mut self, now: Instant) {
        self.last_recv = now;
        self.probe_sent = None;
    }

    /// The session ended: no probe is outstanding any more.
    pub fn forget_probe(&mut self) {
        self.probe_sent = None;
    }

    pub fn probed(&mut self, now: Instant) {
        self.probe_sent = Some(now);
    }

    /// When the link counts as dead: the broker silent for 1.05 × TTL.
    pub fn dead_at(&self) -> Instant {
        self.last_recv + heartbeat::dead_after(self.ttl)
    }

    /// How long the broker has been silent.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_recv)
    }

    /// When a NOOP probe is due, if one is: once we have sent nothing for
    /// 0.95 × TTL (PROTOCOL.md), or the broker has been silent that long
    /// (asked once, rather than relying on its own NOOP arriving within the
    /// last 0.1 × TTL; with an ID it answers at once, which proves it alive).
    pub fn probe_at(&self) -> Option<Instant> {
        // Not while the last probe still waits for the socket (at its
        // high-water mark), or the loop would spin queueing probes.
        let idle = self.probe_sent.map_or(true, |at| at <= self.last_send).then_some(self.last_send);
        // Once per silence: a probe sent after the last answer is enough.
        let silent = self.probe_sent.map_or(true, |at| at < self.last_recv).then_some(self.last_recv);
        idle.into_iter().chain(silent).min().map(|from| from + heartbeat::noop_after(self.ttl))
    }
}

/// Delay before a new socket replaces one the connector gave up on (the
/// same broker's, or the next of the pool's): `reconnect_initial` doubling
/// per failed attempt up to `reconnect_max`, times a jitter in [0.5, 1.5)
/// (as Choria's) that spreads a fleet reconnecting after a broker died.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff { base, cap, attempt: 0, rng: seed | 1 }
    }

    /// The delay before the next attempt; each call counts a failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.5 + (self.rng % 1000) as f64 / 1000.0;
        self.attempt = self.attempt.saturating_add(1);
        exp.min(self.cap).mul_f64(jitter)
    }

    /// A session succeeded: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn an_idle_link_is_probed_at_095_and_dead_at_105_ttl() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(TTL, t0);
        assert_eq!(hb.probe_at(), Some(t0 + Duration::from_millis(9500)));
        assert_eq!(hb.dead_at(), t0 + Duration::from_millis(10_500));
        // Sending pushes the idle probe back, but not the silence probe.
        hb.sent(t0 + Duration::from_secs(5));
        assert_eq!(hb.probe_at(), Some(t0 + Duration::from_millis(9500)));
        hb.heard(t0 + Duration::from_secs(4));
        assert_eq!(hb.probe_at(), Some(t0 + Duration::from_millis(13_500)));
        assert_eq!(hb.dead_at(), t0 + Duration::from_millis(14_500));
    }

    #[test]
    fn one_probe_per_silence_and_none_while_it_waits_for_the_socket() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(TTL, t0);
        let at = hb.probe_at().unwrap();
        hb.probed(at);
        // Queued but not yet sent: neither probe is armed.
        assert_eq!(hb.probe_at(), None);
        hb.sent(at);
        // Sent: the idle probe re-arms from then; the silence one stays
        // disarmed until the broker is heard.
        assert_eq!(hb.probe_at(), Some(at + Duration::from_millis(9500)));
        hb.heard(at + Duration::from_millis(1));
        assert_eq!(hb.probe_at(), Some(at + Duration::from_millis(9500)));
        hb.restart(at + Duration::from_secs(1));
        assert!(hb.probe_at().is_some());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(base, cap, 12345);
        for attempt in 0..12 {
            let bound = (base * (1 << attempt)).min(cap);
            let d = b.next_delay();
            assert!(d >= bound / 2 && d < bound * 3 / 2, "attempt {attempt}: {d:?} not in [0.5, 1.5) × {bound:?}");
        }
        b.reset();
        assert!(b.next_delay() < base * 3 / 2);
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let delays: std::collections::BTreeSet<Duration> = (1..50u64)
            .map(|seed| Backoff::new(Duration::from_millis(100), Duration::from_secs(10), seed * 7919).next_delay())
            .collect();
        assert!(delays.len() > 40, "{} distinct delays of 49", delays.len());
    }
}
