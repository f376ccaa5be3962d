//! The connector against `mc0d --authorized-keys`: a refused key is a clear
//! error ("broker refused our key") in bounded time, not a hang until
//! `connect_timeout`; a revoked key is reported while connected, and the
//! connector is served again once the key is listed again.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{authorize, wait_until, Mc0d, TempDir, WAIT};
use mc0::connector::Config;
use mc0::connector::{Connector, ErrorKind};
use mc0::keys::{key_to_z85, KeyPair};
use mc0::log::Level;

fn pair() -> KeyPair {
    KeyPair::generate().unwrap()
}

/// A broker admitting the keys in `dir` (which must list `probe`).
fn start(dir: &Path, probe: &KeyPair) -> Mc0d {
    Mc0d::start_allowlist(dir, probe, &["--authorized-keys-poll", "0"])
}

/// A connector config for `broker` using `keys` (written under `dir`).
fn config(broker: &Mc0d, dir: &Path, name: &str, keys: &KeyPair) -> Config {
    let (_, private) = mc0::keys::write_keypair(dir.join(name), keys, true).unwrap();
    let port = broker.port.to_string();
    let server = broker.server_public_file().display().to_string();
    let private = private.display().to_string();
    Config::from_pairs([
        ("broker.host", "127.0.0.1"),
        ("broker.port", &port),
        ("identity", name),
        ("broker.public_key", &server),
        ("private_key", &private),
        // Far longer than any wait below: a refusal must not wait for it.
        ("connect_timeout", "60"),
        ("heartbeat", "30"),
        ("reconnect_max", "0.5"),
    ])
    .unwrap()
}

/// Connector log lines, collected process-wide (the logger is global).
fn logs() -> Arc<Mutex<Vec<String>>> {
    static LINES: std::sync::OnceLock<Arc<Mutex<Vec<String>>>> = std::sync::OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            mc0::connector::set_logger(
                Some(Arc::new(move |_: Level, line: &str| sink.lock().unwrap().push(line.to_string()))),
                Level::Info,
            );
            lines
        })
        .clone()
}

fn wait_log(what: impl Fn(&str) -> bool) -> Option<String> {
    let lines = logs();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| what(l)) {
            return Some(l.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn an_unlisted_key_fails_connect_at_once_with_a_clear_error() {
    let tmp = TempDir::new("conn-refused");
    let dir = tmp.path().join("nodes");
    std::fs::create_dir(&dir).unwrap();
    let probe = pair();
    authorize(&dir, "probe", &probe);
    let broker = start(&dir, &probe);
    let stranger = pair();
    let start = Instant::now();
    let error = match Connector::connect(&config(&broker, tmp.path(), "stranger", &stranger)) {
        Ok(_) => panic!("an unlisted key connected"),
        Err(e) => e,
    };
    let took = start.elapsed();
    assert_eq!(error.kind(), ErrorKind::Broker, "{error}");
    assert!(error.message().contains("broker refused our key"), "{error}");
    assert!(error.message().contains(&key_to_z85(&stranger.public)), "names the key: {error}");
    assert!(took < WAIT, "refused after {took:?}, not after connect_timeout (60 s)");
    let z85 = key_to_z85(&stranger.public);
    assert!(broker.log.wait_for(WAIT, |l| l.contains("refused key") && l.contains(&z85)).is_some());
}

#[test]
fn a_revoked_key_is_reported_and_served_again_once_listed_again() {
    let tmp = TempDir::new("conn-revoke");
    let dir = tmp.path().join("nodes");
    std::fs::create_dir(&dir).unwrap();
    let (probe, node) = (pair(), pair());
    authorize(&dir, "probe", &probe);
    let listed = authorize(&dir, "node", &node);
    let broker = start(&dir, &probe);
    let connector = Connector::connect(&config(&broker, tmp.path(), "node", &node)).expect("a listed key connects");
    connector.subscribe("news").unwrap();
    let ctx = zmq::Context::new();
    let publisher = broker.client(&ctx);
    publisher.handshake(60_000);
    let put = |body: &'static [u8]| mc0::protocol::Command::Put {
        topic: b"news",
        headers: vec![],
        id: None,
        body: vec![body],
    };
    publisher.send_command(&put(b"one"));
    assert_eq!(connector.receive(WAIT).expect("delivered").body, b"one");

    std::fs::remove_file(&listed).unwrap();
    broker.signal(libc::SIGHUP);
    let z85 = key_to_z85(&node.public);
    let line = wait_log(|l| l.contains("broker refused our key") && l.contains(&z85));
    assert!(line.is_some(), "the connector reports the revocation; its log:\n{:?}", logs().lock().unwrap());
    assert_eq!(connector.stats().handshakes, 1);
    publisher.send_command(&put(b"while revoked"));
    assert!(connector.receive(Duration::from_millis(500)).is_err(), "nothing is delivered to a revoked key");

    authorize(&dir, "node", &node);
    broker.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || connector.stats().handshakes >= 2),
        "no new handshake once listed again; log:\n{}",
        broker.log.text()
    );
    // Re-subscribed by the connector itself; the publisher retries until
    // the subscription is in place.
    let deadline = Instant::now() + WAIT;
    loop {
        publisher.send_command(&put(b"back"));
        match connector.receive(Duration::from_millis(200)) {
            Ok(m) => {
                assert_eq!(m.body, b"back");
                break;
            }
            Err(_) => assert!(Instant::now() < deadline, "not served again"),
        }
    }
    assert!(wait_log(|l| l.contains("accepts our key again")).is_some());
}
