//! The expiry and queue additions (docs/PROTOCOL.md "Queues and expiry")
//! next to legacy peers: libmc0 behind a broker that knows only the
//! original protocol (`common::LegacyBroker`), and legacy-shaped clients
//! (raw frames as the legacy Ruby connector sends them) on `mc0d` with
//! queues. The legacy brokers themselves are not available here: the
//! legacy-like broker follows the original protocol document.

mod common;

use std::time::Duration;

use common::{Client, LegacyBroker, Mc0d, TempDir, CONNECTOR_WAIT as WAIT};
use mc0::connector::{Connector, ErrorKind};
use mc0::protocol::{Command, Reply, COMPACT, DELIVERY, EXPIRES_IN, QUEUE, QUEUE_DELIVERY, REDELIVERED};

const TOPIC: &str = "mcollective reply admin async";
/// Headers only a queue consumer may see.
const QUEUE_ONLY: [&str; 4] = [QUEUE, DELIVERY, REDELIVERED, QUEUE_DELIVERY];

fn connect(config: &mc0::connector::Config) -> Connector {
    Connector::connect(config).unwrap_or_else(|e| panic!("connect: {e}"))
}

fn nothing_more(c: &Connector) {
    let extra = c.receive(Duration::from_millis(300));
    assert!(extra.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout), "unexpected: {extra:?}");
}

#[test]
fn expires_in_passes_through_a_legacy_broker_intact() {
    let dir = TempDir::new("legacy-ttl");
    let broker = LegacyBroker::start(&dir);
    let subscriber = connect(&broker.config(&dir, "sub"));
    subscriber.subscribe(TOPIC).unwrap();
    // A legacy-shaped client too, subscribed with the legacy connector's frames.
    let ctx = zmq::Context::new();
    let public = mc0::keys::read_key_file(dir.path().join("legacy.public")).unwrap();
    let legacy = Client::connect(&ctx, &format!("tcp://127.0.0.1:{}", broker.port), Some(&public), None);
    legacy.send(&[&b""[..], b"CONNECT", b"ID", b"1", b"TTL", b"30000", b"VERSION", b"0.2"]);
    legacy.expect_ok("1");
    legacy.send(&[&b""[..], b"SUB", b"ID", b"2", b"", TOPIC.as_bytes()]);
    legacy.expect_ok("2");

    let publisher = connect(&broker.config(&dir, "pub"));
    let body = b"\x04\x08binary\0body\xff".to_vec();
    publisher.publish_with_ttl(TOPIC, &[("X-A", b"1")], &body, Some(Duration::from_secs(60))).unwrap();
    publisher.flush(WAIT).unwrap();

    let m = subscriber.receive(WAIT).unwrap();
    assert_eq!((m.topic.as_str(), &m.body[..]), (TOPIC, &body[..]), "delivered intact");
    assert_eq!(m.header("X-A"), Some(&b"1"[..]));
    let left: u64 = std::str::from_utf8(m.header(EXPIRES_IN).expect("EXPIRES-IN copied")).unwrap().parse().unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
    assert_eq!((m.delivery(), m.redelivered()), (None, false));
    let raw = legacy.expect_message();
    assert_eq!((&raw.topic[..], &raw.body.concat()[..]), (TOPIC.as_bytes(), &body[..]));
    let mut names: Vec<&[u8]> = raw.headers.iter().map(|(k, _)| &k[..]).collect();
    names.sort();
    // A plain MESSAGE; the legacy connector ignores the header it does not know.
    assert_eq!(names, vec![EXPIRES_IN.as_bytes(), &b"X-A"[..]]);
    let stats = publisher.stats();
    assert_eq!((stats.published, stats.expired), (1, 0), "{stats:?}");
}

