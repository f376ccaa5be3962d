//! The real `mc0d` over CURVE on loopback: handshake, acks, fan-out,
//! subscriptions, heartbeats and expiry.

mod common;

use std::time::Duration;

use common::{Client, Mc0d, Mc0dOptions, WAIT};
use mc0::protocol::{Command, NOT_CONNECTED};

fn sub<'a>(id: &'a str, topics: &[&'a str]) -> Command<'a> {
    Command::Sub {
        id: Some(id.as_bytes()),
        queue: None,
        compact: false,
        topics: topics.iter().map(|t| t.as_bytes()).collect(),
    }
}

#[test]
fn handshake_and_acks() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let c = broker.client(&ctx);
    c.handshake(30_000);
    c.call(&Command::Noop { id: Some(b"n1") });
    c.call(&sub("s1", &["a", "b"]));
    // Without ID nothing comes back; the next ID'd command is the next reply.
    c.send_command(&Command::Noop { id: None });
    c.call(&Command::Noop { id: Some(b"n2") });
    c.call(&Command::Disconnect { id: Some(b"bye") });
    // After DISCONNECT the client is unknown again.
    c.send_command(&Command::Noop { id: Some(b"n3") });
    assert_eq!(c.expect_error(), (NOT_CONNECTED.to_string(), Some("n3".into())));
}

#[test]
fn put_fans_out_with_headers_and_binary_body() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let subs: Vec<Client> = (0..3).map(|_| broker.client(&ctx)).collect();
    for s in &subs {
        s.handshake(30_000);
        s.call(&sub("s", &["mcollective rpcutil", "other"]));
    }
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    let body: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    publisher.call(&Command::Put {
        topic: b"mcollective rpcutil",
        headers: vec![(b"X-REPLY-TO", b"mcollective reply c 1"), (b"X-EMPTY", b""), (b"X-BIN", b"\x00\xff")],
        id: Some(b"p1"),
        body: vec![&body, b"", b"second"],
    });
    for s in &subs {
        let m = s.expect_message();
        assert_eq!(m.topic, b"mcollective rpcutil");
        assert_eq!(
            m.headers,
            vec![
                (b"X-REPLY-TO".to_vec(), b"mcollective reply c 1".to_vec()),
                (b"X-EMPTY".to_vec(), b"".to_vec()),
                (b"X-BIN".to_vec(), b"\x00\xff".to_vec()),
            ],
            "every header but ID, in order"
        );
        assert_eq!(m.body, vec![body.clone(), vec![], b"second".to_vec()]);
        // Stamped by the broker: the publisher's key, no name (no allowlist).
        assert!(m.sender_key.as_ref().is_some_and(|k| k.len() == 40), "{m:?}");
        assert_eq!(m.sender, None);
    }
    // A topic nobody subscribes to is acknowledged and dropped.
    publisher.call(&Command::Put { topic: b"nobody", headers: vec![], id: Some(b"p2"), body: vec![b"x"] });
    for s in &subs {
        assert!(s.recv_non_noop(Duration::from_millis(300)).is_none());
    }
}

fn put<'a>(topic: &'a str, id: Option<&'a str>, body: &'a [u8]) -> Command<'a> {
    Command::Put { topic: topic.as_bytes(), headers: vec![], id: id.map(str::as_bytes), body: vec![body] }
}

/// Nothing but NOOPs arrive within `wait`.
fn assert_nothing(c: &Client, wait: Duration, what: &str) {
    if let Some(frames) = c.recv_non_noop(wait) {
        panic!("{what}: unexpected {}", common::show(&frames));
    }
}

#[test]
fn unsub_and_disconnect_and_reconnect_drop_subscriptions() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let control = broker.client(&ctx);
    control.handshake(30_000);
    control.call(&sub("s", &["t"]));
    let (unsubbed, disconnected, reconnected) = (broker.client(&ctx), broker.client(&ctx), broker.client(&ctx));
    for c in [&unsubbed, &disconnected, &reconnected] {
        c.handshake(30_000);
        c.call(&sub("s", &["t", "u"]));
    }
    unsubbed.call(&Command::Unsub { id: Some(b"us"), queue: None, topics: vec![b"t", b"never-subscribed"] });
    disconnected.call(&Command::Disconnect { id: Some(b"d") });
    disconnected.handshake(30_000);
    // A CONNECT from a known routing id starts a fresh session.
    reconnected.handshake(30_000);

    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    publisher.call(&put("t", Some("p"), b"one"));
    // The control subscriber gets it, so the PUT has been routed.
    assert_eq!(control.expect_message().body, vec![b"one".to_vec()]);
    for (c, what) in [(&unsubbed, "unsubscribed"), (&disconnected, "disconnected"), (&reconnected, "reconnected")] {
        assert_nothing(c, Duration::from_millis(300), what);
    }
    // UNSUB left the other topic alone.
    publisher.call(&put("u", Some("p2"), b"two"));
    assert_eq!(unsubbed.expect_message().body, vec![b"two".to_vec()]);
}

