//! The broker's ROUTER socket: its options (see the crate doc for why
//! each), its socket monitor, and the [`Transport`] the engine sends
//! through.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use mc0::log::Level;

use crate::auth::zap;
use crate::config::Config;
use crate::engine::{Conn, Shared, Transport};
use crate::error::BrokerError;
use crate::logger::Logger;
use crate::sockopt::enforce_zap;

const LINGER_MS: i32 = 500;
/// libzmq's `ZMQ_EVENT_HANDSHAKE_FAILED_*` events (no detail, protocol,
/// auth), counted for the metrics.
const HANDSHAKE_FAILED: u16 = 0x0800 | 0x2000 | 0x4000;
/// Where the ROUTER's socket monitor publishes (inproc, on its context).
const MONITOR_ENDPOINT: &str = "inproc://mc0d-monitor";
/// TCP keepalive: probes after this many idle seconds...
const KEEPALIVE_IDLE_SECS: i32 = 60;
/// ...this many seconds apart...
const KEEPALIVE_INTERVAL_SECS: i32 = 10;
/// ...and gives up after this many unanswered ones.
const KEEPALIVE_PROBES: i32 = 3;

/// Where a connection comes from, and the routing id it was last heard as.
#[derive(Debug)]
pub struct Peer {
    rid: Box<[u8]>,
    pub address: Arc<str>,
}

/// The broker's ROUTER socket and, with CURVE, its monitor.
pub struct Router {
    pub(crate) socket: zmq::Socket,
    /// Reports each closed connection (`ZMQ_EVENT_DISCONNECTED`, with its
    /// file descriptor): with CURVE, or with `--metrics` (for `peers`).
    monitor: Option<zmq::Socket>,
    /// Sessions follow their connections (CURVE): closed ones are reported
    /// to the engine. Without CURVE the monitor only keeps `peers` clean.
    report_lost: bool,
    /// With `--metrics`: each connection's peer address (see
    /// [`note_peer`](Router::note_peer)), forgotten when the monitor reports
    /// it closed.
    pub(crate) peers: Option<HashMap<Conn, Peer>>,
    /// Closed connections read off the monitor for the engine and not yet
    /// handed to it (see [`note_peer`](Router::note_peer)).
    pending_lost: Vec<Conn>,
    /// CURVE handshakes that failed, as the monitor reports them.
    pub(crate) handshake_failures: u64,
    /// With `--metrics`: readable when an HTTP request waits for the loop
    /// (see [`Hub::sessions`](crate::metrics::Hub::sessions)); polled with
    /// the ROUTER so the loop wakes at once, drained when it fired.
    wake: Option<UnixStream>,
}

