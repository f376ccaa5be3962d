//! Helpers for the connector tests: a real `mc0d` that can be killed,
//! restarted on the same port with the same key, stopped and continued;
//! client key files; connector configs pointing at it; and the location of
//! the built `libmc0.so` for the C and Python tests.
//!
//! Use with `mod common_connector;`. Every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mc0::config::Config;
use mc0::keys::KeyPair;

/// Generous bound for anything that should happen "soon" on a loaded box.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("mc0-ctest-{tag}-{}-{n}", std::process::id()));
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

/// Writes a fresh keypair as `dir/name.{public,private}`; returns the paths.
pub fn write_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let pair = KeyPair::generate().expect("generate keypair");
    mc0::keys::write_keypair(dir.join(name), &pair, true).expect("write keypair")
}

/// The broker's stderr, collected, with a bounded wait for a line.
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<String>, Condvar)>);

impl Log {
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().clone()
    }
    fn push(&self, line: &str) {
        let mut text = self.0 .0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
        self.0 .1.notify_all();
    }
    /// Waits until a line after byte `from` satisfies `pred`.
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
    pub fn len(&self) -> usize {
        self.0 .0.lock().unwrap().len()
    }
}

/// A running `mc0d` on 127.0.0.1; killed and reaped on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub curve: bool,
    pub dir: TempDir,
    pub public_key: PathBuf,
    private_key: PathBuf,
    pub log: Log,
    stopped: bool,
}

impl Broker {
    /// A CURVE broker on a free port, listening when this returns.
    pub fn start() -> Broker {
        Broker::start_with(true)
    }

    pub fn start_with(curve: bool) -> Broker {
        let dir = TempDir::new("broker");
        let (public_key, private_key) = write_keys(dir.path(), "broker");
        let mut broker =
            Broker { child: None, port: 0, curve, dir, public_key, private_key, log: Log::default(), stopped: false };
        for _ in 0..5 {
            broker.port = free_port();
            if broker.spawn() {
                return broker;
            }
        }
        panic!("mc0d did not start; log:\n{}", broker.log.text());
    }

    /// Starts mc0d on `self.port`; false if the port was taken.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mc0d"));
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--log-level", "debug"]);
        if self.curve {
            cmd.arg("--curve-private-key").arg(&self.private_key);
        } else {
            cmd.arg("--no-curve");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
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
        let from = self.log.len();
        self.child = Some(child);
        let line = self.log.wait_for_after(from, WAIT, |l| l.contains("listening on") || l.contains("cannot bind"));
        match line {
            Some(l) if l.contains("listening on") => true,
            Some(_) => {
                self.kill();
                false
            }
            None => panic!("mc0d did not report listening within {WAIT:?}; log:\n{}", self.log.text()),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("broker running").id() as i32
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stopped {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                self.stopped = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts mc0d again on the same port with the same key (retrying while
    /// the port is still being released).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + WAIT;
        while !self.spawn() {
            assert!(Instant::now() < deadline, "cannot restart mc0d on port {}; log:\n{}", self.port, self.log.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGSTOP: the process stays, the port stays bound, nothing answers.
    pub fn pause(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
        self.stopped = true;
    }

    pub fn resume(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        self.stopped = false;
    }

    /// Writes a client keypair into the broker's temp dir and returns a
    /// connector config for this broker (heartbeat and timeouts as given).
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
        if self.curve {
            let (public, private) = write_keys(self.dir.path(), name);
            pairs.push(("curve".into(), "true".into()));
            pairs.push(("broker.public_key".into(), self.public_key.display().to_string()));
            pairs.push(("public_key".into(), public.display().to_string()));
            pairs.push(("private_key".into(), private.display().to_string()));
        } else {
            pairs.push(("curve".into(), "false".into()));
        }
        pairs
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cdylib built with this test binary. Cargo writes it to
/// `target/<profile>/deps/` (next to the test executable) on every test
/// build, but copies it up to `target/<profile>/` only on `cargo build`, so
/// the copy up there may be stale.
pub fn libmc0() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    let candidates = [deps.join("libmc0.so"), deps.parent().expect("profile dir").join("libmc0.so")];
    for lib in &candidates {
        if lib.exists() {
            return lib.clone();
        }
    }
    panic!("libmc0.so not found in {candidates:?} (cargo builds the cdylib with the tests)");
}

/// The crate root.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a child to completion, killing it after `timeout`; returns (exit
/// status, stdout, stderr).
pub fn run(mut cmd: Command, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
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
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}