#[test]
fn unknown_clients_get_not_connected_and_are_not_served() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let subscriber = broker.client(&ctx);
    subscriber.handshake(30_000);
    subscriber.call(&sub("s", &["t"]));
    let stranger = broker.client(&ctx);
    for command in [
        put("t", Some("1"), b"sneaky"),
        Command::Sub { id: Some(b"2"), queue: None, compact: false, topics: vec![b"t"] },
        Command::Unsub { id: Some(b"3"), queue: None, topics: vec![b"t"] },
        Command::Noop { id: Some(b"4") },
        Command::Disconnect { id: Some(b"5") },
    ] {
        stranger.send_command(&command);
        let (message, id) = stranger.expect_error();
        assert_eq!(message, NOT_CONNECTED);
        assert_eq!(id.as_deref().map(str::as_bytes), command.id());
    }
    // Without an ID the ERROR still comes (it is how a client learns the
    // broker restarted), just without ID.
    stranger.send_command(&put("t", None, b"sneaky"));
    assert_eq!(stranger.expect_error(), (NOT_CONNECTED.to_string(), None));
    assert_nothing(&subscriber, Duration::from_millis(300), "PUT from an unknown client");
}

#[test]
fn heartbeats_keep_a_live_client_and_expire_a_silent_one() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let silent = broker.client_with_id(&ctx, b"silent one");
    silent.handshake(300);
    silent.call(&sub("s", &["hb"]));
    let live = broker.client_with_id(&ctx, b"live one");
    live.handshake(600);
    live.call(&sub("s", &["hb"]));

    let expired = broker.log.wait_for(WAIT, |l| l.contains("client \"silent one\" expired"));
    assert!(expired.is_some(), "silent client expired; log:\n{}", broker.log.text());
    // It was sent heartbeats while it was silent.
    let frames = silent.recv(Duration::from_secs(1)).expect("a NOOP before expiry");
    assert_eq!(frames, vec![b"".to_vec(), b"NOOP".to_vec()]);

    // The live client talks (NOOP without ID, which gets no answer) for a
    // few TTLs; the broker heartbeats it too and never expires it.
    let mut noops = 0;
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        live.send_command(&Command::Noop { id: None });
        while let Some(frames) = live.recv(Duration::from_millis(100)) {
            assert_eq!(frames, vec![b"".to_vec(), b"NOOP".to_vec()], "only heartbeats");
            noops += 1;
        }
    }
    assert!(noops >= 1, "broker heartbeats a client it has nothing else to send");
    live.call(&Command::Noop { id: Some(b"still") });

    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    publisher.call(&put("hb", Some("p"), b"after expiry"));
    assert_eq!(live.expect_message().body, vec![b"after expiry".to_vec()]);
    assert_nothing(&silent, Duration::from_millis(300), "expired subscriber");
    silent.send_command(&Command::Noop { id: Some(b"x") });
    assert_eq!(silent.expect_error(), (NOT_CONNECTED.to_string(), Some("x".into())));
    assert!(!broker.log.text().contains("client \"live one\" expired"));
}

#[test]
fn client_with_the_wrong_server_key_gets_nothing() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let wrong = mc0::keys::KeyPair::generate().unwrap().public;
    let impostor = Client::connect(&ctx, &broker.endpoint(), Some(&wrong), None);
    impostor.send_command(&Command::Connect { version: b"0.3", ttl_ms: 30_000, id: Some(b"1") });
    assert!(impostor.recv(Duration::from_secs(2)).is_none(), "no answer without the right key");
    let plain = Client::connect(&ctx, &broker.endpoint(), None, None);
    plain.send_command(&Command::Connect { version: b"0.3", ttl_ms: 30_000, id: Some(b"2") });
    assert!(plain.recv(Duration::from_secs(1)).is_none(), "no answer without CURVE");
    let good = broker.client(&ctx);
    good.handshake(30_000);
}