impl Router {
    /// Creates the ROUTER socket on `ctx` with the options the crate doc
    /// explains (and, with CURVE, its monitor), and binds it; returns it
    /// with its endpoint. With CURVE, the ZAP handler must already run.
    pub(crate) fn bind(ctx: &zmq::Context, config: &Config, log: &Logger) -> Result<(Router, String), BrokerError> {
        let err = |what: &str, e: zmq::Error| BrokerError(format!("cannot {what}: {e}"));
        let curve = config.curve_secret_key.is_some();
        let mut socket = ctx.socket(zmq::ROUTER).map_err(|e| err("create the ROUTER socket", e))?;
        socket.set_backlog(config.backlog).map_err(|e| err("set ZMQ_BACKLOG", e))?;
        // See the module doc: with CURVE a routing id stays with its
        // connection.
        socket.set_router_handover(!curve).map_err(|e| err("set ZMQ_ROUTER_HANDOVER", e))?;
        socket.set_router_mandatory(true).map_err(|e| err("set ZMQ_ROUTER_MANDATORY", e))?;
        socket.set_sndhwm(config.sndhwm).map_err(|e| err("set ZMQ_SNDHWM", e))?;
        socket.set_rcvhwm(config.rcvhwm).map_err(|e| err("set ZMQ_RCVHWM", e))?;
        let max_frame = i64::try_from(config.limits.max_frame_size).unwrap_or(i64::MAX);
        socket.set_maxmsgsize(max_frame).map_err(|e| err("set ZMQ_MAXMSGSIZE", e))?;
        socket.set_linger(LINGER_MS).map_err(|e| err("set ZMQ_LINGER", e))?;
        socket.set_tcp_keepalive(1).map_err(|e| err("set ZMQ_TCP_KEEPALIVE", e))?;
        socket.set_tcp_keepalive_idle(KEEPALIVE_IDLE_SECS).map_err(|e| err("set ZMQ_TCP_KEEPALIVE_IDLE", e))?;
        socket.set_tcp_keepalive_intvl(KEEPALIVE_INTERVAL_SECS).map_err(|e| err("set ZMQ_TCP_KEEPALIVE_INTVL", e))?;
        socket.set_tcp_keepalive_cnt(KEEPALIVE_PROBES).map_err(|e| err("set ZMQ_TCP_KEEPALIVE_CNT", e))?;
        let mut monitor = None;
        if let Some(secret) = &config.curve_secret_key {
            socket.set_curve_secretkey(secret).map_err(|e| err("set the CURVE secret key", e))?;
            socket.set_curve_server(true).map_err(|e| err("enable CURVE", e))?;
            socket.set_zap_domain(zap::ZAP_DOMAIN).map_err(|e| err("set ZMQ_ZAP_DOMAIN", e))?;
            if let Err(e) = enforce_zap(&mut socket) {
                // Still closed: messages without an authorized User-Id are
                // refused by the loop (see the module doc).
                log.log(
                    Level::Warn,
                    format_args!(
                        "this libzmq does not support ZMQ_ZAP_ENFORCE_DOMAIN ({e}); \
                         unauthorized messages are refused by the broker itself"
                    ),
                );
            }
        }
        if curve || config.metrics.is_some() {
            // Before binding, so that no connection's end goes unreported.
            let failures = if curve { HANDSHAKE_FAILED } else { 0 };
            let events = zmq::SocketEvent::DISCONNECTED.to_raw() | failures;
            socket.monitor(MONITOR_ENDPOINT, i32::from(events)).map_err(|e| err("start the socket monitor", e))?;
            let pair = ctx.socket(zmq::PAIR).map_err(|e| err("create the monitor socket", e))?;
            // Unbounded: libzmq's I/O thread waits on a full monitor pipe.
            pair.set_rcvhwm(0).map_err(|e| err("set the monitor's ZMQ_RCVHWM", e))?;
            pair.set_linger(0).map_err(|e| err("set the monitor's ZMQ_LINGER", e))?;
            pair.connect(MONITOR_ENDPOINT).map_err(|e| err("connect the socket monitor", e))?;
            monitor = Some(pair);
        }
        let host = if config.bind.contains(':') && !config.bind.starts_with('[') {
            format!("[{}]", config.bind)
        } else {
            config.bind.clone()
        };
        if host.starts_with('[') {
            socket.set_ipv6(true).map_err(|e| err("enable IPv6", e))?;
        }
        let endpoint = format!("tcp://{host}:{}", config.port);
        socket.bind(&endpoint).map_err(|e| BrokerError(format!("cannot bind {endpoint}: {e}")))?;
        let peers = config.metrics.map(|_| HashMap::new());
        Ok((
            Router {
                socket,
                monitor,
                report_lost: curve,
                peers,
                pending_lost: Vec::new(),
                handshake_failures: 0,
                wake: None,
            },
            endpoint,
        ))
    }

    /// With `--metrics`: remembers where `conn`, heard from as the routing
    /// id `rid` (its frame) in the frame `msg`, comes from. A connection
    /// whose number is that of one that closed shows up as a new routing id
    /// on it (or a vacant entry): every close reported so far is taken in
    /// first, since libzmq reports a close before the number can be reused,
    /// so no stale report removes the new entry. Costs a lookup per
    /// message, a system call per new connection; without `--metrics`, one
    /// branch (the frames are only read past it).
    #[inline]
    pub(crate) fn note_peer(&mut self, conn: Conn, rid: &crate::zmsg::Msg, msg: &crate::zmsg::Msg) {
        let Some(peers) = &self.peers else { return };
        let rid: &[u8] = rid.as_ref();
        if peers.get(&conn).is_some_and(|p| *p.rid == *rid) {
            return;
        }
        self.take_monitor_events(true);
        if let (Some(peers), Some(address)) = (&mut self.peers, msg.property(b"Peer-Address\0")) {
            peers.insert(conn, Peer { rid: rid.into(), address: Arc::from(address) });
        }
    }

