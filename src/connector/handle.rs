//! [`Connector`]: the callers' side. Calls become requests for the engine
//! thread (woken through a pipe) and wait, bounded, for its answer;
//! `receive` waits on the inbox the engine fills.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::{Config, Server, Settings};
use super::engine::Engine;
use super::logging::clog;
use super::message::{LastError, Message, Stats};
use super::oneshot::{oneshot, Answer};
use super::session::Session;
use super::shared::{Publish, Request, Shared};
use super::transport::ZmqTransport;
use super::{far_future, secs, Error, ErrorKind};
use crate::log::Level;
use crate::protocol::{self, Limits};

/// A connection to the broker. `Send + Sync`: one thread may block in
/// [`receive`](Connector::receive) while others publish and subscribe, and
/// any thread may [`close`](Connector::close) it. Every call is bounded in
/// time; dropping the handle closes it.
pub struct Connector {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The process that started the engine thread: after a fork() the
    /// child has no such thread, so there the connector is closed.
    pid: u32,
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
    ///
    /// With [`connect_retry`](Config::connect_retry) it returns as soon as
    /// the configuration and key files are valid; failures to reach the
    /// broker are then logged and retried in the background.
    pub fn connect(config: &Config) -> Result<Connector, Error> {
        let settings = Arc::new(config.resolve()?);
        if settings.curve.is_some() {
            crate::ensure_curve_support().map_err(|e| Error::new(ErrorKind::Zmq, e))?;
        }
        let shared = Arc::new(Shared::new()?);
        let (ready_tx, ready_rx) = oneshot();
        let now = Instant::now();
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let ready = (!settings.connect_retry).then_some(ready_tx);
        let session = Session::new(settings.clone(), shared.counters.clone(), ready, seed, now);
        let engine = Engine::new(session, ZmqTransport::new(settings.clone()), shared.clone(), settings.receive_queue);
        let thread = std::thread::Builder::new()
            .name("mc0-connector".into())
            .spawn(move || engine.run())
            .map_err(|e| Error::new(ErrorKind::Zmq, format!("cannot start the connector thread: {e}")))?;
        let connector = Connector { shared, settings, thread: Mutex::new(Some(thread)), pid: std::process::id() };
        if connector.settings.connect_retry {
            clog!(Level::Info, "mc0 connector: connecting to {} in the background", connector.settings.pool_names());
            return Ok(connector);
        }
        match ready_rx.wait(connector.settings.connect_timeout + GRACE) {
            Some(Ok(())) => Ok(connector),
            Some(Err(e)) => {
                connector.join_engine();
                Err(e)
            }
            None => {
                // The engine is overdue; tell it to stop and leave it detached
                // rather than block the caller further.
                connector.shared.closing.store(true, Ordering::SeqCst);
                let (tx, _rx) = oneshot();
                let _ = connector.shared.push(Request::Close { answer: tx });
                let s = &connector.settings;
                let message = format!(
                    "no answer from broker {} within {} (is it running, and is broker.public_key its key?)",
                    s.pool_names(),
                    secs(s.connect_timeout)
                );
                // Dropping the handle detaches the thread.
                drop(connector.thread.lock().unwrap_or_else(|e| e.into_inner()).take());
                Err(Error::new(ErrorKind::Timeout, message))
            }
        }
    }

    fn join_engine(&self) {
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }

