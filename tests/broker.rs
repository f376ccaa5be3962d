//! The real `mc0d` over CURVE on loopback: handshake, acks, fan-out,
//! subscriptions, heartbeats and expiry.

mod common;

use std::time::Duration;

use common::{Client, Mc0d};
use mc0::protocol::{Command, NOT_CONNECTED};

fn sub<'a>(id: &'a str, topics: &[&'a str]) -> Command<'a> {
    Command::Sub { id: Some(id.as_bytes()), topics: topics.iter().map(|t| t.as_bytes()).collect() }
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
    }
    // A topic nobody subscribes to is acknowledged and dropped.
    publisher.call(&Command::Put { topic: b"nobody", headers: vec![], id: Some(b"p2"), body: vec![b"x"] });
    for s in &subs {
        assert!(s.recv_non_noop(Duration::from_millis(300)).is_none());
    }
}
