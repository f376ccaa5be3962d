//! The real `mc0d` as a child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mc0::connector::Config;
use mc0::keys::{Key, KeyPair};
use mc0::protocol::{Command, Limits, Reply};

use super::{free_port, write_keys, Client, TempDir, WAIT};

/// The name the allowlist tests list [`Mc0d::client_key`] under.
pub const PROBE: &str = "probe";

/// A routing id for the identity `name`: `"<name> <pid> <n>"`, unique in
/// this process.
pub fn routing_id(name: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{name} {} {}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

/// Collected stderr of a child, line by line, with a way to wait for a line.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<(Mutex<String>, Condvar)>);

impl LogBuf {
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().clone()
    }

    /// Bytes collected so far: a `from` for [`wait_for_after`](LogBuf::wait_for_after).
    pub fn len(&self) -> usize {
        self.0 .0.lock().unwrap().len()
    }

    pub fn push(&self, line: &str) {
        let mut text = self.0 .0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
        self.0 .1.notify_all();
    }

    /// Waits until the log holds a line for which `pred` is true; returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_after(0, timeout, pred)
    }

    /// Like [`wait_for`](LogBuf::wait_for), only for lines after byte `from`.
    pub fn wait_for_after(&self, from: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.0 .0.lock().unwrap();
        loop {
            if let Some(line) = text.get(from..).unwrap_or("").lines().find(|l| pred(l)) {
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
    server_public_file: Option<PathBuf>,
    server_private_file: Option<PathBuf>,
    args: Vec<String>,
    wait_ready: bool,
    /// Its stderr, across restarts.
    pub log: LogBuf,
    /// Holds the key files; removed on drop.
    pub dir: TempDir,
    /// The keypair [`client`](Mc0d::client) uses (a fresh one each time
    /// when None): a broker with an allowlist only admits listed keys, as
    /// the identity they are listed under, which for this key must be
    /// [`PROBE`].
    pub client_key: Option<KeyPair>,
    /// SIGSTOPped by [`pause`](Mc0d::pause).
    stopped: bool,
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

impl Mc0dOptions {
    /// The defaults with `--log-level debug`, so that a failing test's
    /// broker log shows every command the broker saw.
    pub fn debug() -> Mc0dOptions {
        Mc0dOptions { args: vec!["--log-level".into(), "debug".into()], ..Default::default() }
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

    /// Like [`start`](Mc0d::start), logging at debug level.
    pub fn start_debug() -> Mc0d {
        Mc0d::start_with(Mc0dOptions::debug())
    }

    /// A broker whose allowlist is `path` (written by the caller); `probe`
    /// must be listed there as [`PROBE`] (it is used to wait until the
    /// broker serves, and by [`client`](Mc0d::client)).
    pub fn start_allowlist(path: &Path, probe: &KeyPair, extra: &[&str]) -> Mc0d {
        let mut args = vec!["--authorized-keys".to_string(), path.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Mc0d::start_with(Mc0dOptions { args, client_key: Some(probe.clone()), ..Default::default() })
    }

    pub fn start_with(options: Mc0dOptions) -> Mc0d {
        let dir = TempDir::new("mc0d");
        let keys = options.curve.then(|| write_keys(dir.path(), "broker"));
        let mut broker = Mc0d {
            child: None,
            port: 0,
            server_public: keys.as_ref().map(|(pair, _, _)| pair.public),
            server_public_file: keys.as_ref().map(|(_, public, _)| public.clone()),
            server_private_file: keys.map(|(_, _, private)| private),
            args: options.args,
            wait_ready: options.wait_ready,
            log: LogBuf::default(),
            dir,
            client_key: options.client_key,
            stopped: false,
        };
        // The port was free a moment ago, but another test may have taken
        // it since (even as the source port of a connection).
        for _ in 0..5 {
            broker.port = free_port();
            // A fresh log: a test must not see the failed try's lines.
            broker.log = LogBuf::default();
            if broker.spawn() {
                return broker;
            }
        }
        panic!("mc0d found no free port in 5 tries; stderr:\n{}", broker.log.text());
    }

    /// Starts mc0d on `self.port` and, with `wait_ready`, waits until it
    /// serves. False if the port was taken.
    fn spawn(&mut self) -> bool {
        let mut cmd = Process::new(super::bin("mc0d"));
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()]);
        match &self.server_private_file {
            Some(private) => cmd.arg("--curve-private-key").arg(private),
            None => cmd.arg("--no-curve"),
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // After a restart the log holds the previous run's lines too.
        let from = self.log.len();
        let mut child = cmd.spawn().expect("spawn mc0d");
        let stderr = child.stderr.take().unwrap();
        let sink = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => sink.push(&line),
                    Err(_) => break,
                }
            }
        });
        self.child = Some(child);
        if !self.wait_ready {
            return true;
        }
        let listening =
            self.log.wait_for_after(from, WAIT, |l| l.contains("listening on") || l.contains("cannot bind"));
        if listening.as_deref().is_some_and(|l| l.contains("Address already in use")) {
            self.kill();
            return false;
        }
        self.wait_ready();
        true
    }

    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The file holding the server's public key, as nodes are configured with.
    pub fn server_public_file(&self) -> &Path {
        self.server_public_file.as_deref().expect("a CURVE broker")
    }

    /// A DEALER connected to this broker, with [`client_key`](Mc0d::client_key)
    /// or a fresh client keypair.
    pub fn client(&self, ctx: &zmq::Context) -> Client {
        self.dealer(ctx, None)
    }

    /// Like [`client`](Mc0d::client) with a chosen routing id.
    pub fn client_with_id(&self, ctx: &zmq::Context, id: &[u8]) -> Client {
        self.dealer(ctx, Some(id))
    }

    fn dealer(&self, ctx: &zmq::Context, id: Option<&[u8]>) -> Client {
        match (&self.client_key, id) {
            (Some(pair), None) => self.client_named(ctx, pair, PROBE),
            (Some(pair), Some(id)) => self.client_as(ctx, pair, Some(id)),
            (None, _) => Client::connect(ctx, &self.endpoint(), self.server_public.as_ref(), id),
        }
    }

    /// A DEALER using the client keypair `pair`.
    pub fn client_as(&self, ctx: &zmq::Context, pair: &KeyPair, id: Option<&[u8]>) -> Client {
        let server = self.server_public.expect("a CURVE broker");
        Client::connect_keyed(ctx, &self.endpoint(), &server, pair, id, |_| {})
    }

    /// A DEALER using `pair` with a routing id of the identity `name`, as
    /// connectors make them (`"<name> <pid> <n>"`, unique in this process).
    pub fn client_named(&self, ctx: &zmq::Context, pair: &KeyPair, name: &str) -> Client {
        self.client_as(ctx, pair, Some(routing_id(name).as_bytes()))
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

    /// Sends `signal` to the broker (it keeps running, unless the signal
    /// stops it).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn stop_with(&mut self, signal: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        self.signal(signal);
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

    /// SIGSTOP: the process stays, the port stays bound, nothing answers.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.stopped {
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts mc0d again on the same port with the same key and arguments
    /// (retrying while the port is still being released).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + WAIT;
        while !self.spawn() {
            assert!(Instant::now() < deadline, "cannot restart mc0d on port {}; log:\n{}", self.port, self.log.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a client keypair into the broker's temp dir and returns a
    /// connector config for this broker.
    pub fn config(&self, name: &str) -> Config {
        let mut config = Config::new();
        for (k, v) in self.config_pairs(name) {
            config.set(&k, &v).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        config
    }

    /// The same as key/value strings (for the C and Python programs).
    pub fn config_pairs(&self, name: &str) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("broker.host".to_string(), "127.0.0.1".to_string()),
            ("broker.port".to_string(), self.port.to_string()),
            ("identity".to_string(), name.to_string()),
        ];
        match &self.server_public_file {
            Some(server) => {
                let (_, public, private) = write_keys(self.dir.path(), name);
                pairs.push(("curve".into(), "true".into()));
                pairs.push(("broker.public_key".into(), server.display().to_string()));
                pairs.push(("public_key".into(), public.display().to_string()));
                pairs.push(("private_key".into(), private.display().to_string()));
            }
            None => pairs.push(("curve".into(), "false".into())),
        }
        pairs
    }
}

impl Drop for Mc0d {
    fn drop(&mut self) {
        self.kill();
    }
}