    /// Reads the monitor's reports: closed connections (forgotten in
    /// `peers`, and kept for the engine with CURVE) and failed handshakes.
    /// With `all`, every report emitted before this call (a system call);
    /// without, those that cost none.
    fn take_monitor_events(&mut self, all: bool) {
        let Some(monitor) = &self.monitor else { return };
        // Reading ZMQ_EVENTS makes libzmq take in the monitor pipe's pending
        // wake-ups at once (a system call; a receive alone looks at them at
        // most a millisecond late): an event emitted before this call is
        // seen.
        if all && !monitor.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
            return;
        }
        // Each event is two frames: event id (u16) and value (u32), then the
        // endpoint.
        while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = frames.first().filter(|f| f.len() >= 6) else { continue };
            let event = u16::from_ne_bytes([head[0], head[1]]);
            if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                let fd = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
                if self.report_lost {
                    self.pending_lost.push(fd as Conn);
                }
                if let Some(peers) = &mut self.peers {
                    peers.remove(&(fd as Conn));
                }
            } else if event & HANDSHAKE_FAILED != 0 {
                self.handshake_failures += 1;
            }
        }
    }

    /// Makes [`poll`](Router::poll) return as soon as `wake` is readable
    /// (non-blocking; the loop drains it).
    pub(crate) fn wake_on(&mut self, wake: UnixStream) {
        self.wake = Some(wake);
    }

    /// Waits up to `timeout_ms` for input on the ROUTER or a wake-up. (The
    /// monitor is read on every wake-up and whenever it matters, see
    /// [`Engine::connections_lost`]; polling it too would cost a system call
    /// per wake-up.)
    pub(crate) fn poll(&mut self, timeout_ms: i64) -> Result<(), zmq::Error> {
        match &self.wake {
            None => self.socket.poll(zmq::POLLIN, timeout_ms).map(drop),
            Some(_) => self.poll_with(&[], &[], timeout_ms),
        }
    }

    /// [`poll`](Router::poll) that also wakes up for input on `others` (the
    /// cluster bridge's and the store thread's PAIRs) and on `fds` (the
    /// queue journal's AIO completions).
    pub(crate) fn poll_with(
        &mut self,
        others: &[&zmq::Socket],
        fds: &[std::os::fd::RawFd],
        timeout_ms: i64,
    ) -> Result<(), zmq::Error> {
        let mut items: Vec<zmq::PollItem<'_>> = std::iter::once(self.socket.as_poll_item(zmq::POLLIN))
            .chain(others.iter().map(|s| s.as_poll_item(zmq::POLLIN)))
            .chain(fds.iter().map(|&fd| zmq::PollItem::from_fd(fd, zmq::POLLIN)))
            .chain(self.wake.as_ref().map(|w| zmq::PollItem::from_fd(w.as_raw_fd(), zmq::POLLIN)))
            .collect();
        zmq::poll(&mut items, timeout_ms)?;
        let woken = self.wake.is_some() && items.last().is_some_and(zmq::PollItem::is_readable);
        drop(items);
        if let (true, Some(wake)) = (woken, &mut self.wake) {
            // Non-blocking: stops at "would block" (or at an error, which
            // leaves it readable for the next poll to try again).
            let mut buf = [0u8; 64];
            while wake.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
        Ok(())
    }
}

impl Router {
    fn send_frames<F: AsRef<[u8]>>(&mut self, rid: &[u8], frames: &[F]) -> Result<(), zmq::Error> {
        // With ROUTER_MANDATORY only the routing-id frame can fail (unknown
        // peer or full pipe); once it is accepted the rest is queued.
        self.socket.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            let more = if i < last { zmq::SNDMORE } else { 0 };
            self.socket.send(frame.as_ref(), more | zmq::DONTWAIT)?;
        }
        Ok(())
    }
}

impl Transport for Router {
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
        self.send_frames(rid, frames)
    }

    fn deliver_parts(&mut self, rid: &[u8], frames: &[&[u8]]) -> Result<(), zmq::Error> {
        self.send_frames(rid, frames)
    }

    fn deliver_shared(&mut self, rid: &[u8], message: &mut Shared) -> Result<(), zmq::Error> {
        self.socket.send(rid, zmq::SNDMORE | zmq::DONTWAIT)?;
        message.send_frames(&mut self.socket)
    }

    fn lost_connections(&mut self, lost: &mut Vec<Conn>, all: bool) {
        // Without CURVE only the peer map waits for these: the loop's pass on
        // its next wake-up will do, no system call before each fan-out.
        self.take_monitor_events(all && self.report_lost);
        lost.append(&mut self.pending_lost);
    }
}