    /// The ZeroMQ routing id of the current socket:
    /// `"<identity> <pid> <n> <random>"`, `n` counting sockets in this
    /// process and `<random>` 16 hex digits no other client can guess. A link
    /// declared dead (broker silent) is replaced by a new socket with a new
    /// id, so late traffic of the dead one cannot mix in; a connection the
    /// broker closed is re-established on the same socket.
    pub fn routing_id(&self) -> String {
        self.shared.routing_id()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The broker of the pool in use, or being tried while the link is down
    /// (its index is [`Stats::broker`]).
    pub fn server(&self) -> &Server {
        &self.settings.brokers[self.shared.counters.broker.load(Ordering::Relaxed)]
    }

    /// In a child process after fork(): the engine thread is not there.
    fn forked(&self) -> Option<Error> {
        (self.pid != std::process::id()).then(|| {
            Error::new(
                ErrorKind::Closed,
                format!(
                    "the connector was created in process {} and does not survive fork(): create connectors after fork()",
                    self.pid
                ),
            )
        })
    }

    fn check_open(&self) -> Result<(), Error> {
        if let Some(e) = self.forked() {
            return Err(e);
        }
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
                format!("{what}: no answer from broker {} within {}", self.server().name(), secs(timeout)),
            )),
        }
    }

    /// Subscribes to `topic` and waits for the broker's OK (at most
    /// `connect_timeout`). Topics are counted by holder: subscribing to a
    /// topic already held only counts (OK at once, or the answer of its SUB
    /// still on its way), and it stays subscribed until as many
    /// [`unsubscribe`](Connector::unsubscribe) calls. Held topics are re-made
    /// after every reconnect; on Timeout (link down) the topic stays held
    /// and is made once the broker answers (with `connect_retry`, before the
    /// first connection, the call does not wait at all). Broker: the broker
    /// refused it; it is then not held.
    pub fn subscribe(&self, topic: &str) -> Result<(), Error> {
        check_topic(topic)?;
        let topic = topic.as_bytes().to_vec();
        self.call(
            |answer| Request::Subscribe { topic, queue: None, answer },
            self.settings.connect_timeout,
            "subscribe",
        )
    }

    /// Subscribes to `topic` as a consumer of its queue `queue` (mc0d;
    /// docs/PROTOCOL.md "Queues and expiry"), held and waited for like
    /// [`subscribe`](Connector::subscribe). The broker keeps the topic's
    /// messages for the queue while no consumer is connected and gives each
    /// to one consumer of the queue. Guarantee: at least once. A delivery
    /// is acknowledged when [`receive`](Connector::receive) hands it out, or,
    /// with `explicit_ack`, by [`ack`](Connector::ack); one not acknowledged
    /// when this connector closes or loses its link is delivered again
    /// (marked, [`Message::redelivered`]), to this or another consumer.
    /// A legacy broker ignores the queue: the subscription is then plain.
    /// InvalidArgument: a bad queue name (1 to 255 printable ASCII bytes),
    /// or the topic is already held the other way.
    pub fn subscribe_queue(&self, topic: &str, queue: &str) -> Result<(), Error> {
        check_topic(topic)?;
        if queue.is_empty() || queue.len() > 255 || !queue.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(Error::invalid(format!("queue name {queue:?}: 1 to 255 printable ASCII bytes")));
        }
        let (topic, queue) = (topic.as_bytes().to_vec(), Some(queue.as_bytes().to_vec()));
        self.call(|answer| Request::Subscribe { topic, queue, answer }, self.settings.connect_timeout, "subscribe")
    }

    /// Acknowledges a queue delivery (`explicit_ack`): the broker forgets
    /// it. Without waiting; a message with no delivery id (not from a
    /// queue) is ignored. An acknowledgement lost with the link only means
    /// the message comes again (at least once). Errors: Closed.
    pub fn ack(&self, message: &Message) -> Result<(), Error> {
        self.ack_delivery(message.delivery())
    }

    /// [`ack`](Connector::ack) by delivery id.
    pub(crate) fn ack_delivery(&self, delivery: Option<u64>) -> Result<(), Error> {
        self.check_open()?;
        match delivery {
            Some(delivery) => self.shared.push(Request::Ack { deliveries: vec![delivery] }),
            None => Ok(()),
        }
    }

    /// Gives up one hold of `topic`; the last one unsubscribes and waits for
    /// the broker's OK (bounded like [`subscribe`](Connector::subscribe)).
    /// OK at once for a topic still held by others, for one not held, and
    /// while the link is down (the next session will not have it).
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
        self.publish_with_ttl(topic, headers, body, None)
    }

    /// [`publish`](Connector::publish) with a time-to-live: the message is
    /// never sent once `ttl` has passed since this call (it is dropped
    /// from the send queue, counted in [`Stats::expired`] and logged), and
    /// goes out with the time left in `EXPIRES-IN`, after which mc0d never
    /// delivers it from a queue. InvalidArgument: a ttl of 0 or over 30 days.
    pub fn publish_with_ttl(
        &self,
        topic: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.check_open()?;
        if let Some(ttl) = ttl {
            let ms = ttl.as_millis();
            if ms == 0 || ms > u128::from(*crate::protocol::EXPIRES_IN_RANGE_MS.end()) {
                return Err(Error::invalid(format!("ttl of {ms} ms: 1 ms to 30 days")));
            }
        }
        check_topic(topic)?;
        let limits = Limits::default();
        // TOPIC and ID take two of the header slots.
        if headers.len() + 2 > limits.max_headers {
            return Err(Error::invalid(format!(
                "{} headers, over the limit of {}",
                headers.len(),
                limits.max_headers - 2
            )));
        }
        for (name, value) in headers {
            if !name.starts_with("X-") || name.len() < 3 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::invalid(format!(
                    "header name {name:?}: must start with \"X-\" and be printable ASCII (other names are reserved)"
                )));
            }
            if value.len() > limits.max_frame_size {
                return Err(Error::invalid(format!("header {name} is {} bytes, over the limit", value.len())));
            }
        }
        if body.len() > limits.max_frame_size {
            return Err(Error::invalid(format!(
                "body is {} bytes, over the limit of {}",
                body.len(),
                limits.max_frame_size
            )));
        }
        let limit = self.settings.send_queue;
        if !self.shared.counters.reserve_publish(limit) {
            return Err(Error::new(
                ErrorKind::QueueFull,
                format!("{limit} publishes already queued (send_queue); the broker is unreachable or slow"),
            ));
        }
        let publish = Publish {
            topic: topic.as_bytes().to_vec(),
            headers: headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect(),
            body: body.to_vec(),
            expires: ttl.map(|ttl| Instant::now() + ttl),
        };
        self.shared.push(Request::Publish(publish)).map_err(|e| {
            self.shared.counters.release_publishes(1);
            e
        })
    }

    /// Waits until every publish made before this call has been acknowledged
    /// by the broker (or dropped, see [`Stats::publishes_dropped`]). Timeout
    /// after `timeout` (`Duration::MAX`: no limit; close() still ends it).
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.call(|answer| Request::Flush { answer }, timeout, "flush")
    }

    /// The next received message, waiting at most `timeout`
    /// (`Duration::MAX`: until a message arrives or the connector is
    /// closed). NOOPs and acknowledgements never show up here. Errors:
    /// Timeout, Closed (also when another thread closes the connector while
    /// this one waits).
    pub fn receive(&self, timeout: Duration) -> Result<Message, Error> {
        if let Some(e) = self.forked() {
            return Err(e);
        }
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_future);
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if inbox.closed {
                return Err(Error::closed());
            }
            if let Some(message) = inbox.messages.pop_front() {
                drop(inbox);
                if !self.settings.explicit_ack {
                    if let Some(delivery) = message.delivery() {
                        // Closed: the link is gone and the broker takes it back anyway.
                        let _ = self.shared.push(Request::Ack { deliveries: vec![delivery] });
                    }
                }
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
        self.shared.counters.snapshot()
    }

    /// The last connection-level error (failed connect, lost link, refused
    /// key, failed handshake), if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.shared.counters.last_error()
    }

    /// [`stats`](Connector::stats) and [`last_error`](Connector::last_error)
    /// as one JSON object (see [`Stats::to_json`]).
    pub fn stats_json(&self) -> serde_json::Value {
        let stats = self.stats();
        let mut json = stats.to_json(self.last_error().as_ref());
        json["broker"] = self.settings.brokers[stats.broker].name().into();
        json
    }

    /// Closes the connection: wakes every thread blocked in receive (they get
    /// Closed), sends the queued publishes and DISCONNECT and waits for its
    /// OK (at most `close_timeout`), then stops the engine thread. Idempotent
    /// and callable from any thread; later calls on the handle fail with
    /// Closed. In a child process after fork() it only marks the handle
    /// closed (the engine thread lives in the parent).
    pub fn close(&self) -> Result<(), Error> {
        self.shared.closing.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = thread else { return Ok(()) };
        if self.forked().is_some() {
            // Not a thread of this process: never join or detach it.
            std::mem::forget(thread);
            return Ok(());
        }
        self.shared.close_inbox();
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

/// The protocol's topic rule, plus ours: libmc0 never sends an empty topic.
fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        return Err(Error::invalid("empty topic"));
    }
    protocol::check_topic(topic.as_bytes(), &Limits::default()).map_err(|e| Error::invalid(e.to_string()))
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
}
