//! The client side: [`Connector`], a thread-safe handle on one DEALER
//! connection to the broker.
//!
//! How it is built (each file says more):
//! - `handle`: [`Connector`], the callers' side. Calls become requests in a
//!   queue (`shared`) and wait, bounded, for their answer (`oneshot`).
//! - `engine`: the one thread that owns the socket. It polls the transport
//!   and a wake-up pipe (`wake`) and moves requests, frames and events in
//!   and out of the session.
//! - `session`: the protocol state machine without sockets: handshake,
//!   acknowledgements by ID, subscriptions counted by holder, the publish
//!   queue, reconnects. Its clocks are in `heartbeat`.
//! - `transport`: the seam between engine and socket, and its ZeroMQ
//!   implementation (DEALER plus socket monitor).
//! - [`config`]: the `plugin.zeromq.*` settings.
//!
//! Delivery semantics (also in docs/CONNECTOR.md):
//! - `publish` returns once the message is queued for the engine. The engine
//!   sends each PUT with an ID and keeps it until the broker's OK. A PUT the
//!   broker refuses as "not connected" (it forgot us) is sent again after
//!   the re-handshake. A PUT whose fate is unknown because the session
//!   ended before its OK (connection closed, broker silent) is dropped and
//!   counted, not resent: MCollective requests must not run twice
//!   (at-most-once).
//! - While the link is down publishes wait in a queue of `send_queue`
//!   entries and are sent, once each, after the broker is back; past that
//!   `publish` fails with [`ErrorKind::QueueFull`].
//! - Subscriptions are counted by holder, remembered, and re-made as soon as
//!   a new session with the broker starts (within about 1.2 s of a broker's
//!   return, whatever the heartbeat).

pub mod config;
mod engine;
mod error;
mod handle;
mod heartbeat;
pub mod logging;
mod message;
mod oneshot;
mod session;
mod shared;
mod transport;
mod wake;

#[cfg(test)]
mod model_tests;

use std::time::{Duration, Instant};

pub use config::{Config, Settings};
pub use error::{Error, ErrorKind};
pub use handle::Connector;
pub use logging::{set_logger, LogFn};
pub use message::{LastError, Message, Stats};

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// "2.5 s" for messages.
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_formats_briefly() {
        assert_eq!(secs(Duration::from_millis(2500)), "2.5 s");
        assert_eq!(secs(Duration::from_secs(10)), "10 s");
    }
}
