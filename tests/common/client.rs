//! Raw DEALER clients of the broker, and handshake monitors.

use std::time::{Duration, Instant};

use mc0::keys::{Key, KeyPair};
use mc0::protocol::{Command, Limits, Reply};

use super::{show, WAIT};

/// A raw DEALER client: sends and receives whole frame lists (delimiter
/// included), so tests can also send malformed shapes.
pub struct Client {
    pub socket: zmq::Socket,
}

impl Client {
    pub fn connect(ctx: &zmq::Context, endpoint: &str, server_key: Option<&Key>, identity: Option<&[u8]>) -> Client {
        Client::connect_with(ctx, endpoint, server_key, identity, |_| {})
    }

    /// Like [`connect`](Client::connect), with `configure` run on the socket
    /// before it connects (options such as buffers only apply then).
    pub fn connect_with(
        ctx: &zmq::Context,
        endpoint: &str,
        server_key: Option<&Key>,
        identity: Option<&[u8]>,
        configure: impl FnOnce(&zmq::Socket),
    ) -> Client {
        match server_key {
            Some(server) => {
                let pair = KeyPair::generate().unwrap();
                Client::dealer(ctx, endpoint, Some((server, &pair)), identity, configure)
            }
            None => Client::dealer(ctx, endpoint, None, identity, configure),
        }
    }

    /// A DEALER with the client keypair `pair`; `configure` runs before it
    /// connects (a socket monitor must be set up then to see the handshake).
    pub fn connect_keyed(
        ctx: &zmq::Context,
        endpoint: &str,
        server_key: &Key,
        pair: &KeyPair,
        identity: Option<&[u8]>,
        configure: impl FnOnce(&zmq::Socket),
    ) -> Client {
        Client::dealer(ctx, endpoint, Some((server_key, pair)), identity, configure)
    }

    fn dealer(
        ctx: &zmq::Context,
        endpoint: &str,
        curve: Option<(&Key, &KeyPair)>,
        identity: Option<&[u8]>,
        configure: impl FnOnce(&zmq::Socket),
    ) -> Client {
        let socket = ctx.socket(zmq::DEALER).expect("DEALER");
        configure(&socket);
        socket.set_linger(0).unwrap();
        if let Some(id) = identity {
            socket.set_identity(id).unwrap();
        }
        if let Some((server, pair)) = curve {
            socket.set_curve_serverkey(server).unwrap();
            socket.set_curve_publickey(&pair.public).unwrap();
            socket.set_curve_secretkey(&pair.secret).unwrap();
        }
        socket.connect(endpoint).expect("connect");
        Client { socket }
    }

    /// Sends `frames` as one message, waiting (bounded) for a connection.
    pub fn send<F: AsRef<[u8]>>(&self, frames: &[F]) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_send(frames) {
                Ok(()) => return,
                Err(zmq::Error::EAGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    pub fn try_send<F: AsRef<[u8]>>(&self, frames: &[F]) -> Result<(), zmq::Error> {
        self.socket.send_multipart(frames.iter().map(|f| f.as_ref()), zmq::DONTWAIT)
    }

    pub fn send_command(&self, command: &Command<'_>) {
        self.send(&command.to_frames());
    }

    /// Next message, or None after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        self.recv_until(Instant::now() + timeout)
    }

    pub fn recv_until(&self, deadline: Instant) -> Option<Vec<Vec<u8>>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.socket.poll(zmq::POLLIN, left.as_millis() as i64) {
                Ok(n) if n > 0 => return Some(self.socket.recv_multipart(0).expect("recv")),
                Ok(_) => return None,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => panic!("poll failed: {e}"),
            }
        }
    }

    /// Next message that is not a broker heartbeat NOOP.
    pub fn recv_non_noop(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let frames = self.recv_until(deadline)?;
            if !matches!(Reply::parse(&frames, &Limits::default()), Ok(Reply::Noop)) {
                return Some(frames);
            }
        }
    }

    /// Waits for `OK ID id`, panicking on anything else but NOOP.
    pub fn expect_ok(&self, id: &str) {
        let frames = self.recv_non_noop(WAIT).unwrap_or_else(|| panic!("no reply for ID {id} within {WAIT:?}"));
        match Reply::parse(&frames, &Limits::default()) {
            Ok(Reply::Ok { id: got }) if got == id.as_bytes() => {}
            other => panic!("expected OK ID {id}, got {other:?} ({})", show(&frames)),
        }
    }

    /// Waits for `ERROR` and returns (message, id).
    pub fn expect_error(&self) -> (String, Option<String>) {
        let frames = self.recv_non_noop(WAIT).unwrap_or_else(|| panic!("no ERROR within {WAIT:?}"));
        match Reply::parse(&frames, &Limits::default()) {
            Ok(Reply::Error { message, id }) => {
                (String::from_utf8_lossy(message).into_owned(), id.map(|i| String::from_utf8_lossy(i).into_owned()))
            }
            other => panic!("expected ERROR, got {other:?} ({})", show(&frames)),
        }
    }

    /// Waits (bounded by [`WAIT`]) for the next MESSAGE, skipping NOOPs.
    pub fn expect_message(&self) -> Message {
        let frames = self.recv_non_noop(WAIT).unwrap_or_else(|| panic!("no MESSAGE within {WAIT:?}"));
        Message::from_frames(&frames)
    }

    /// CONNECT with ID and wait for the OK.
    pub fn handshake(&self, ttl_ms: u64) {
        self.send_command(&Command::Connect { version: b"0.3", ttl_ms, id: Some(b"hello") });
        self.expect_ok("hello");
    }

    /// A command with ID, then wait for its OK.
    pub fn call(&self, command: &Command<'_>) {
        let id = String::from_utf8(command.id().expect("command with ID").to_vec()).unwrap();
        self.send_command(command);
        self.expect_ok(&id);
    }
}