#[test]
fn malformed_messages_get_errors_and_the_broker_keeps_serving() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let subscriber = broker.client(&ctx);
    subscriber.handshake(30_000);
    subscriber.call(&sub("s", &["t"]));
    let many_topics: Vec<Vec<u8>> = (0..5000).map(|i| format!("topic {i}").into_bytes()).collect();
    let mut too_many: Vec<&[u8]> = vec![b"", b"SUB", b"ID", b"many", b""];
    too_many.extend(many_topics.iter().map(|t| &t[..]));
    let long_topic = vec![b'x'; 2000];
    // (frames, expected ID, words the message must contain)
    type Case<'a> = (Vec<&'a [u8]>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![b"CONNECT", b"ID", b"1"], None, "delimiter"),
        (vec![b""], None, "verb"),
        (vec![b"", b""], None, "verb"),
        (vec![b"", b"noop", b"ID", b"2"], None, "noop"),
        (vec![b"", b"NOOP", b"ID"], None, "header"),
        (vec![b"", b"NOOP", b"ID", b"3", b"X-ODD"], None, "header"),
        (vec![b"", b"NOOP", b"\x00\x01", b"v"], None, "header name"),
        (vec![b"", b"FLY", b"ID", b"4"], Some("4"), "FLY"),
        (vec![b"", b"PUT", b"ID", b"5", b"", b"body"], Some("5"), "TOPIC"),
        (vec![b"", b"CONNECT", b"TTL", b"soon", b"VERSION", b"0.2", b"ID", b"6"], Some("6"), "TTL"),
        (vec![b"", b"CONNECT", b"ID", b"6b", b"TTL", b"0"], Some("6b"), "TTL"),
        (vec![b"", b"SUB", b"ID", b"7"], Some("7"), "topics"),
        (vec![b"", b"SUB", b"ID", b"8", b""], Some("8"), "topics"),
        (vec![b"", b"UNSUB", b"ID", b"9", b""], Some("9"), "topics"),
        (vec![b"", b"NOOP", b"ID", b"10", b"", b"junk"], Some("10"), "body"),
        (vec![b"", b"SUB", b"ID", b"11", b"", &long_topic], Some("11"), "topic"),
        (vec![b"\xff\x00garbage", b"\x01\x02"], None, "delimiter"),
        (vec![b"", b"\xff\xfe\xfd"], None, "verb"),
        (too_many, Some("many"), "frames"),
    ];
    for (shape, client) in [("connected", &subscriber), ("unknown", &broker.client(&ctx))] {
        for (frames, id, words) in &cases {
            client.send(frames);
            let (message, got_id) = client.expect_error();
            assert_eq!(got_id.as_deref(), *id, "{shape} {}: {message}", common::show_refs(frames));
            assert!(message.contains(words), "{shape} {}: {message:?} lacks {words:?}", common::show_refs(frames));
        }
        // Exactly one ERROR per bad command: the next reply is this OK.
        client.send_command(&Command::Noop { id: Some(b"alive") });
        if shape == "connected" {
            client.expect_ok("alive");
        } else {
            assert_eq!(client.expect_error().0, NOT_CONNECTED);
        }
    }
    // The connected client kept its session and subscription throughout.
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    publisher.call(&put("t", Some("p"), b"still here"));
    assert_eq!(subscriber.expect_message().body, vec![b"still here".to_vec()]);
}

/// Without CURVE there is no key to tell a reconnect from a takeover:
/// as with the legacy brokers, the newest connection gets the routing id.
/// (With CURVE it stays with its connection: `tests/broker_identity.rs`.)
#[test]
fn without_curve_the_newest_connection_takes_the_routing_id() {
    let broker = Mc0d::start_with(Mc0dOptions { curve: false, ..Default::default() });
    let ctx = zmq::Context::new();
    let id = b"node1.example 4242 main";
    let old = broker.client_with_id(&ctx, id);
    old.handshake(30_000);
    old.call(&sub("s", &["t"]));
    let new = broker.client_with_id(&ctx, id);
    new.handshake(30_000);
    new.call(&sub("s2", &["t"]));
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    publisher.call(&put("t", Some("p"), b"to the newest"));
    let m = new.expect_message();
    assert_eq!(m.body, vec![b"to the newest".to_vec()]);
    assert_eq!((m.sender, m.sender_key), (None, None), "no key, no stamp");
    assert_nothing(&new, Duration::from_millis(200), "one copy only");
    assert_nothing(&old, Duration::from_millis(200), "replaced connection");
    assert!(broker.log.text().contains("reconnected"), "{}", broker.log.text());
}

#[test]
fn legacy_connector_request_reply() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let node = broker.client_with_id(&ctx, common::LEGACY_NODE.as_bytes());
    let client = broker.client_with_id(&ctx, common::LEGACY_CLIENT.as_bytes());
    common::legacy_request_reply(&node, &client);
}
