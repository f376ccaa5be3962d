//! The client side: [`Connector`], a thread-safe handle on one DEALER
//! connection to the broker.
//!
//! The socket belongs to one background thread, the engine
//! (`engine`): it performs the CONNECT handshake, matches acknowledgements
//! by ID, heartbeats, reconnects and re-subscribes. Callers hand it requests
//! through a queue and wake it through a pipe it polls together with the
//! socket, so it never sleep-polls. Received messages go to an inbox that
//! [`Connector::receive`] waits on.
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
//! - Subscriptions are remembered and re-made as soon as a new session with
//!   the broker starts (see `engine`: within about 1.2 s of a broker's
//!   return, whatever the heartbeat).

pub(crate) mod engine;
pub mod logging;
mod wake;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, Settings};
use crate::log::Level;
use crate::protocol::{self, Limits};
use logging::clog;

pub use logging::{set_logger, LogFn};

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
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn closed() -> Error {
        Error::new(ErrorKind::Closed, "the connector is closed")
    }
    pub(crate) fn zmq(what: &str, e: zmq::Error) -> Error {
        Error::new(ErrorKind::Zmq, format!("{what}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A message received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to (lossily decoded as UTF-8).
    pub topic: String,
    /// The publisher's `X-` headers in arrival order; values are binary.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The payload. Several body frames (never sent by MCollective) are
    /// concatenated.
    pub body: Vec<u8>,
    /// The publisher's authenticated identity: the name its key is listed
    /// under in mc0d's allowlist (the `SENDER` header mc0d sets with
    /// `--authorized-keys`). `None` from a broker without an allowlist. Only
    /// mc0d sets it: a legacy broker forwards whatever a client put there.
    pub sender: Option<String>,
    /// The publisher's CURVE public key, Z85 (the `SENDER-KEY` header mc0d
    /// sets instead of `SENDER` when it has no name for the key: in open
    /// mode, or for a key listed without one). At most one of the two is
    /// set. Trust it as [`sender`](Message::sender).
    pub sender_key: Option<String>,
}

impl Message {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| &v[..])
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful CONNECT handshakes (1 after connect).
    pub handshakes: u64,
    /// Times a session with the broker ended and the connector started
    /// reconnecting: the broker closed the connection, or it was silent for
    /// 1.05 × TTL (then a new socket is opened).
    pub reconnects: u64,
    /// Publishes acknowledged by the broker.
    pub published: u64,
    /// Publishes dropped: sent on a link that died before the broker
    /// acknowledged them, refused by the broker, or still queued at close.
    pub publishes_dropped: u64,
    /// Messages received from the broker (including dropped ones).
    pub received: u64,
    /// Received messages dropped because `receive_queue` was full.
    pub messages_dropped: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub handshakes: AtomicU64,
    pub reconnects: AtomicU64,
    pub published: AtomicU64,
    pub publishes_dropped: AtomicU64,
    pub received: AtomicU64,
    pub messages_dropped: AtomicU64,
}

/// A publish on its way to the engine.
#[derive(Debug, Clone)]
pub(crate) struct Publish {
    pub topic: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Where the engine sends the result of a request a caller waits for.
///
/// A Mutex/Condvar slot rather than `std::sync::mpsc`: waiting on a channel
/// registers a `std::thread::current()` handle for the waiting thread, which
/// Rust never frees for threads it did not start (C and Ruby callers), so
/// every such caller thread would leak it (valgrind: "possibly lost").
pub(crate) struct Answer(Arc<Slot>);

pub(crate) struct Waiter(Arc<Slot>);

#[derive(Default)]
pub(crate) struct Slot {
    value: Mutex<Option<Result<(), Error>>>,
    ready: Condvar,
}

pub(crate) fn oneshot() -> (Answer, Waiter) {
    let slot = Arc::new(Slot::default());
    (Answer(slot.clone()), Waiter(slot))
}

impl Answer {
    pub fn send(self, result: Result<(), Error>) {
        self.set(result);
    }
    fn set(&self, result: Result<(), Error>) {
        let mut value = self.0.value.lock().unwrap_or_else(|e| e.into_inner());
        if value.is_none() {
            *value = Some(result);
            self.0.ready.notify_all();
        }
    }
}

impl Drop for Answer {
    /// An answer dropped unsent (engine gone) tells the caller at once.
    fn drop(&mut self) {
        self.set(Err(Error::closed()));
    }
}

impl Waiter {
    /// The answer, or None after `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<Result<(), Error>> {
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_future);
        let mut value = self.0.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = value.take() {
                return Some(result);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            value = self.0.ready.wait_timeout(value, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

pub(crate) enum Request {
    Subscribe {
        topic: Vec<u8>,
        answer: Answer,
    },
    Unsubscribe {
        topic: Vec<u8>,
        answer: Answer,
    },
    Publish(Publish),
    /// Answered once every publish queued before it is acknowledged or dropped.
    Flush {
        answer: Answer,
    },
    Close {
        answer: Answer,
    },
}

pub(crate) struct Requests {
    pub items: VecDeque<Request>,
    /// False once the engine has exited: nobody would answer.
    pub open: bool,
}

pub(crate) struct Inbox {
    pub messages: VecDeque<Message>,
    pub closed: bool,
}

/// State shared by the handle(s) and the engine thread.
pub(crate) struct Shared {
    pub requests: Mutex<Requests>,
    pub waker: wake::Waker,
    /// Publishes handed to the engine and not yet on the wire.
    pub queued_publishes: AtomicUsize,
    pub inbox: Mutex<Inbox>,
    pub inbox_ready: Condvar,
    /// Set by close(): new calls fail with Closed at once.
    pub closing: AtomicBool,
    pub counters: Counters,
    /// The current socket's routing id (a new socket replaces one the
    /// engine gave up on).
    pub routing_id: Mutex<String>,
}

impl Shared {
    /// Queues a request for the engine and wakes it.
    fn push(&self, request: Request) -> Result<(), Error> {
        {
            let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            if !requests.open {
                return Err(Error::closed());
            }
            requests.items.push_back(request);
        }
        self.waker.wake();
        Ok(())
    }

    pub(crate) fn close_inbox(&self) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.inbox_ready.notify_all();
    }
}

/// A connection to the broker. `Send + Sync`: one thread may block in
/// [`receive`](Connector::receive) while others publish and subscribe, and
/// any thread may [`close`](Connector::close) it. Every call is bounded in
/// time; dropping the handle closes it.
pub struct Connector {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Extra time granted to the engine beyond its own deadlines before a
/// caller stops waiting for it; the engine always answers first unless the
/// machine is badly overloaded.
const GRACE: Duration = Duration::from_secs(5);

impl Connector {
    /// Connects to the broker and completes the CONNECT handshake, waiting at
    /// most `connect_timeout`. Errors: Config/Key for a bad config (naming the
    /// key or file), Resolve when `broker.host` does not resolve (at once,
    /// naming it), Zmq for socket failures, Timeout when the broker does not
    /// answer (down, or a different CURVE key), Broker if it refuses.
    pub fn connect(config: &Config) -> Result<Connector, Error> {
        let settings = Arc::new(config.resolve()?);
        if settings.curve.is_some() {
            crate::ensure_curve_support().map_err(|e| Error::new(ErrorKind::Zmq, e))?;
        }
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests { items: VecDeque::new(), open: true }),
            waker: wake::Waker::new().map_err(|e| Error::new(ErrorKind::Zmq, format!("cannot create a pipe: {e}")))?,
            queued_publishes: AtomicUsize::new(0),
            inbox: Mutex::new(Inbox { messages: VecDeque::new(), closed: false }),
            inbox_ready: Condvar::new(),
            closing: AtomicBool::new(false),
            counters: Counters::default(),
            routing_id: Mutex::new(String::new()),
        });
        let (ready_tx, ready_rx) = oneshot();
        let engine = engine::Engine::new(settings.clone(), shared.clone(), ready_tx);
        let thread = std::thread::Builder::new()
            .name("mc0-connector".into())
            .spawn(move || engine.run())
            .map_err(|e| Error::new(ErrorKind::Zmq, format!("cannot start the connector thread: {e}")))?;
        let no_answer = || {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "no answer from broker {}:{} within {} (is it running, and is broker.public_key its key?)",
                    settings.host,
                    settings.port,
                    secs(settings.connect_timeout)
                ),
            )
        };
        match ready_rx.wait(settings.connect_timeout + GRACE) {
            Some(Ok(())) => {
                let connector = Connector { shared, settings, thread: Mutex::new(Some(thread)) };
                clog!(
                    Level::Info,
                    "mc0 connector {}: connected to {}",
                    connector.routing_id(),
                    connector.settings.endpoint
                );
                Ok(connector)
            }
            Some(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            None => {
                // The engine is overdue; tell it to stop and leave it detached
                // rather than block the caller further.
                shared.closing.store(true, Ordering::SeqCst);
                let (tx, _rx) = oneshot();
                let _ = shared.push(Request::Close { answer: tx });
                Err(no_answer())
            }
        }
    }

    /// The ZeroMQ routing id of the current socket:
    /// `"<identity> <pid> <n> <random>"`, `n` counting sockets in this
    /// process and `<random>` 16 hex digits no other client can guess. A link
    /// declared dead (broker silent) is replaced by a new socket with a new
    /// id, so late traffic of the dead one cannot mix in; a connection the
    /// broker closed is re-established on the same socket.
    pub fn routing_id(&self) -> String {
        self.shared.routing_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.shared.closing.load(Ordering::SeqCst) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    /// Sends a request and waits up to `timeout` for the engine's answer.
    fn call(&self, make: impl FnOnce(Answer) -> Request, timeout: Duration, what: &str) -> Result<(), Error> {
        self.check_open()?;
        let (tx, rx) = oneshot();
        self.shared.push(make(tx))?;
        match rx.wait(timeout) {
            Some(result) => result,
            None => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{what}: no answer from broker {}:{} within {}",
                    self.settings.host,
                    self.settings.port,
                    secs(timeout)
                ),
            )),
        }
    }

    /// Subscribes to `topic` and waits for the broker's OK (at most
    /// `connect_timeout`). The subscription is remembered and re-made after
    /// every reconnect; on Timeout (link down) it stays remembered and is made
    /// once the broker answers again. Broker: the broker refused it.
    pub fn subscribe(&self, topic: &str) -> Result<(), Error> {
        check_topic(topic)?;
        let topic = topic.as_bytes().to_vec();
        self.call(|answer| Request::Subscribe { topic, answer }, self.settings.connect_timeout, "subscribe")
    }

    /// Unsubscribes from `topic` and waits for the broker's OK (bounded like
    /// [`subscribe`](Connector::subscribe)). While the link is down it
    /// succeeds at once: the next session will not have the subscription.
    pub fn unsubscribe(&self, topic: &str) -> Result<(), Error> {
        check_topic(topic)?;
        let topic = topic.as_bytes().to_vec();
        self.call(|answer| Request::Unsubscribe { topic, answer }, self.settings.connect_timeout, "unsubscribe")
    }

    /// Queues a message for `topic` with `X-` headers and a binary body and
    /// returns without waiting for the broker (see the module docs for the
    /// delivery semantics; [`flush`](Connector::flush) waits). Errors:
    /// InvalidArgument (empty/over-long topic, header name not `X-...`
    /// printable ASCII, too many headers, body over 64 MiB), QueueFull,
    /// Closed.
    pub fn publish(&self, topic: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), Error> {
        self.check_open()?;
        check_topic(topic)?;
        let limits = Limits::default();
        // TOPIC and ID take two of the header slots.
        if headers.len() + 2 > limits.max_headers {
            return Err(invalid(format!("{} headers, over the limit of {}", headers.len(), limits.max_headers - 2)));
        }
        for (name, value) in headers {
            if !name.starts_with("X-") || name.len() < 3 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "header name {name:?}: must start with \"X-\" and be printable ASCII (other names are reserved)"
                )));
            }
            if value.len() > limits.max_frame_size {
                return Err(invalid(format!("header {name} is {} bytes, over the limit", value.len())));
            }
        }
        if body.len() > limits.max_frame_size {
            return Err(invalid(format!("body is {} bytes, over the limit of {}", body.len(), limits.max_frame_size)));
        }
        // Reserve a queue slot first so concurrent publishers cannot overshoot.
        let limit = self.settings.send_queue;
        let reserved = self.shared.queued_publishes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            if n < limit {
                Some(n + 1)
            } else {
                None
            }
        });
        if reserved.is_err() {
            return Err(Error::new(
                ErrorKind::QueueFull,
                format!("{limit} publishes already queued (send_queue); the broker is unreachable or slow"),
            ));
        }
        let publish = Publish {
            topic: topic.as_bytes().to_vec(),
            headers: headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect(),
            body: body.to_vec(),
        };
        self.shared.push(Request::Publish(publish)).map_err(|e| {
            self.shared.queued_publishes.fetch_sub(1, Ordering::SeqCst);
            e
        })
    }

    /// Waits until every publish made before this call has been acknowledged
    /// by the broker (or dropped, see [`Stats::publishes_dropped`]). Timeout
    /// after `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.call(|answer| Request::Flush { answer }, timeout, "flush")
    }

    /// The next received message, waiting at most `timeout`
    /// (`Duration::MAX`: until a message arrives or the connector is
    /// closed). NOOPs and acknowledgements never show up here. Errors:
    /// Timeout, Closed (also when another thread closes the connector while
    /// this one waits).
    pub fn receive(&self, timeout: Duration) -> Result<Message, Error> {
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_future);
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if inbox.closed {
                return Err(Error::closed());
            }
            if let Some(message) = inbox.messages.pop_front() {
                return Ok(message);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(ErrorKind::Timeout, format!("no message within {}", secs(timeout))));
            }
            inbox = self.shared.inbox_ready.wait_timeout(inbox, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Counters since connect.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            handshakes: c.handshakes.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            publishes_dropped: c.publishes_dropped.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            messages_dropped: c.messages_dropped.load(Ordering::Relaxed),
        }
    }

    /// Closes the connection: wakes every thread blocked in receive (they get
    /// Closed), sends the queued publishes and DISCONNECT and waits for its
    /// OK (at most `close_timeout`), then stops the engine thread. Idempotent
    /// and callable from any thread; later calls on the handle fail with
    /// Closed.
    pub fn close(&self) -> Result<(), Error> {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.close_inbox();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = thread else { return Ok(()) };
        let (tx, rx) = oneshot();
        let answered = match self.shared.push(Request::Close { answer: tx }) {
            Ok(()) => rx.wait(self.settings.close_timeout + GRACE).is_some(),
            // The engine already exited.
            Err(_) => true,
        };
        if answered || thread.is_finished() {
            let _ = thread.join();
        } else {
            clog!(Level::Error, "mc0 connector {}: engine thread did not stop; leaving it detached", self.routing_id());
        }
        Ok(())
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").field("routing_id", &self.routing_id()).finish_non_exhaustive()
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// The protocol's topic rule, plus ours: libmc0 never sends an empty topic.
fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        return Err(invalid("empty topic".into()));
    }
    protocol::check_topic(topic.as_bytes(), &Limits::default()).map_err(|e| invalid(e.to_string()))
}

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

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn connector_is_send_and_sync() {
        assert_send_sync::<Connector>();
        assert_send_sync::<Message>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn topic_checks() {
        assert_eq!(check_topic("").unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert!(check_topic(&"t".repeat(1024)).is_ok());
        assert_eq!(check_topic(&"t".repeat(1025)).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn secs_formats_briefly() {
        assert_eq!(secs(Duration::from_millis(2500)), "2.5 s");
        assert_eq!(secs(Duration::from_secs(10)), "10 s");
    }

    #[test]
    fn message_header_lookup() {
        let m = Message {
            topic: "t".into(),
            headers: vec![("X-A".into(), b"1".to_vec()), ("X-A".into(), b"2".to_vec())],
            body: vec![],
            sender: None,
            sender_key: None,
        };
        assert_eq!(m.header("X-A"), Some(&b"1"[..]));
        assert_eq!(m.header("X-B"), None);
    }
}