/// A received MESSAGE, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Vec<u8>,
    /// Every header but TOPIC and the broker's stamp, in arrival order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<Vec<u8>>,
    /// The broker's `SENDER` stamp (each is expected at most once).
    pub sender: Option<String>,
    /// The broker's `SENDER-KEY` stamp.
    pub sender_key: Option<String>,
}

impl Message {
    /// Parses `frames` as a MESSAGE, panicking on anything else (or on a
    /// stamp header that appears twice).
    pub fn from_frames(frames: &[Vec<u8>]) -> Message {
        let Ok(Reply::Message { topic, headers, body }) = Reply::parse(frames, &Limits::default()) else {
            panic!("expected MESSAGE, got {} ", show(frames));
        };
        let mut m = Message {
            topic: topic.to_vec(),
            headers: Vec::new(),
            body: body.iter().map(|b| b.to_vec()).collect(),
            sender: None,
            sender_key: None,
        };
        for (k, v) in headers {
            let value = String::from_utf8_lossy(v).into_owned();
            let stamp = match k {
                b"SENDER" => &mut m.sender,
                b"SENDER-KEY" => &mut m.sender_key,
                _ => {
                    m.headers.push((k.to_vec(), v.to_vec()));
                    continue;
                }
            };
            assert!(stamp.replace(value).is_none(), "{} twice in {}", k.escape_ascii(), show(frames));
        }
        m
    }
}

/// Handshake events of one socket, through `zmq_socket_monitor`.
pub struct Monitor {
    pair: zmq::Socket,
}

impl Monitor {
    /// Starts monitoring `socket`'s handshakes. Call before `connect`.
    pub fn handshakes(ctx: &zmq::Context, socket: &zmq::Socket) -> Monitor {
        Monitor::events(ctx, socket, 0)
    }

    /// Handshakes and the `extra` events (`ZMQ_EVENT_*` bits).
    pub fn events(ctx: &zmq::Context, socket: &zmq::Socket, extra: u16) -> Monitor {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let endpoint = format!("inproc://monitor-{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
            | extra;
        socket.monitor(&endpoint, events as i32).expect("zmq_socket_monitor");
        let pair = ctx.socket(zmq::PAIR).unwrap();
        pair.set_linger(0).unwrap();
        pair.connect(&endpoint).unwrap();
        Monitor { pair }
    }

    /// The next event and its value (for HANDSHAKE_FAILED_AUTH: the ZAP
    /// status code), or None after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<(zmq::SocketEvent, u32)> {
        if self.pair.poll(zmq::POLLIN, timeout.as_millis() as i64).ok()? == 0 {
            return None;
        }
        let frames = self.pair.recv_multipart(0).ok()?;
        let head = frames.first().filter(|f| f.len() >= 6)?;
        let event = u16::from_le_bytes([head[0], head[1]]);
        let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
        Some((zmq::SocketEvent::from_raw(event), value))
    }
}
