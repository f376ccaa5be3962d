//! Test helpers shared by the integration tests: run the real `mc0d` on a
//! free loopback port with fresh CURVE keys, and talk to it through plain
//! DEALER sockets speaking raw frames.
//!
//! Use from a test file with `mod common;`. Every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mc0::keys::{Key, KeyPair};
use mc0::protocol::{Command, Limits, Reply};

/// Generous bound for anything that should happen "soon" on a loaded CI box.
pub const WAIT: Duration = Duration::from_secs(10);

/// A port nothing listens on right now (bind :0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("mc0-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a fresh keypair as `dir/name.{public,private}`.
pub fn write_keys(dir: &Path, name: &str) -> (KeyPair, PathBuf, PathBuf) {
    let pair = KeyPair::generate().expect("generate keypair");
    let (public, private) = mc0::keys::write_keypair(dir.join(name), &pair, true).expect("write keypair");
    (pair, public, private)
}

/// Collected stderr of a child, line by line, with a way to wait for a line.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<(Mutex<String>, Condvar)>);

impl LogBuf {
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().clone()
    }
    fn push(&self, line: &str) {
        let mut text = self.0 .0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
        self.0 .1.notify_all();
    }
    /// Waits until the log holds a line for which `pred` is true; returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.0 .0.lock().unwrap();
        loop {
            if let Some(line) = text.lines().find(|l| pred(l)) {
                return Some(line.to_string());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            text = self.0 .1.wait_timeout(text, left).unwrap().0;
        }
    }
}

/// A running `mc0d`; killed (and reaped) on drop, also when a test panics.
pub struct Mc0d {
    child: Option<Child>,
    pub port: u16,
    /// The server's public key (None with --no-curve).
    pub server_public: Option<Key>,
    /// The file holding it, as nodes are configured with.
    pub server_public_file: Option<PathBuf>,
    pub log: LogBuf,
    /// Holds the key files; removed on drop.
    pub dir: Option<TempDir>,
    /// The keypair [`client`](Mc0d::client) uses (a fresh one each time
    /// when None): a broker with an allowlist only admits listed keys.
    pub client_key: Option<KeyPair>,
}

pub struct Mc0dOptions {
    pub curve: bool,
    pub args: Vec<String>,
    /// Wait for the broker to answer a CONNECT before returning.
    pub wait_ready: bool,
    /// See [`Mc0d::client_key`].
    pub client_key: Option<KeyPair>,
}

impl Default for Mc0dOptions {
    fn default() -> Self {
        Mc0dOptions { curve: true, args: vec![], wait_ready: true, client_key: None }
    }
}

impl Mc0d {
    /// A CURVE broker on a free loopback port, ready to serve.
    pub fn start() -> Mc0d {
        Mc0d::start_with(Mc0dOptions::default())
    }

    /// Like [`start`](Mc0d::start) with extra command-line arguments.
    pub fn start_args(args: &[&str]) -> Mc0d {
        Mc0d::start_with(Mc0dOptions { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() })
    }

