//! The connector's error: a category (one C status code each), a message
//! naming the culprit, and the configuration key at fault when there is one.

use std::fmt;

/// The category of an [`Error`]; each maps to one C status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A bad argument: empty or over-long topic, reserved header name, ...
    InvalidArgument,
    /// Unknown key, bad value, missing required key.
    Config,
    /// Key file missing, unreadable or malformed.
    Key,
    /// No message within the receive timeout, or no answer from the broker
    /// within a bounded time.
    Timeout,
    /// The connector is closed (possibly by another thread).
    Closed,
    /// The broker answered ERROR, or refused our key ("broker refused our
    /// key": not in its allowlist, or revoked).
    Broker,
    /// Too many publishes queued (while reconnecting).
    QueueFull,
    /// libzmq failed (including: no CURVE support).
    Zmq,
    /// The broker's host name does not resolve (unknown, or DNS down).
    /// Not a Config error: a temporary DNS failure heals, so a daemon
    /// should retry it as it retries an unreachable broker.
    Resolve,
}

/// An error with a human-readable message naming what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    key: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), key: None }
    }

    /// The same error, naming the configuration key at fault.
    pub fn with_key(mut self, key: impl Into<String>) -> Error {
        self.key = Some(key.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The configuration key (without the `plugin.zeromq.` prefix) whose
    /// value, absence or file caused this error, e.g. `"broker.port"` or
    /// `"private_key"`; `None` when no single key is at fault. Bindings use
    /// it to name their own setting (MCollective's `plugin.zeromq.<key>`)
    /// without parsing the message.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub(crate) fn closed() -> Error {
        Error::new(ErrorKind::Closed, "the connector is closed")
    }

    pub(crate) fn zmq(what: &str, e: zmq::Error) -> Error {
        Error::new(ErrorKind::Zmq, format!("{what}: {e}"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_data_beside_the_message() {
        let e = Error::new(ErrorKind::Config, "broker.port: \"x\" is not a TCP port");
        assert_eq!(e.key(), None);
        let e = e.with_key("broker.port");
        assert_eq!((e.kind(), e.key()), (ErrorKind::Config, Some("broker.port")));
        assert_eq!(e.to_string(), "broker.port: \"x\" is not a TCP port");
    }
}
