//! The transport seam: what the engine needs from a connection to the
//! broker (open one, send and receive frames without blocking, learn when
//! a session with the broker starts, ends or is refused), and its ZeroMQ
//! implementation, a DEALER socket plus its socket monitor. The session
//! (`session.rs`) never sees a socket; the engine moves frames and events
//! between the two.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::config::Settings;
use super::logging::clog;
use super::Error;
use crate::log::Level;

/// What the transport reports about the connection besides frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A session with a broker began (ZMTP/CURVE handshake done): it may
    /// know nothing of us, so CONNECT goes out at once.
    Up,
    /// The connection closed (the broker stopped, crashed or restarted; or
    /// an attempt failed). The transport reconnects by itself.
    Down,
    /// The broker refused our key during the handshake (ZAP status).
    KeyRefused { zap_status: u32 },
    /// The handshake failed otherwise (e.g. one side has CURVE, the other
    /// not); the transport does not retry this by itself.
    HandshakeFailed { code: u32 },
    /// A TCP connection attempt was refused or timed out; the transport
    /// retries by itself (with a pool the session moves on instead).
    Refused,
}

pub(crate) enum SendError {
    /// Not now (no session, or the socket is full): the frames come back.
    WouldBlock(Vec<Vec<u8>>),
    Fatal(Error),
}

/// What a wait saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Readiness {
    /// The wake-up descriptor is readable: requests are queued.
    pub woken: bool,
    /// Frames can be read.
    pub readable: bool,
    /// Events can be read.
    pub events: bool,
}

pub(crate) trait Transport {
    /// Starts a new connection attempt on a fresh socket to `broker` (an
    /// index into `Settings::brokers`); any previous socket is closed
    /// first. Returns the routing id it uses.
    fn open(&mut self, broker: usize) -> Result<String, Error>;
    /// Closes the socket: nothing sent and unread on it survives.
    fn close(&mut self);
    fn send(&mut self, frames: Vec<Vec<u8>>) -> Result<(), SendError>;
    /// The next message, if one has arrived.
    fn recv(&mut self) -> Result<Option<Vec<Vec<u8>>>, Error>;
    /// The next event, if one has arrived.
    fn next_event(&mut self) -> Option<Event>;
    /// Makes readable what arrived before a [`Event::Down`], so it is
    /// handled as part of the session that ended.
    fn settle(&mut self);
    /// Sleeps until `wake_fd` or the connection has something, or the
    /// timeout passes; `writable`: also wake when sending can resume.
    fn wait(&mut self, wake_fd: RawFd, writable: bool, timeout: Duration) -> Readiness;
}

/// The `<n>` of routing ids: unique per socket within the process.
static SOCKET_COUNTER: AtomicU64 = AtomicU64::new(0);

/// libzmq's first TCP reconnect interval (`ZMQ_RECONNECT_IVL`, plus up to
/// as much jitter); it doubles per refused attempt up to [`TCP_RETRY_MAX`].
const TCP_RETRY_BASE: Duration = Duration::from_millis(100);

/// Cap of libzmq's TCP reconnect interval (`ZMQ_RECONNECT_IVL_MAX`, or
/// `reconnect_max` if smaller). A broker that comes back is reached at most
/// this + [`TCP_RETRY_BASE`] (jitter) later, however long it was away; then
/// one CURVE handshake and two round trips (CONNECT, SUB) and every
/// subscription is back: about 1.2 s at worst on a LAN. The price: while the
/// broker is down each node tries once a second (a refused TCP connection).
const TCP_RETRY_MAX: Duration = Duration::from_secs(1);

/// A DEALER socket and a PAIR connected to its monitor, owned by the
/// engine thread (a `zmq::Socket` is not `Sync`; one owner needs no lock).
pub(crate) struct ZmqTransport {
    settings: Arc<Settings>,
    ctx: zmq::Context,
    socket: Option<zmq::Socket>,
    monitor: Option<zmq::Socket>,
    /// Per broker: its host name has resolved once, so later sockets leave
    /// resolving to libzmq, which follows DNS changes.
    resolved: Vec<bool>,
}

impl ZmqTransport {
    pub fn new(settings: Arc<Settings>) -> ZmqTransport {
        let resolved = vec![false; settings.brokers.len()];
        ZmqTransport { settings, ctx: zmq::Context::new(), socket: None, monitor: None, resolved }
    }

