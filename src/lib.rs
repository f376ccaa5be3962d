//! mc0: the ZeroMQ (CURVE) transport for MCollective 2.x.
//!
//! - [`protocol`]: the wire protocol as pure values (no I/O), shared by both sides.
//! - [`keys`]: Z85 CURVE key files.
//! - [`topics`]: MCollective topic names.
//! - [`connector`]: the DEALER client used by MCollective nodes and clients,
//!   with its configuration ([`connector::config`]).
//! - [`ffi`]: the C ABI (`include/mc0.h`) over the connector.
//!
//! This crate is libmc0 and holds only what a connector needs. The broker is
//! the `mc0d` package (`mc0d/`), the benchmark `mc0-bench` (`bench/`): both
//! build on [`protocol`], [`keys`] and [`topics`] from here, and nothing they
//! depend on reaches a program that links libmc0.

pub mod connector;
pub mod ffi;
pub mod keys;
pub mod log;
pub mod protocol;
pub mod topics;

/// The crate version, as reported by `mc0_version()` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Fails loudly when the linked libzmq cannot do CURVE (e.g. the vendored
/// build of the `zmq` crate instead of Debian's libzmq5).
pub fn ensure_curve_support() -> Result<(), String> {
    if zmq::has("curve") == Some(true) {
        Ok(())
    } else {
        let (a, b, c) = zmq::version();
        Err(format!(
            "the linked libzmq {a}.{b}.{c} has no CURVE support; link Debian's libzmq5 (see .cargo/config.toml)"
        ))
    }
}
