//! The Rust connector API against the real `mc0d` over CURVE on loopback:
//! round trips, concurrency, broker restarts and stalls, close, and every
//! configuration error.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, write_keys, Mc0d, Mc0dOptions, TempDir, CONNECTOR_WAIT as WAIT};
use mc0::connector::Config;
use mc0::connector::{Connector, ErrorKind, Message};

fn connect(broker: &Mc0d, name: &str, extra: &[(&str, &str)]) -> Connector {
    let mut config = broker.config(name);
    for (k, v) in extra {
        config.set(k, v).unwrap();
    }
    Connector::connect(&config).unwrap_or_else(|e| panic!("connect {name}: {e}; broker log:\n{}", broker.log.text()))
}

fn receive(c: &Connector, what: &str) -> Message {
    c.receive(WAIT).unwrap_or_else(|e| panic!("receive {what}: {e}"))
}

#[test]
fn round_trip_with_binary_headers_and_bodies() {
    let broker = Mc0d::start_debug();
    let node = connect(&broker, "node1", &[]);
    let client = connect(&broker, "client1", &[]);
    let agent = mc0::topics::agent("mcollective", "rpcutil");
    let reply = mc0::topics::reply("mcollective", "client1", std::process::id());
    node.subscribe(&agent).unwrap();
    client.subscribe(&reply).unwrap();

    let body: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let binary_header: &[u8] = b"\x00\xff\x01 bin";
    client.publish(&agent, &[("X-REPLY-TO", reply.as_bytes()), ("X-BIN", binary_header)], &body).unwrap();
    let m = receive(&node, "request");
    assert_eq!(m.topic, agent);
    assert_eq!(m.header("X-REPLY-TO"), Some(reply.as_bytes()));
    assert_eq!(m.header("X-BIN"), Some(binary_header));
    assert_eq!(m.headers.len(), 2, "only the publisher's headers: {:?}", m.headers);
    assert_eq!(m.body, body);

    // The reply goes back to X-REPLY-TO; an empty body survives too.
    let to = String::from_utf8(m.header("X-REPLY-TO").unwrap().to_vec()).unwrap();
    node.publish(&to, &[], b"").unwrap();
    let r = receive(&client, "reply");
    assert_eq!(r.topic, reply);
    assert!(r.body.is_empty() && r.headers.is_empty());

    // After unsubscribing, a message to the old topic is not delivered: the
    // next one (published later on the same link) arrives first.
    let other = mc0::topics::node("mcollective", "node1");
    node.subscribe(&other).unwrap();
    node.unsubscribe(&agent).unwrap();
    client.publish(&agent, &[], b"not for you").unwrap();
    client.publish(&other, &[], b"directed").unwrap();
    let m = receive(&node, "directed");
    assert_eq!((m.topic.as_str(), &m.body[..]), (other.as_str(), &b"directed"[..]));

    client.flush(WAIT).unwrap();
    let stats = client.stats();
    assert_eq!(stats.published, 3, "{stats:?}");
    assert_eq!(stats.publishes_dropped, 0, "{stats:?}");
    assert!(node.receive(Duration::from_millis(0)).is_err_and(|e| e.kind() == ErrorKind::Timeout));
}