    fn open_socket(&mut self, broker: usize) -> Result<String, Error> {
        let n = SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        // The random word keeps the id from being guessed: with CURVE, mc0d
        // lets no other connection take an id while it is in use, so a
        // guessed one could be taken first.
        let routing_id = format!("{} {} {} {}", self.settings.identity, std::process::id(), n, nonce());
        let s = &self.settings;
        let b = &s.brokers[broker];
        let socket = self.ctx.socket(zmq::DEALER).map_err(|e| Error::zmq("cannot create a DEALER socket", e))?;
        let opt = |what: &str, r: zmq::Result<()>| r.map_err(|e| Error::zmq(what, e));
        opt("set ZMQ_LINGER", socket.set_linger(0))?;
        opt("set ZMQ_ROUTING_ID", socket.set_identity(routing_id.as_bytes()))?;
        opt("set ZMQ_RCVHWM", socket.set_rcvhwm(s.receive_queue.min(i32::MAX as usize) as i32))?;
        // Nothing waits in libzmq for a connection that is not there: a send
        // without a ZMTP session fails (EAGAIN) and stays in our queue, and
        // what was queued in a session that is lost is discarded with it
        // rather than sent to the next broker ahead of our CONNECT.
        opt("set ZMQ_IMMEDIATE", socket.set_immediate(true))?;
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128) as i32;
        opt("set ZMQ_RECONNECT_IVL", socket.set_reconnect_ivl(ms(TCP_RETRY_BASE)))?;
        opt("set ZMQ_RECONNECT_IVL_MAX", socket.set_reconnect_ivl_max(ms(TCP_RETRY_MAX.min(s.reconnect_max))))?;
        // A broker host that swallows SYNs is retried like a refused one.
        opt("set ZMQ_CONNECT_TIMEOUT", socket.set_connect_timeout(ms(s.connect_timeout).max(1)))?;
        if b.ipv6 {
            opt("set ZMQ_IPV6", socket.set_ipv6(true))?;
        }
        if let (Some(keys), Some(server)) = (&s.curve, &b.server_key) {
            opt("set ZMQ_CURVE_SERVERKEY", socket.set_curve_serverkey(server))?;
            opt("set ZMQ_CURVE_PUBLICKEY", socket.set_curve_publickey(&keys.public))?;
            opt("set ZMQ_CURVE_SECRETKEY", socket.set_curve_secretkey(&keys.secret))?;
        }
        // Before connect, so the first handshake is seen too.
        let monitor_endpoint = format!("inproc://mc0-monitor-{n}");
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw()
            | zmq::SocketEvent::CONNECT_RETRIED.to_raw();
        opt("start the socket monitor", socket.monitor(&monitor_endpoint, i32::from(events)))?;
        let monitor = self.ctx.socket(zmq::PAIR).map_err(|e| Error::zmq("cannot create the monitor socket", e))?;
        opt("set ZMQ_LINGER", monitor.set_linger(0))?;
        opt("connect the socket monitor", monitor.connect(&monitor_endpoint))?;
        socket.connect(&b.endpoint).map_err(|e| Error::zmq(&format!("cannot connect to {}", b.endpoint), e))?;
        clog!(Level::Debug, "mc0 connector {routing_id}: socket connecting to {}", b.endpoint);
        self.socket = Some(socket);
        self.monitor = Some(monitor);
        Ok(routing_id)
    }
}

impl Drop for ZmqTransport {
    fn drop(&mut self) {
        // The same order as between sockets: the context is terminated
        // after, which waits for the I/O thread.
        self.close();
    }
}

impl Transport for ZmqTransport {
    fn open(&mut self, broker: usize) -> Result<String, Error> {
        self.close();
        // A name that does not resolve would only make libzmq retry in the
        // background; say so at once instead.
        if !self.resolved[broker] {
            self.settings.brokers[broker].check_host_resolves()?;
            self.resolved[broker] = true;
        }
        self.open_socket(broker)
    }

    fn close(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            stop_monitor(&mut socket);
        }
        // Linger is 0: closing never blocks.
        self.monitor = None;
    }

    fn send(&mut self, frames: Vec<Vec<u8>>) -> Result<(), SendError> {
        let Some(socket) = &self.socket else { return Err(SendError::WouldBlock(frames)) };
        // The first frame (always the empty delimiter) is sent as a copy, so
        // the frames come back intact when the socket is at its high-water
        // mark; ZeroMQ accepts the remaining parts once the first is in.
        let last = frames.len() - 1;
        match socket.send(&frames[0][..], zmq::DONTWAIT | if last > 0 { zmq::SNDMORE } else { 0 }) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => return Err(SendError::WouldBlock(frames)),
            Err(e) => return Err(SendError::Fatal(Error::zmq("send failed", e))),
        }
        for (i, frame) in frames.into_iter().enumerate().skip(1) {
            let flags = if i < last { zmq::SNDMORE } else { 0 };
            socket.send(frame, flags).map_err(|e| SendError::Fatal(Error::zmq("send failed", e)))?;
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Vec<Vec<u8>>>, Error> {
        let Some(socket) = &self.socket else { return Ok(None) };
        match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => Ok(Some(frames)),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(Error::zmq("receive failed", e)),
        }
    }

    fn next_event(&mut self) -> Option<Event> {
        loop {
            let frames = self.monitor.as_ref()?.recv_multipart(zmq::DONTWAIT).ok()?;
            // Frame 0: event (u16) and value (u32), native byte order.
            let Some(head) = frames.first().filter(|f| f.len() >= 6) else { continue };
            let event = u16::from_ne_bytes([head[0], head[1]]);
            let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
            return Some(match zmq::SocketEvent::from_raw(event) {
                zmq::SocketEvent::HANDSHAKE_SUCCEEDED => Event::Up,
                zmq::SocketEvent::DISCONNECTED => Event::Down,
                zmq::SocketEvent::HANDSHAKE_FAILED_AUTH => Event::KeyRefused { zap_status: value },
                zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL => Event::HandshakeFailed { code: value },
                zmq::SocketEvent::CONNECT_RETRIED => Event::Refused,
                _ => continue,
            });
        }
    }

    fn settle(&mut self) {
        if let Some(socket) = &self.socket {
            // Processes libzmq's pending commands, so recv sees them.
            let _ = socket.get_events();
        }
    }

    fn wait(&mut self, wake_fd: RawFd, writable: bool, timeout: Duration) -> Readiness {
        let mut items = Vec::with_capacity(3);
        items.push(zmq::PollItem::from_fd(wake_fd, zmq::POLLIN));
        if let Some(socket) = &self.socket {
            items.push(socket.as_poll_item(if writable { zmq::POLLIN | zmq::POLLOUT } else { zmq::POLLIN }));
        }
        if let Some(monitor) = &self.monitor {
            items.push(monitor.as_poll_item(zmq::POLLIN));
        }
        // Rounded up so the loop does not wake a hair early and spin.
        let ms = ((timeout.as_micros() + 999) / 1000).min(i64::MAX as u128) as i64;
        match zmq::poll(&mut items, ms) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => return Readiness::default(),
            Err(e) => {
                // Should not happen; avoid spinning if it does.
                clog!(Level::Error, "mc0 connector: zmq_poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                return Readiness::default();
            }
        }
        let has_socket = self.socket.is_some();
        Readiness {
            woken: items[0].is_readable(),
            readable: has_socket && items[1].is_readable(),
            events: self.monitor.is_some() && items[items.len() - 1].is_readable(),
        }
    }
}

