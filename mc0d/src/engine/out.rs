//! The sending half of the engine: deliveries, client buffers, drops.

use std::sync::Arc;
use std::time::Instant;

use mc0::log::Level;

use super::buffers::{self, Buffers, Frames};
use super::shared::Shared;
use super::transport::Transport;
use super::{more_since, show};
use crate::logger::{Logger, RateLimit};
use crate::stats::{DropReason, Stats};

/// The sending half of the engine state, split off so a fan-out can iterate
/// the subscription table while sending.
pub(super) struct Out<T> {
    pub(super) transport: T,
    pub(super) stats: Stats,
    pub(super) drop_warn: RateLimit,
    pub(super) log: Logger,
    /// Messages waiting for clients whose libzmq queue is full.
    pub(super) buffers: Buffers,
}

impl<T: Transport> Out<T> {
    /// Sends one message to `rid`, or queues it in the client's buffer
    /// behind earlier ones; false (and counted, logged) if dropped.
    pub(super) fn send(&mut self, rid: &[u8], frames: &[Vec<u8>], now: Instant) -> bool {
        if self.buffers.holds(rid) {
            return self.buffer(rid, Arc::new(frames.to_vec()), now);
        }
        let result = self.transport.deliver(rid, frames);
        self.sent(rid, result, buffers::size(frames), || Arc::new(frames.to_vec()), now)
    }

    /// [`send`](Out::send) of borrowed frames, copied only if they must wait.
    pub(super) fn send_parts(&mut self, rid: &[u8], frames: &[&[u8]], now: Instant) -> bool {
        let owned = || Arc::new(frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>());
        if self.buffers.holds(rid) {
            return self.buffer(rid, owned(), now);
        }
        let result = self.transport.deliver_parts(rid, frames);
        self.sent(rid, result, buffers::size(frames), owned, now)
    }

    /// [`send`](Out::send) for one recipient of a fan-out.
    pub(super) fn send_shared(&mut self, rid: &[u8], message: &mut Shared, now: Instant) -> bool {
        if self.buffers.holds(rid) {
            return self.buffer(rid, message.share(), now);
        }
        let result = self.transport.deliver_shared(rid, message);
        self.sent(rid, result, message.size(), || message.share(), now)
    }

    pub(super) fn sent(
        &mut self,
        rid: &[u8],
        result: Result<(), zmq::Error>,
        bytes: usize,
        frames: impl FnOnce() -> Frames,
        now: Instant,
    ) -> bool {
        match result {
            Ok(()) => {
                self.stats.msgs_out += 1;
                self.stats.bytes_out += bytes as u64;
                true
            }
            // libzmq's queue to it is full: later, in order.
            Err(zmq::Error::EAGAIN) => self.buffer(rid, frames(), now),
            Err(e) => {
                self.dropped(rid, 1, DropReason::PeerGone, &failure(e), now);
                false
            }
        }
    }

    pub(super) fn buffer(&mut self, rid: &[u8], frames: Frames, now: Instant) -> bool {
        if self.buffers.push(rid, frames, now) {
            return true;
        }
        self.stats.full_drops += 1;
        let why =
            format!("it is not reading: its buffer in mc0d is full ({} bytes, --client-buffer)", self.buffers.limit());
        self.dropped(rid, 1, DropReason::BufferFull, &why, now);
        false
    }

    /// Sends what waits in the buffers of the clients due a retry.
    pub(super) fn retry_buffered(&mut self, now: Instant) {
        for rid in self.buffers.due(now) {
            let transport = &mut self.transport;
            let retried = self.buffers.retry(&rid, now, |frames| transport.deliver(&rid, frames));
            self.stats.msgs_out += retried.sent as u64;
            self.stats.bytes_out += retried.bytes as u64;
            if let Some((e, dropped)) = retried.failed {
                self.dropped(&rid, dropped as u64, DropReason::PeerGone, &failure(e), now);
            }
        }
    }

    /// Drops what waits for a client the broker forgets.
    pub(super) fn discard(&mut self, rid: &[u8], reason: DropReason, why: &str, now: Instant) {
        let dropped = self.buffers.discard(rid);
        if dropped > 0 {
            self.dropped(rid, dropped as u64, reason, why, now);
        }
    }

    pub(super) fn dropped(&mut self, rid: &[u8], count: u64, reason: DropReason, why: &str, now: Instant) {
        self.stats.drops += count;
        self.stats.drops_by.add(reason, count);
        if let Some(suppressed) = self.drop_warn.allow(now) {
            let what = if count == 1 { "a message".to_string() } else { format!("{count} messages") };
            self.log.log(
                Level::Warn,
                format_args!(
                    "dropped {what} to {}: {why}{}; drops={}",
                    show(rid),
                    more_since(suppressed, "drops"),
                    self.stats.drops
                ),
            );
        }
    }
}

/// Why a send failed for good.
fn failure(e: zmq::Error) -> String {
    match e {
        zmq::Error::EHOSTUNREACH => "peer is gone".to_string(),
        other => other.to_string(),
    }
}