    pub fn start_with(options: Mc0dOptions) -> Mc0d {
        let dir = TempDir::new("mc0d");
        let keys = options.curve.then(|| write_keys(dir.path(), "broker"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let mut cmd = Process::new(env!("CARGO_BIN_EXE_mc0d"));
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
            match &keys {
                Some((_, _, private)) => cmd.arg("--curve-private-key").arg(private),
                None => cmd.arg("--no-curve"),
            };
            cmd.args(&options.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn mc0d");
            let log = LogBuf::default();
            let stderr = child.stderr.take().unwrap();
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    match line {
                        Ok(line) => sink.push(&line),
                        Err(_) => break,
                    }
                }
            });
            let mut broker = Mc0d {
                child: Some(child),
                port,
                server_public: keys.as_ref().map(|(pair, _, _)| pair.public),
                server_public_file: keys.as_ref().map(|(_, public, _)| public.clone()),
                log,
                dir: None,
                client_key: options.client_key.clone(),
            };
            if !options.wait_ready {
                broker.dir = Some(dir);
                return broker;
            }
            // The port was free a moment ago, but another test may have
            // taken it since (even as the source port of a connection).
            let listening = broker.log.wait_for(WAIT, |l| l.contains("listening on") || l.contains("cannot bind"));
            if attempt < 5 && listening.as_deref().is_some_and(|l| l.contains("Address already in use")) {
                continue;
            }
            broker.dir = Some(dir);
            broker.wait_ready();
            return broker;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// A DEALER connected to this broker, with [`client_key`](Mc0d::client_key)
    /// or a fresh client keypair.
    pub fn client(&self, ctx: &zmq::Context) -> Client {
        match &self.client_key {
            Some(pair) => self.client_as(ctx, pair, None),
            None => Client::connect(ctx, &self.endpoint(), self.server_public.as_ref(), None),
        }
    }

    /// Like [`client`](Mc0d::client) with a chosen routing id.
    pub fn client_with_id(&self, ctx: &zmq::Context, id: &[u8]) -> Client {
        match &self.client_key {
            Some(pair) => self.client_as(ctx, pair, Some(id)),
            None => Client::connect(ctx, &self.endpoint(), self.server_public.as_ref(), Some(id)),
        }
    }

    /// A DEALER using the client keypair `pair`.
    pub fn client_as(&self, ctx: &zmq::Context, pair: &KeyPair, id: Option<&[u8]>) -> Client {
        let server = self.server_public.expect("a CURVE broker");
        Client::connect_keyed(ctx, &self.endpoint(), &server, pair, id, |_| {})
    }

    /// Sends `signal` to the broker (it keeps running).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Retries a CONNECT with ID until the broker acknowledges it.
    fn wait_ready(&mut self) {
        let ctx = zmq::Context::new();
        let probe = self.client(&ctx);
        let deadline = Instant::now() + WAIT;
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                panic!("mc0d exited early with {status}; stderr:\n{}", self.log.text());
            }
            attempt += 1;
            let id = format!("ready-{attempt}");
            let _ = probe
                .try_send(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(id.as_bytes()) }.to_frames());
            let until = Instant::now() + Duration::from_millis(250);
            while let Some(frames) = probe.recv_until(until) {
                if let Ok(Reply::Ok { .. }) = Reply::parse(&frames, &Limits::default()) {
                    probe.send_command(&Command::Disconnect { id: None });
                    return;
                }
            }
        }
        panic!("mc0d not ready within {WAIT:?}; stderr:\n{}", self.log.text());
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn stop_with(&mut self, signal: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        self.wait_exit(timeout)
    }

    /// Waits (bounded) for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Mc0d {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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
        let socket = ctx.socket(zmq::DEALER).expect("DEALER");
        configure(&socket);
        socket.set_linger(0).unwrap();
        if let Some(id) = identity {
            socket.set_identity(id).unwrap();
        }
        if let Some(server) = server_key {
            let pair = KeyPair::generate().unwrap();
            socket.set_curve_serverkey(server).unwrap();
            socket.set_curve_publickey(&pair.public).unwrap();
            socket.set_curve_secretkey(&pair.secret).unwrap();
        }
        socket.connect(endpoint).expect("connect");
        Client { socket }
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
        let socket = ctx.socket(zmq::DEALER).expect("DEALER");
        configure(&socket);
        socket.set_linger(0).unwrap();
        if let Some(id) = identity {
            socket.set_identity(id).unwrap();
        }
        socket.set_curve_serverkey(server_key).unwrap();
        socket.set_curve_publickey(&pair.public).unwrap();
        socket.set_curve_secretkey(&pair.secret).unwrap();
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
    /// Every header but TOPIC, in arrival order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<Vec<u8>>,
}

impl Message {
    /// Parses `frames` as a MESSAGE, panicking on anything else.
    pub fn from_frames(frames: &[Vec<u8>]) -> Message {
        match Reply::parse(frames, &Limits::default()) {
            Ok(Reply::Message { topic, headers, body }) => Message {
                topic: topic.to_vec(),
                headers: headers.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                body: body.iter().map(|b| b.to_vec()).collect(),
            },
            other => panic!("expected MESSAGE, got {other:?} ({})", show(frames)),
        }
    }
}

impl Client {
    /// Waits (bounded by [`WAIT`]) for the next MESSAGE, skipping NOOPs.
    pub fn expect_message(&self) -> Message {
        let frames = self.recv_non_noop(WAIT).unwrap_or_else(|| panic!("no MESSAGE within {WAIT:?}"));
        Message::from_frames(&frames)
    }
}

/// Frames for a panic message.
pub fn show(frames: &[Vec<u8>]) -> String {
    frames.iter().map(|f| format!("\"{}\"", f.escape_ascii())).collect::<Vec<_>>().join(" ")
}

/// Raises this process's soft open-file limit to the hard limit (tests that
/// open thousands of sockets); returns the new soft limit.
pub fn raise_fd_limit() -> libc::rlim_t {
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

/// Runs `mc0d` with `args` to completion (killed after `timeout`); returns
/// (exit status, stdout, stderr). For CLI tests of options that exit.
pub fn run_mc0d(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Process::new(env!("CARGO_BIN_EXE_mc0d"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mc0d");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait mc0d") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mc0d {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Borrowed frames for a panic message.
pub fn show_refs(frames: &[&[u8]]) -> String {
    let frames: Vec<String> = frames.iter().take(8).map(|f| format!("\"{}\"", f.escape_ascii())).collect();
    frames.join(" ")
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

/// Writes `dir/name.public` holding `pair`'s public key, as an allowlist
/// directory entry.
pub fn authorize(dir: &Path, name: &str, pair: &KeyPair) -> PathBuf {
    let path = dir.join(format!("{name}.public"));
    std::fs::write(&path, format!("{}\n", mc0::keys::key_to_z85(&pair.public))).expect("write public key");
    path
}