extern "C" {
    // libzmq's own, not wrapped by the zmq crate for stopping a monitor
    // (a null endpoint); libzmq is linked already.
    fn zmq_socket_monitor(socket: *mut libc::c_void, endpoint: *const libc::c_char, events: libc::c_int)
        -> libc::c_int;
}

/// Stops the socket's monitor before the socket and our end of the monitor
/// are closed. libzmq sends monitor events from its I/O thread with a
/// blocking send: an event of the closing socket (its connecter retrying
/// the dead broker, say) sent after our end of the monitor is gone blocks
/// that thread for good, and with it every later socket of the context,
/// which then never even starts its TCP connection (issue 13: a few of
/// thousands of connectors never came back from a failover). Stopping the
/// monitor first (synchronous, under libzmq's monitor lock) means no event
/// is sent after it.
fn stop_monitor(socket: &mut zmq::Socket) {
    // SAFETY: the socket is open and owned by this thread; a null endpoint
    // only stops the monitor.
    let rc = unsafe { zmq_socket_monitor(socket.as_mut_ptr(), std::ptr::null(), 0) };
    if rc != 0 {
        clog!(Level::Warn, "mc0 connector: cannot stop the socket monitor: {}", std::io::Error::last_os_error());
    }
}

/// 64 random bits as 16 hex digits, from the kernel.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the remaining length into the buffer.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
        if n <= 0 {
            // Only EINTR is possible here (the kernel has had its entropy
            // since boot); a failure leaves the rest as it is.
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
            continue;
        }
        filled += n as usize;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::TcpListener;
    use std::time::Instant;

    /// Waits (at most 5 s) for the transport's next event.
    fn next_event_within(t: &mut ZmqTransport, wake: &super::super::wake::Waker) -> Option<Event> {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Some(event) = t.next_event() {
                return Some(event);
            }
            t.wait(wake.fd(), false, Duration::from_millis(100));
        }
        None
    }

    /// Issue 13: a connector failing over from a broker that refuses TCP
    /// (its socket retrying it, with monitor events on the way) must reach
    /// the next broker every time. Closing our end of the monitor before
    /// libzmq stopped sending to it left the context's I/O thread blocked
    /// in that send: the next socket never opened a TCP connection.
    #[test]
    fn failing_over_from_a_refusing_broker_always_reaches_the_next() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        live.set_nonblocking(true).unwrap();
        let live_port = live.local_addr().unwrap().port();
        let hosts = format!("127.0.0.1:{dead_port},127.0.0.1:{live_port}");
        let config = crate::connector::Config::from_pairs([
            ("broker.host", hosts.as_str()),
            ("curve", "false"),
            ("identity", "failover"),
        ])
        .unwrap();
        let mut t = ZmqTransport::new(Arc::new(config.resolve().unwrap()));
        let wake = super::super::wake::Waker::new().unwrap();
        for round in 0..30 {
            t.open(0).unwrap();
            assert_eq!(next_event_within(&mut t, &wake), Some(Event::Refused), "round {round}: no refusal");
            // Close while libzmq retries (every 100 ms or so, with jitter).
            std::thread::sleep(Duration::from_millis(90 + (round % 8) * 5));
            t.open(1).unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match live.accept() {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
                assert!(Instant::now() < end, "round {round}: the new socket never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn nonces_are_16_hex_digits_and_differ() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
