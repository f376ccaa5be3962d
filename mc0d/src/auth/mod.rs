//! Who may connect: the ZAP handler that checks each CURVE handshake
//! ([`zap`]), the client-key allowlist it checks against ([`allowlist`]),
//! and the thread that reloads the list on SIGHUP or a change on disk
//! ([`watch`]).

pub mod allowlist;
pub mod watch;
pub mod zap;