#[test]
fn a_queue_subscription_behind_a_legacy_broker_is_a_plain_one_and_never_acknowledged() {
    let dir = TempDir::new("legacy-queue");
    let broker = LegacyBroker::start(&dir);
    let auto = connect(&broker.config(&dir, "auto"));
    auto.subscribe_queue(TOPIC, "async").unwrap();
    let mut explicit_config = broker.config(&dir, "explicit");
    explicit_config.set("explicit_ack", "true").unwrap();
    let explicit = connect(&explicit_config);
    explicit.subscribe_queue(TOPIC, "async").unwrap();
    // The broker heard SUB with QUEUE and the ask for compact deliveries
    // (headers it does not know), and subscribed the body's topic.
    let subs: Vec<_> = broker.heard().into_iter().filter(|h| h.verb == "SUB").collect();
    assert_eq!(subs.len(), 2);
    for sub in &subs {
        assert!(sub.headers.contains(&(QUEUE.as_bytes().to_vec(), b"async".to_vec())), "{sub:?}");
        assert!(sub.headers.contains(&(COMPACT.as_bytes().to_vec(), b"1".to_vec())), "{sub:?}");
        assert_eq!(sub.body, vec![TOPIC.as_bytes().to_vec()]);
    }

    let publisher = connect(&broker.config(&dir, "pub"));
    for body in ["one", "two", "three"] {
        publisher.publish(TOPIC, &[], body.as_bytes()).unwrap();
    }
    publisher.flush(WAIT).unwrap();
    // Plain subscriptions: each consumer gets every message, unmarked.
    for consumer in [&auto, &explicit] {
        for want in ["one", "two", "three"] {
            let m = consumer.receive(WAIT).unwrap();
            assert_eq!(m.body, want.as_bytes());
            for name in QUEUE_ONLY {
                assert!(m.header(name).is_none(), "{name} from a legacy broker: {m:?}");
            }
            consumer.ack(&m).expect("acknowledging a plain message does nothing");
        }
        nothing_more(consumer);
    }
    // No ACK ever reached the legacy broker (it would answer it with ERROR).
    publisher.publish(TOPIC, &[], b"marker").unwrap();
    publisher.flush(WAIT).unwrap();
    for consumer in [&auto, &explicit] {
        assert_eq!(consumer.receive(WAIT).unwrap().body, b"marker");
        consumer.flush(WAIT).unwrap();
    }
    let verbs: Vec<String> = broker.heard().into_iter().map(|h| h.verb).collect();
    assert!(!verbs.iter().any(|v| v == "ACK"), "libmc0 acknowledged behind a legacy broker: {verbs:?}");
    assert!(verbs.iter().filter(|v| *v == "PUT").count() == 4, "{verbs:?}");
}

#[test]
fn legacy_clients_on_mc0d_with_queues_never_see_queue_headers() {
    let broker =
        Mc0d::start_args(&["--queue", "mcollective rpcutil=jobs", "--queue", "mcollective reply client 1234=replies"]);
    let ctx = zmq::Context::new();
    // A queue consumer of the node's topic (a new client), so the queue
    // hands deliveries out while the legacy clients talk.
    let consumer = broker.client(&ctx);
    consumer.handshake(60_000);
    consumer.call(&Command::Sub {
        id: Some(b"q"),
        queue: Some(b"jobs"),
        compact: false,
        topics: vec![b"mcollective rpcutil"],
    });
    let node = broker.client_with_id(&ctx, common::LEGACY_NODE.as_bytes());
    let client = broker.client_with_id(&ctx, common::LEGACY_CLIENT.as_bytes());
    // Frame for frame the legacy exchange, every header of what the legacy
    // clients receive checked exactly (so none of the queue's).
    let (requests, replies) = common::legacy_request_reply(&node, &client);
    assert_eq!((requests.len(), replies.len()), (2, 2));
    let job = consumer.expect_message();
    assert_eq!(job.topic, b"mcollective rpcutil");
    assert!(job.headers.iter().any(|(k, v)| k == QUEUE.as_bytes() && v == b"jobs"), "the queue was in use");

    // The consumer leaves without acknowledging: its delivery is taken back
    // and waits, marked; nothing of it reaches the plain subscribers.
    consumer.send_command(&Command::Disconnect { id: None });
    let c2 = broker.client(&ctx);
    c2.handshake(60_000);
    c2.call(&Command::Sub {
        id: Some(b"q"),
        queue: Some(b"jobs"),
        compact: false,
        topics: vec![b"mcollective rpcutil"],
    });
    let again = c2.expect_message();
    assert!(again.headers.iter().any(|(k, _)| k == REDELIVERED.as_bytes()), "{:?}", again.headers);
    for legacy in [&node, &client] {
        while let Some(frames) = legacy.recv(Duration::from_millis(300)) {
            let reply = Reply::parse(&frames, &Default::default()).expect("a reply of the original protocol");
            assert_eq!(reply, Reply::Noop, "only heartbeats are left for a legacy client: {}", common::show(&frames));
        }
    }
}
