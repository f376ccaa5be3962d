//! A broker that behaves like the legacy ones (docs/PROTOCOL.md,
//! "Compatibility notes"), for the connector's interop tests. It reads
//! frames as the original protocol defines them, knowing nothing of the
//! additions: it adopts any client on any message (no CONNECT needed),
//! never answers "not connected", subscribes a SUB's body topics whatever
//! its headers, copies every PUT header but `ID` and `TOPIC` into the
//! MESSAGE, answers `ID` with OK and a verb it does not know with ERROR.
//! It records every command it heard.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mc0::connector::Config;
use mc0::protocol::{self, Limits, Reply};

use super::{write_keys, TempDir, CONNECTOR_WAIT};

/// One command the legacy broker heard: its verb, headers and body frames.
#[derive(Debug, Clone)]
pub struct Heard {
    pub verb: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<Vec<u8>>,
    pub at: Instant,
}

pub struct LegacyBroker {
    pub port: u16,
    secret: [u8; 32],
    public_file: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every command, across restarts.
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl LegacyBroker {
    pub fn start(dir: &TempDir) -> LegacyBroker {
        let (pair, public_file, _) = write_keys(dir.path(), "legacy");
        let mut broker = LegacyBroker {
            port: 0,
            secret: pair.secret,
            public_file,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            heard: Arc::default(),
        };
        for _ in 0..5 {
            broker.port = super::free_port();
            if broker.spawn(Duration::ZERO) {
                return broker;
            }
        }
        panic!("the legacy test broker found no free port");
    }

    /// Serves on `self.port` from a thread of its own; false if the port
    /// cannot be bound within `retry_for`.
    fn spawn(&mut self, retry_for: Duration) -> bool {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::ROUTER).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_curve_server(true).unwrap();
        socket.set_curve_secretkey(&self.secret).unwrap();
        let deadline = Instant::now() + retry_for;
        while let Err(e) = socket.bind(&format!("tcp://127.0.0.1:{}", self.port)) {
            if Instant::now() >= deadline {
                eprintln!("legacy broker: bind {}: {e}", self.port);
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, heard) = (self.stop.clone(), self.heard.clone());
        self.thread = Some(std::thread::spawn(move || {
            serve_legacy(&socket, &stop, &heard);
            drop(socket);
            drop(ctx);
        }));
        true
    }

    /// The equivalent of kill -9: the socket closes, every connection drops,
    /// all state is gone.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(CONNECTOR_WAIT), "cannot restart the legacy broker on port {}", self.port);
    }

    /// A connector config for `name` (fresh keys) pointing at this broker.
    pub fn config(&self, dir: &TempDir, name: &str) -> Config {
        let (_, public, private) = write_keys(dir.path(), name);
        Config::from_pairs([
            ("broker.host", "127.0.0.1".to_string()),
            ("broker.port", self.port.to_string()),
            ("identity", name.to_string()),
            ("broker.public_key", self.public_file.display().to_string()),
            ("public_key", public.display().to_string()),
            ("private_key", private.display().to_string()),
        ])
        .unwrap()
    }

    /// The topics subscribed to since `since`.
    pub fn subscribed_since(&self, since: Instant) -> HashSet<String> {
        let heard = self.heard.lock().unwrap();
        heard
            .iter()
            .filter(|h| h.verb == "SUB" && h.at >= since)
            .flat_map(|h| h.body.iter().map(|t| String::from_utf8_lossy(t).into_owned()))
            .collect()
    }

    /// Every command heard so far.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }
}

impl Drop for LegacyBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve_legacy(socket: &zmq::Socket, stop: &AtomicBool, heard: &Mutex<Vec<Heard>>) {
    let limits = Limits::default();
    let mut subscribers: BTreeMap<Vec<u8>, HashSet<Vec<u8>>> = BTreeMap::new();
    let send = |rid: &[u8], frames: Vec<Vec<u8>>| {
        let _ = socket.send(rid, zmq::SNDMORE | zmq::DONTWAIT);
        let _ = socket.send_multipart(frames, zmq::DONTWAIT);
    };
    while !stop.load(Ordering::SeqCst) {
        if socket.poll(zmq::POLLIN, 20).unwrap_or(0) == 0 {
            continue;
        }
        let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) else { continue };
        let (rid, rest) = frames.split_first().expect("a routing id");
        let Ok(env) = protocol::split(rest, &limits) else { continue };
        let body = env.body.clone().unwrap_or_default();
        heard.lock().unwrap().push(Heard {
            verb: env.verb.to_string(),
            headers: env.headers.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            body: body.iter().map(|f| f.to_vec()).collect(),
            at: Instant::now(),
        });
        let id = env.header(b"ID");
        match env.verb {
            "SUB" => {
                for t in &body {
                    subscribers.entry(t.to_vec()).or_default().insert(rid.clone());
                }
            }
            "UNSUB" => {
                for t in &body {
                    subscribers.entry(t.to_vec()).or_default().remove(rid);
                }
            }
            "PUT" => {
                let topic = env.header(b"TOPIC").unwrap_or_default();
                let headers = env.headers.iter().copied().filter(|(k, _)| *k != b"ID" && *k != b"TOPIC").collect();
                let message = Reply::Message { topic, headers, body: body.clone() }.to_frames();
                for sub in subscribers.get(topic).into_iter().flatten() {
                    send(sub, message.clone());
                }
            }
            // Adopted on any message: CONNECT, DISCONNECT and NOOP change nothing.
            "CONNECT" | "DISCONNECT" | "NOOP" => {}
            other => {
                let text = format!("unknown command {other}");
                send(rid, Reply::Error { message: text.as_bytes(), id }.to_frames());
                continue;
            }
        }
        if let Some(id) = id {
            send(rid, Reply::Ok { id }.to_frames());
        }
    }
}
