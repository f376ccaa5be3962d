//! Test helpers shared by the integration tests: the real `mc0d` on a free
//! loopback port with fresh CURVE keys ([`Mc0d`]: killed on drop, restarted
//! on the same port with the same key, stopped and continued), raw DEALER
//! clients speaking frames ([`Client`]), handshake monitors, connector
//! configs pointing at a broker, temp dirs, key files, child processes, and
//! the location of the built `libmc0.so` for the C and Python tests.
//!
//! Use from a test file with `mod common;`. Every wait is bounded.
// Each tests/*.rs compiles this module on its own and uses only part of it.
#![allow(dead_code)]

mod client;
mod legacy;
mod mc0d;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mc0::keys::KeyPair;

// As with dead_code: a test file that names none of these is fine.
#[allow(unused_imports)]
pub use client::{Client, Message, Monitor};
#[allow(unused_imports)]
pub use legacy::{Heard, LegacyBroker};
#[allow(unused_imports)]
pub use mc0d::{routing_id, LogBuf, Mc0d, Mc0dOptions, PROBE};

/// Generous bound for anything that should happen "soon" on a loaded CI box.
pub const WAIT: Duration = Duration::from_secs(10);

/// The connector tests' bound: their waits span reconnects with backoff,
/// broker restarts and stalls, and flushes of thousands of messages.
pub const CONNECTOR_WAIT: Duration = Duration::from_secs(20);

/// A port nothing listens on right now (bind :0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// In `parent` rather than the temp dir (which may be tmpfs).
    pub fn new_in(parent: &Path, tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = parent.join(format!("mc0-test-{tag}-{}-{n}", std::process::id()));
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

/// Writes a fresh keypair as `dir/name.{public,private}`; returns it and
/// the two paths.
pub fn write_keys(dir: &Path, name: &str) -> (KeyPair, PathBuf, PathBuf) {
    let pair = KeyPair::generate().expect("generate keypair");
    let (public, private) = mc0::keys::write_keypair(dir.join(name), &pair, true).expect("write keypair");
    (pair, public, private)
}

/// Writes `dir/name.public` holding `pair`'s public key, as an allowlist
/// directory entry.
pub fn authorize(dir: &Path, name: &str, pair: &KeyPair) -> PathBuf {
    let path = dir.join(format!("{name}.public"));
    std::fs::write(&path, format!("{}\n", mc0::keys::key_to_z85(&pair.public))).expect("write public key");
    path
}

/// The routing ids of a legacy node ("n1") and client ("client"), as the
/// legacy Ruby connector makes them.
pub const LEGACY_NODE: &str = "n1 4242 #<Thread:0x0001 run>";
pub const LEGACY_CLIENT: &str = "client 1234 #<Thread:0x0002 run>";

/// The legacy Ruby connector's exchange, frame for frame: `node` (routing
/// id [`LEGACY_NODE`]) and `client` ([`LEGACY_CLIENT`]) connect and
/// subscribe; the client sends a broadcast and a directed request, the node
/// receives each and replies to its X-REPLY-TO, and the client receives the
/// replies. Returns the node's received requests and the client's replies.
pub fn legacy_request_reply(node: &Client, client: &Client) -> (Vec<Message>, Vec<Message>) {
    for (c, id) in [(node, "1"), (client, "1")] {
        c.send(&[&b""[..], b"CONNECT", b"ID", id.as_bytes(), b"TTL", b"30000", b"VERSION", b"0.2"]);
        c.expect_ok(id);
    }
    node.send(&[&b""[..], b"SUB", b"ID", b"2", b"", b"mcollective rpcutil", b"mcollective nodes n1"]);
    node.expect_ok("2");
    client.send(&[&b""[..], b"SUB", b"ID", b"2", b"", b"mcollective reply client 1234"]);
    client.expect_ok("2");

    let request = b"\x04\x08{\x07:\x0bbody\"\x0erequest body".to_vec();
    let (mut requests, mut replies) = (Vec::new(), Vec::new());
    for topic in [&b"mcollective rpcutil"[..], b"mcollective nodes n1"] {
        client.send(&[
            &b""[..],
            b"PUT",
            b"TOPIC",
            topic,
            b"X-REPLY-TO",
            b"mcollective reply client 1234",
            b"ID",
            b"3",
            b"",
            &request,
        ]);
        client.expect_ok("3");
        let m = node.expect_message();
        assert_eq!(m.topic, topic);
        assert_eq!(m.headers, vec![(b"X-REPLY-TO".to_vec(), b"mcollective reply client 1234".to_vec())]);
        assert_eq!(m.body, vec![request.clone()]);

        let reply_to = m.headers[0].1.clone();
        node.send(&[&b""[..], b"PUT", b"TOPIC", &reply_to, b"", b"reply from n1"]);
        let r = client.expect_message();
        assert_eq!(r.topic, b"mcollective reply client 1234");
        assert!(r.headers.is_empty());
        assert_eq!(r.body, vec![b"reply from n1".to_vec()]);
        requests.push(m);
        replies.push(r);
    }
    (requests, replies)
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

/// Frames for a panic message.
pub fn show(frames: &[Vec<u8>]) -> String {
    frames.iter().map(|f| format!("\"{}\"", f.escape_ascii())).collect::<Vec<_>>().join(" ")
}

/// Borrowed frames for a panic message.
pub fn show_refs(frames: &[&[u8]]) -> String {
    let frames: Vec<String> = frames.iter().take(8).map(|f| format!("\"{}\"", f.escape_ascii())).collect();
    frames.join(" ")
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

/// The crate root.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib built with this test binary. Cargo writes it to
/// `target/<profile>/deps/` (next to the test executable) on every test
/// build, but copies it up to `target/<profile>/` only on `cargo build`, so
/// the copy up there may be stale.
pub fn libmc0() -> PathBuf {
    library("libmc0.so")
}

/// A library this test binary was built with (`libmc0.so`, `libmc0.a`),
/// found as [`libmc0`] finds the cdylib.
pub fn library(file: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    let candidates = [deps.join(file), deps.parent().expect("profile dir").join(file)];
    for lib in &candidates {
        if lib.exists() {
            return lib.clone();
        }
    }
    panic!("{file} not found in {candidates:?} (cargo builds the library with the tests)");
}

/// A binary of the workspace (`mc0d`, `mc0-keygen`, `mc0-bench`), from
/// the target directory this test executable was built into. They belong
/// to other packages than these tests, so cargo does not build them for
/// the tests: `cargo build --release --workspace` (or `make test`) does.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = profile.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release --workspace` (or `make test`) before these tests",
        path.display()
    );
    path
}

/// Runs a child to completion, killing it after `timeout`; returns (exit
/// status, stdout, stderr).
pub fn run(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
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
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Runs `mc0d` with `args` to completion (killed after `timeout`); returns
/// (exit status, stdout, stderr). For CLI tests of options that exit.
pub fn run_mc0d(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin("mc0d"));
    cmd.args(args);
    run(cmd, timeout)
}

/// The address of a broker's `--metrics` listener, from its log.
pub fn metrics_address(broker: &Mc0d) -> std::net::SocketAddr {
    let line = broker.log.wait_for(WAIT, |l| l.contains("metrics on http://")).expect("metrics address logged");
    line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("address").parse().unwrap()
}

/// One GET; the status and body.
pub fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    try_get(addr, target).unwrap_or_else(|e| panic!("GET http://{addr}{target}: {e}"))
}

pub fn try_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no response head")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    Ok((status, body.to_string()))
}
