//! `mc0d --authorized-keys`: only listed CURVE keys complete the handshake,
//! refusals are logged with address and key, SIGHUP (or a change on disk)
//! revokes keys and drops their live sessions, and an allowlist that cannot
//! be read stops the broker from starting instead of running it open.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{authorize, routing_id, run_mc0d, Client, Mc0d, Mc0dOptions, Monitor, TempDir, WAIT};
use mc0::keys::{key_to_z85, KeyPair};
use mc0::protocol::Command;
use mc0::protocol::ACCESS_DENIED;

/// How long a refused client is watched for an answer it must not get.
const SILENCE: Duration = Duration::from_millis(1500);

fn pair() -> KeyPair {
    KeyPair::generate().unwrap()
}

fn keys_dir(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path().join("authorized");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client with `pair`, acting as `name`, whose handshake is watched.
fn watched(broker: &Mc0d, ctx: &zmq::Context, pair: &KeyPair, name: &str) -> (Client, Monitor) {
    let mut monitor = None;
    let id = routing_id(name);
    let server = broker.server_public.unwrap();
    let client = Client::connect_keyed(ctx, &broker.endpoint(), &server, pair, Some(id.as_bytes()), |s| {
        monitor = Some(Monitor::handshakes(ctx, s));
    });
    (client, monitor.unwrap())
}

/// The handshake of `pair` is refused by the ZAP handler (status 400) and a
/// CONNECT sent meanwhile gets no answer.
fn assert_refused(broker: &Mc0d, ctx: &zmq::Context, pair: &KeyPair) {
    let (client, monitor) = watched(broker, ctx, pair, "stranger");
    let _ = client.try_send(&Command::Connect { version: b"0.3", ttl_ms: 30_000, id: Some(b"c") }.to_frames());
    match monitor.next(WAIT) {
        Some((zmq::SocketEvent::HANDSHAKE_FAILED_AUTH, 400)) => {}
        other => panic!("expected HANDSHAKE_FAILED_AUTH 400, got {other:?}; log:\n{}", broker.log.text()),
    }
    if let Some(frames) = client.recv(SILENCE) {
        panic!("a refused client got an answer: {}", common::show(&frames));
    }
}

fn refusal_logged(broker: &Mc0d, pair: &KeyPair) {
    let z85 = key_to_z85(&pair.public);
    let line = broker.log.wait_for(WAIT, |l| l.contains("refused key") && l.contains(&z85));
    let line = line.unwrap_or_else(|| panic!("refusal of {z85} not logged:\n{}", broker.log.text()));
    assert!(line.contains("from 127.0.0.1"), "address in {line:?}");
}

#[test]
fn listed_keys_in_a_directory_connect_and_others_are_refused_and_logged() {
    let tmp = TempDir::new("auth-dir");
    let dir = keys_dir(&tmp);
    let (probe, node, stranger) = (pair(), pair(), pair());
    authorize(&dir, "probe", &probe);
    authorize(&dir, "node1.example", &node);
    // Not keys: ignored.
    std::fs::write(dir.join("README"), "not a key\n").unwrap();
    std::fs::create_dir(dir.join("old.public")).unwrap();
    let broker = Mc0d::start_allowlist(&dir, &probe, &[]);
    assert!(broker.log.text().contains("only the 2 authorized keys"), "{}", broker.log.text());

    let ctx = zmq::Context::new();
    let (client, monitor) = watched(&broker, &ctx, &node, "node1.example");
    client.handshake(30_000);
    assert_eq!(monitor.next(WAIT).map(|e| e.0), Some(zmq::SocketEvent::HANDSHAKE_SUCCEEDED));
    client.call(&Command::Sub { id: Some(b"s"), queue: None, compact: false, topics: vec![b"t"] });
    let line = broker.log.wait_for(WAIT, |l| l.contains("connected") && l.contains("(node1.example)"));
    assert!(line.is_some(), "connect is logged with the key's name:\n{}", broker.log.text());

    assert_refused(&broker, &ctx, &stranger);
    refusal_logged(&broker, &stranger);
    // The accepted client was not disturbed.
    client.call(&Command::Noop { id: Some(b"still") });
}

#[test]
fn key_per_line_file_with_names_and_comments() {
    let tmp = TempDir::new("auth-file");
    let (probe, node, stranger) = (pair(), pair(), pair());
    let file = tmp.path().join("authorized_keys");
    let text = format!(
        "# mc0 fleet\n\n{}  probe\n   {}\tweb01 node   # rack 4\n",
        key_to_z85(&probe.public),
        key_to_z85(&node.public)
    );
    std::fs::write(&file, text).unwrap();
    let broker = Mc0d::start_allowlist(&file, &probe, &[]);
    let ctx = zmq::Context::new();
    broker.client_named(&ctx, &node, "web01").handshake(30_000);
    let line = broker.log.wait_for(WAIT, |l| l.contains("connected") && l.contains("(web01)"));
    assert!(line.is_some(), "{}", broker.log.text());
    assert_refused(&broker, &ctx, &stranger);
    refusal_logged(&broker, &stranger);
}

#[test]
fn sighup_revokes_a_key_drops_its_live_session_and_refuses_its_reconnect() {
    let tmp = TempDir::new("auth-revoke");
    let dir = keys_dir(&tmp);
    let (probe, keep, revoke) = (pair(), pair(), pair());
    authorize(&dir, "probe", &probe);
    authorize(&dir, "keep", &keep);
    let revoked_file = authorize(&dir, "revoke", &revoke);
    // Polling off: this is about SIGHUP alone.
    let broker = Mc0d::start_allowlist(&dir, &probe, &["--authorized-keys-poll", "0"]);
    let ctx = zmq::Context::new();
    let kept = broker.client_named(&ctx, &keep, "keep");
    let doomed = broker.client_named(&ctx, &revoke, "revoke");
    for c in [&kept, &doomed] {
        c.handshake(30_000);
        c.call(&Command::Sub { id: Some(b"s"), queue: None, compact: false, topics: vec![b"news"] });
    }
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    publisher.call(&Command::Put { topic: b"news", headers: vec![], id: Some(b"p0"), body: vec![b"before"] });
    assert_eq!(doomed.expect_message().body, vec![b"before".to_vec()]);
    assert_eq!(kept.expect_message().body, vec![b"before".to_vec()]);

    std::fs::remove_file(&revoked_file).unwrap();
    broker.signal(libc::SIGHUP);
    // The live session is told, once, without an ID...
    assert_eq!(doomed.expect_error(), (ACCESS_DENIED.to_string(), None));
    let line = broker.log.wait_for(WAIT, |l| l.contains("authorized keys reloaded (SIGHUP) in"));
    let line = line.unwrap_or_else(|| panic!("reload not logged:\n{}", broker.log.text()));
    assert!(line.contains("2 keys, 0 added, 1 removed; 1 sessions dropped"), "{line}");
    assert!(broker.log.text().contains(&format!("its key {} is no longer authorized", key_to_z85(&revoke.public))));

    // ...every later command is refused and not executed...
    doomed.send_command(&Command::Noop { id: Some(b"n") });
    assert_eq!(doomed.expect_error(), (ACCESS_DENIED.to_string(), Some("n".into())));
    doomed.send_command(&Command::Connect { version: b"0.3", ttl_ms: 30_000, id: Some(b"again") });
    assert_eq!(doomed.expect_error(), (ACCESS_DENIED.to_string(), Some("again".into())));
    // ...it receives nothing more, while the other subscriber still does.
    publisher.call(&Command::Put { topic: b"news", headers: vec![], id: Some(b"p1"), body: vec![b"after"] });
    assert_eq!(kept.expect_message().body, vec![b"after".to_vec()]);
    if let Some(frames) = doomed.recv_non_noop(Duration::from_millis(500)) {
        panic!("revoked client still served: {}", common::show(&frames));
    }
    // A new connection with the revoked key fails its handshake.
    assert_refused(&broker, &ctx, &revoke);
    refusal_logged(&broker, &revoke);
}

#[test]
fn a_changed_directory_is_noticed_without_a_signal() {
    let tmp = TempDir::new("auth-poll");
    let dir = keys_dir(&tmp);
    let (probe, late, leaving) = (pair(), pair(), pair());
    authorize(&dir, "probe", &probe);
    let leaving_file = authorize(&dir, "leaving", &leaving);
    let broker = Mc0d::start_allowlist(&dir, &probe, &["--authorized-keys-poll", "1"]);
    let ctx = zmq::Context::new();
    let gone = broker.client_named(&ctx, &leaving, "leaving");
    gone.handshake(30_000);

    authorize(&dir, "late", &late);
    std::fs::remove_file(&leaving_file).unwrap();
    // A poll may fall between the two changes; the one that sees the
    // removal also sees the earlier addition.
    let line = broker.log.wait_for(WAIT, |l| l.contains("reloaded (changed on disk) in") && l.contains("1 removed"));
    let line = line.unwrap_or_else(|| panic!("change not noticed:\n{}", broker.log.text()));
    assert!(line.contains("2 keys, ") && line.contains("1 removed; 1 sessions dropped"), "{line}");
    broker.client_named(&ctx, &late, "late").handshake(30_000);
    assert_eq!(gone.expect_error(), (ACCESS_DENIED.to_string(), None));
}

#[test]
fn a_broken_list_on_reload_keeps_the_previous_one() {
    let tmp = TempDir::new("auth-broken");
    let (probe, node) = (pair(), pair());
    let file = tmp.path().join("keys");
    let good = format!("{} probe\n{} node\n", key_to_z85(&probe.public), key_to_z85(&node.public));
    std::fs::write(&file, &good).unwrap();
    let broker = Mc0d::start_allowlist(&file, &probe, &["--authorized-keys-poll", "0"]);
    let ctx = zmq::Context::new();
    let client = broker.client_named(&ctx, &node, "node");
    client.handshake(30_000);

    std::fs::write(&file, format!("{}\nthis is not a key\n", key_to_z85(&probe.public))).unwrap();
    broker.signal(libc::SIGHUP);
    let line = broker.log.wait_for(WAIT, |l| l.contains("cannot reload the authorized keys"));
    let line = line.unwrap_or_else(|| panic!("failed reload not logged:\n{}", broker.log.text()));
    assert!(line.contains("line 2") && line.contains("the previous 2 keys stay in force"), "{line}");
    client.call(&Command::Noop { id: Some(b"still") });
    broker.client_named(&ctx, &node, "node").handshake(30_000);
}

#[test]
fn an_empty_list_admits_nobody() {
    let tmp = TempDir::new("auth-empty");
    let dir = keys_dir(&tmp);
    let probe = pair();
    let mut broker = Mc0d::start_with(Mc0dOptions {
        args: vec!["--authorized-keys".into(), dir.display().to_string()],
        wait_ready: false,
        ..Default::default()
    });
    let warned = broker.log.wait_for(WAIT, |l| l.contains("empty: no client can connect"));
    assert!(warned.is_some(), "{}", broker.log.text());
    let ctx = zmq::Context::new();
    assert_refused(&broker, &ctx, &probe);
    assert!(broker.try_wait().is_none(), "still running");
}

#[test]
fn without_an_allowlist_any_key_is_admitted() {
    let broker = Mc0d::start();
    assert!(broker.log.text().contains("any client with the broker's public key may connect"));
    let ctx = zmq::Context::new();
    for _ in 0..3 {
        broker.client_as(&ctx, &pair(), None).handshake(30_000);
    }
}

/// `mc0d` with an allowlist that cannot be used exits 2 with one line
/// naming the culprit, before listening.
fn expect_startup_refusal(path: &Path, culprit: &str) {
    let tmp = TempDir::new("auth-cli");
    let (_, _, private) = common::write_keys(tmp.path(), "broker");
    let port = common::free_port().to_string();
    let args = [
        "--curve-private-key",
        private.to_str().unwrap(),
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--authorized-keys",
        path.to_str().unwrap(),
    ];
    let (status, _, stderr) = run_mc0d(&args, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{path:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(culprit), "{stderr:?} should name {culprit:?}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn an_unusable_allowlist_stops_the_broker_from_starting() {
    let tmp = TempDir::new("auth-bad");
    expect_startup_refusal(&tmp.path().join("nonexistent"), "nonexistent");

    let file = tmp.path().join("keys.txt");
    std::fs::write(&file, format!("{} ok\nnot-a-key bad\n", key_to_z85(&pair().public))).unwrap();
    expect_startup_refusal(&file, "keys.txt: line 2");

    std::fs::write(&file, b"\xff\xfe binary\n").unwrap();
    expect_startup_refusal(&file, "keys.txt");

    let dir = keys_dir(&tmp);
    authorize(&dir, "good", &pair());
    std::fs::write(dir.join("broken.public"), "short\n").unwrap();
    expect_startup_refusal(&dir, "broken.public");
    std::fs::remove_file(dir.join("broken.public")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("missing.public"), dir.join("dangling.public")).unwrap();
    expect_startup_refusal(&dir, "dangling.public");
    std::fs::remove_file(dir.join("dangling.public")).unwrap();

    // Permissions only bind when not running as root.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.join("locked.public");
        authorize(&dir, "locked", &pair());
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        expect_startup_refusal(&dir, "locked.public");
    }
}

#[test]
fn an_allowlist_needs_curve() {
    let (status, _, stderr) = run_mc0d(&["--no-curve", "--authorized-keys", "/etc"], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--authorized-keys"), "{stderr}");
}