#[test]
fn publish_arguments_are_checked() {
    let broker = Mc0d::start_debug();
    let c = connect(&broker, "args", &[]);
    for (topic, headers) in [
        ("", vec![]),
        ("t", vec![("ID", &b"1"[..])]),
        ("t", vec![("TOPIC", &b"x"[..])]),
        ("t", vec![("X-", &b"x"[..])]),
        ("t", vec![("X-A B", &b"x"[..])]),
    ] {
        let e = c.publish(topic, &headers, b"").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{topic:?} {headers:?}: {e}");
    }
    let long = "t".repeat(1025);
    assert_eq!(c.publish(&long, &[], b"").unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(c.subscribe(&long).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(c.subscribe("").unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn many_threads_publish_while_one_receives() {
    const THREADS: usize = 4;
    const EACH: usize = 1500;
    let broker = Mc0d::start_debug();
    let c = Arc::new(connect(&broker, "busy", &[]));
    let other = Arc::new(connect(&broker, "other", &[]));
    c.subscribe("load").unwrap();

    // The broker keeps no queues: a subscriber that falls too far behind
    // loses messages (its SNDHWM). Publishers stay at most WINDOW ahead of the
    // receiver so that only the connector is under test, not overload.
    const WINDOW: usize = 2000;
    let received = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let c = c.clone();
        let received = received.clone();
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.len() < 2 * THREADS * EACH && Instant::now() < deadline {
                match c.receive(Duration::from_secs(5)) {
                    Ok(m) => {
                        assert!(seen.insert(m.body.clone()), "duplicate {:?}", String::from_utf8_lossy(&m.body));
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::Timeout => {}
                    Err(e) => panic!("receive: {e}"),
                }
            }
            seen
        })
    };
    let queue_full = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..2 * THREADS)
        .map(|t| {
            // Half the threads share the receiving connector, half another one.
            let c = if t % 2 == 0 { c.clone() } else { other.clone() };
            let queue_full = queue_full.clone();
            let (sent, received) = (sent.clone(), received.clone());
            std::thread::spawn(move || {
                for n in 0..EACH {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while sent.load(Ordering::SeqCst) >= received.load(Ordering::SeqCst) + WINDOW {
                        assert!(Instant::now() < deadline, "receiver stopped making progress");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let body = format!("{t}-{n}");
                    loop {
                        match c.publish("load", &[("X-N", body.as_bytes())], body.as_bytes()) {
                            Ok(()) => break,
                            // Backpressure is part of the contract: wait and retry.
                            Err(e) if e.kind() == ErrorKind::QueueFull => {
                                queue_full.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(e) => panic!("publish: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let seen = receiver.join().unwrap();
    if seen.len() != 2 * THREADS * EACH {
        let log: Vec<String> =
            broker.log.text().lines().filter(|l| !l.contains("DEBUG")).map(|l| l.to_string()).collect();
        panic!(
            "lost {} messages (QueueFull retries: {queue_full:?}); stats {:?} / {:?}; broker log:\n{}",
            2 * THREADS * EACH - seen.len(),
            c.stats(),
            other.stats(),
            log.join("\n")
        );
    }
    for t in 0..2 * THREADS {
        for n in 0..EACH {
            assert!(seen.contains(format!("{t}-{n}").as_bytes()));
        }
    }
    for conn in [&c, &other] {
        if let Err(e) = conn.flush(WAIT) {
            let log: Vec<&str> = Vec::new();
            let text = broker.log.text();
            let log: Vec<&str> = log.into_iter().chain(text.lines().filter(|l| !l.contains("DEBUG"))).collect();
            panic!("flush: {e}; stats {:?}; broker log:\n{}", conn.stats(), log.join("\n"));
        }
    }
    assert_eq!(c.stats().published + other.stats().published, (2 * THREADS * EACH) as u64);
    assert_eq!(c.stats().messages_dropped, 0);
}

#[test]
fn close_wakes_a_blocked_receiver_and_disconnects() {
    let broker = Mc0d::start_debug();
    let c = Arc::new(connect(&broker, "closer", &[]));
    c.subscribe("t").unwrap();
    let rid = c.routing_id();
    let log_from = broker.log.len();
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            (c.receive(Duration::MAX), started.elapsed())
        })
    };
    // Give the receiver a moment to block (either order is correct anyway).
    std::thread::sleep(Duration::from_millis(100));
    let closed_at = Instant::now();
    c.close().unwrap();
    let (result, _) = waiter.join().unwrap();
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Closed);
    assert!(closed_at.elapsed() < WAIT, "close took {:?}", closed_at.elapsed());
    let line = broker.log.wait_for_after(log_from, WAIT, |l| l.contains("disconnected") && l.contains(&rid));
    assert!(line.is_some(), "broker never saw DISCONNECT from {rid}; log:\n{}", broker.log.text());

    // Idempotent, and everything after it says Closed.
    c.close().unwrap();
    assert_eq!(c.publish("t", &[], b"x").unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(c.subscribe("t").unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(c.receive(Duration::from_secs(1)).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(c.flush(Duration::from_secs(1)).unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn close_delivers_queued_publishes_first() {
    let broker = Mc0d::start_debug();
    let sink = connect(&broker, "sink", &[]);
    sink.subscribe("last words").unwrap();
    let c = connect(&broker, "leaver", &[]);
    for n in 0..100 {
        c.publish("last words", &[], format!("{n}").as_bytes()).unwrap();
    }
    c.close().unwrap();
    for n in 0..100 {
        assert_eq!(receive(&sink, "last words").body, format!("{n}").as_bytes());
    }
}

#[test]
fn drop_without_close_does_not_hang_even_when_the_broker_is_stalled() {
    let mut broker = Mc0d::start_debug();
    let c = connect(&broker, "dropper", &[("close_timeout", "0.5")]);
    c.subscribe("t").unwrap();
    broker.pause();
    let started = Instant::now();
    drop(c);
    let took = started.elapsed();
    broker.resume();
    assert!(took < WAIT, "drop took {took:?}");
}

#[test]
fn broker_restart_is_only_a_delay() {
    let mut broker = Mc0d::start_debug();
    // A long heartbeat: the publisher learns of the restart only from the
    // broker's "not connected" answer to its PUTs, which it then re-sends.
    let me = connect(&broker, "self", &[]);
    me.subscribe("loop").unwrap();
    // A short heartbeat: this one notices by itself and re-subscribes.
    let listener = connect(&broker, "listener", &[("heartbeat", "1")]);
    listener.subscribe("news").unwrap();

    broker.restart();

    for n in 0..3 {
        me.publish("loop", &[], format!("after restart {n}").as_bytes()).unwrap();
    }
    for n in 0..3 {
        let m = receive(&me, "own message after restart");
        assert_eq!(m.body, format!("after restart {n}").as_bytes());
    }
    me.flush(WAIT).unwrap();
    assert!(me.stats().handshakes >= 2, "{:?}", me.stats());
    assert_eq!(me.stats().publishes_dropped, 0, "{:?}", me.stats());

    // The listener got its subscription back without being asked.
    let deadline = Instant::now() + WAIT;
    let got = loop {
        me.publish("news", &[], b"extra").unwrap();
        match listener.receive(Duration::from_millis(300)) {
            Ok(m) => break m,
            Err(e) if e.kind() == ErrorKind::Timeout && Instant::now() < deadline => {}
            Err(e) => panic!("listener never re-subscribed: {e}; stats {:?}", listener.stats()),
        }
    };
    assert_eq!(got.topic, "news");
    assert!(listener.stats().handshakes >= 2);
}

#[test]
fn stalled_broker_is_detected_by_heartbeat_and_survived() {
    let mut broker = Mc0d::start_debug();
    let c = connect(&broker, "stall", &[("heartbeat", "0.5"), ("connect_timeout", "2")]);
    c.subscribe("alive").unwrap();
    broker.pause();
    assert!(
        wait_until(WAIT, || c.stats().reconnects >= 1),
        "no reconnect within {WAIT:?} of the broker stalling: {:?}",
        c.stats()
    );
    // Publishes while the link is down wait in the queue.
    c.publish("alive", &[], b"queued while down").unwrap();
    broker.resume();
    // A fresh handshake, the subscription back, and the queued message out.
    let deadline = Instant::now() + WAIT;
    let mut bodies = Vec::new();
    while !bodies.iter().any(|b: &Vec<u8>| b == b"after") {
        assert!(Instant::now() < deadline, "no round trip after SIGCONT: {:?}; got {bodies:?}", c.stats());
        c.publish("alive", &[], b"after").unwrap();
        if let Ok(m) = c.receive(Duration::from_millis(500)) {
            bodies.push(m.body);
        }
    }
    assert!(c.stats().handshakes >= 2, "{:?}", c.stats());
    assert!(bodies.iter().any(|b| b == b"queued while down"), "the queued publish was lost: {bodies:?}");
}

#[test]
fn publishes_past_the_queue_limit_fail_with_queue_full() {
    let mut broker = Mc0d::start_debug();
    let c = connect(&broker, "full", &[("send_queue", "5")]);
    c.subscribe("q").unwrap();
    broker.pause();
    let mut accepted = 0;
    let mut full = None;
    for n in 0..1000 {
        match c.publish("q", &[], format!("{n}").as_bytes()) {
            Ok(()) => accepted += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("no QueueFull after 1000 publishes to a stalled broker");
    assert_eq!(e.kind(), ErrorKind::QueueFull, "{e}");
    assert!(e.message().contains("send_queue"), "{e}");
    assert!((5..=10).contains(&accepted), "accepted {accepted}");
    broker.resume();
    for n in 0..accepted {
        assert_eq!(receive(&c, "accepted publish").body, format!("{n}").as_bytes());
    }
}

#[test]
fn wrong_broker_key_is_a_bounded_timeout() {
    let broker = Mc0d::start_debug();
    let dir = TempDir::new("wrongkey");
    let (_, wrong_public, _) = write_keys(dir.path(), "impostor");
    let mut config = broker.config("lost");
    config.set("broker.public_key", wrong_public.to_str().unwrap()).unwrap();
    config.set("connect_timeout", "1").unwrap();
    let started = Instant::now();
    let e = Connector::connect(&config).unwrap_err();
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let want = format!("no answer from broker 127.0.0.1:{} within 1 s", broker.port);
    assert!(e.message().contains(&want), "{e}");
    assert!(e.message().contains("broker.public_key"), "{e}");
}

#[test]
fn no_broker_is_a_bounded_timeout() {
    let broker = Mc0d::start_debug();
    let mut config = broker.config("alone");
    config.set("broker.port", &common::free_port().to_string()).unwrap();
    config.set("connect_timeout", "0.5").unwrap();
    let started = Instant::now();
    let e = Connector::connect(&config).unwrap_err();
    assert!(started.elapsed() < WAIT);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.message().contains("is it running"), "{e}");
}

#[test]
fn curve_off_works_against_a_no_curve_broker() {
    let broker = Mc0d::start_with(Mc0dOptions { curve: false, ..Mc0dOptions::debug() });
    let c = connect(&broker, "plain", &[]);
    c.subscribe("p").unwrap();
    c.publish("p", &[], b"plain text").unwrap();
    assert_eq!(receive(&c, "plain").body, b"plain text");
}

#[test]
fn every_config_error_names_its_key_or_file() {
    let dir = TempDir::new("config");
    let (_, public, private) = write_keys(dir.path(), "me");
    let (_, broker_public, _) = write_keys(dir.path(), "broker");
    let (_, other_public, _) = write_keys(dir.path(), "other");
    let malformed = dir.path().join("bad.public");
    std::fs::write(&malformed, "this is not a Z85 key\n").unwrap();
    let missing = dir.path().join("missing.public");

    let mut c = Config::new();
    let e = c.set("broker.hots", "x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("broker.hots"), "{e}");
    for (key, value) in [("heartbeat", "fast"), ("broker.port", "61616x"), ("send_queue", "-1"), ("curve", "perhaps")] {
        let e = c.set(key, value).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{key}");
        assert!(e.message().contains(key) && e.message().contains(value), "{e}");
    }

    let base = |broker_key: &std::path::Path, private_key: &std::path::Path| {
        Config::from_pairs([
            ("broker.host", "127.0.0.1"),
            ("broker.port", "1"),
            ("broker.public_key", broker_key.to_str().unwrap()),
            ("public_key", public.to_str().unwrap()),
            ("private_key", private_key.to_str().unwrap()),
            ("connect_timeout", "0.2"),
        ])
        .unwrap()
    };

    let mut no_host = base(&broker_public, &private);
    no_host.broker_host = None;
    let e = Connector::connect(&no_host).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("broker.host"), "{e}");

    let mut no_key = base(&broker_public, &private);
    no_key.broker_public_key = None;
    let e = Connector::connect(&no_key).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("broker.public_key"), "{e}");

    let e = Connector::connect(&base(&missing, &private)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key);
    assert!(e.message().contains(missing.to_str().unwrap()) && e.message().contains("broker.public_key"), "{e}");

    let e = Connector::connect(&base(&malformed, &private)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key);
    assert!(e.message().contains(malformed.to_str().unwrap()), "{e}");

    let e = Connector::connect(&base(&broker_public, &malformed)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key);
    assert!(e.message().contains("private_key") && e.message().contains(malformed.to_str().unwrap()), "{e}");

    let mut mismatched = base(&broker_public, &private);
    mismatched.public_key = Some(other_public.clone());
    let e = Connector::connect(&mismatched).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key);
    assert!(e.message().contains(other_public.to_str().unwrap()), "{e}");
}

#[test]
fn log_callback_receives_lines_and_nothing_is_printed() {
    use std::sync::Mutex;
    let lines: Arc<Mutex<Vec<(mc0::log::Level, String)>>> = Arc::default();
    let sink = lines.clone();
    let mut broker = Mc0d::start_debug();
    let c = connect(&broker, "logger", &[("heartbeat", "1")]);
    // A reconnect changes the routing id's last part, not its prefix.
    let rid = format!("logger {} ", std::process::id());
    mc0::connector::set_logger(
        Some(Arc::new(move |level, line: &str| sink.lock().unwrap().push((level, line.to_string())))),
        mc0::log::Level::Debug,
    );
    broker.restart();
    let noticed = wait_until(WAIT, || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|(level, l)| *level == mc0::log::Level::Info && l.contains(&rid) && l.contains("connected again"))
    });
    mc0::connector::set_logger(None, mc0::log::Level::Error);
    assert!(noticed, "no log line about the reconnect: {:?}", lines.lock().unwrap());
    assert!(c.stats().handshakes >= 2);
}

#[test]
fn publishing_hard_while_subscribed_to_itself_loses_nothing() {
    // 8 threads publish 2,000 each as fast as the connector takes them, to
    // a topic the same connector is subscribed to: every PUT brings back an
    // OK and a MESSAGE, so the connector must keep reading while it sends.
    const THREADS: usize = 8;
    const EACH: usize = 2000;
    let mut broker = Mc0d::start_args(&["--status-interval", "1"]);
    let c = Arc::new(connect(&broker, "burst", &[]));
    c.subscribe("burst").unwrap();
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for n in 0..EACH {
                    let body = format!("{t}-{n}");
                    loop {
                        match c.publish("burst", &[], body.as_bytes()) {
                            Ok(()) => break,
                            Err(e) if e.kind() == ErrorKind::QueueFull => std::thread::sleep(Duration::from_millis(1)),
                            Err(e) => panic!("publish: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < THREADS * EACH && Instant::now() < deadline {
        match c.receive(Duration::from_secs(5)) {
            Ok(m) => assert!(seen.insert(m.body.clone()), "duplicate {:?}", String::from_utf8_lossy(&m.body)),
            Err(e) if e.kind() == ErrorKind::Timeout => break,
            Err(e) => panic!("receive: {e}"),
        }
    }
    for p in publishers {
        p.join().unwrap();
    }
    c.flush(WAIT).unwrap();
    let stats = c.stats();
    assert!(broker.stop_with(libc::SIGTERM, WAIT).is_some_and(|s| s.success()));
    let last = broker.log.wait_for(WAIT, |l| l.contains("stopping:")).expect("final status line");
    assert_eq!(seen.len(), THREADS * EACH, "{stats:?}; broker: {last}");
    assert!(last.contains(" drops=0"), "the broker dropped messages: {last}");
    assert_eq!((stats.published, stats.publishes_dropped, stats.messages_dropped), ((THREADS * EACH) as u64, 0, 0));
}

#[test]
fn connect_retry_returns_at_once_and_connects_when_the_broker_comes() {
    let mut broker = Mc0d::start_debug();
    broker.kill();
    let mut config = broker.config("daemon");
    config.set("connect_retry", "true").unwrap();
    config.set("reconnect_max", "0.5").unwrap();
    let started = Instant::now();
    let daemon = Connector::connect(&config).expect("connect_retry: valid config is enough");
    // Held, made once there is a session; counted by holder like any other.
    daemon.subscribe("jobs").unwrap();
    daemon.subscribe("jobs").unwrap();
    daemon.unsubscribe("jobs").unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "did not wait for the broker: {:?}", started.elapsed());
    assert_eq!(daemon.stats().handshakes, 0);

    broker.restart();
    let client = connect(&broker, "client", &[]);
    let deadline = Instant::now() + WAIT;
    let got = loop {
        client.publish("jobs", &[], b"work").unwrap();
        match daemon.receive(Duration::from_millis(300)) {
            Ok(m) => break m,
            Err(e) if e.kind() == ErrorKind::Timeout && Instant::now() < deadline => {}
            Err(e) => panic!("the daemon never subscribed: {e}; stats {:?}", daemon.stats()),
        }
    };
    assert_eq!((got.topic.as_str(), got.body.as_slice()), ("jobs", &b"work"[..]));
    assert!(daemon.stats().handshakes >= 1);
    // Config errors still fail at once.
    let mut bad = broker.config("daemon2");
    bad.set("connect_retry", "true").unwrap();
    bad.set("private_key", "/nonexistent/mc0-test.private").unwrap();
    assert_eq!(Connector::connect(&bad).unwrap_err().key(), Some("private_key"));
}
