//! libmc0's side of queues and message expiry against the real `mc0d`:
//! a publish whose time-to-live runs out while the broker is down is never
//! sent, queue consumers acknowledge on receive (or explicitly), and what
//! a consumer did not acknowledge is redelivered, marked.

mod common;

use std::time::Duration;

use common::{wait_until, Mc0d, CONNECTOR_WAIT as WAIT};
use mc0::connector::{Connector, ErrorKind};

const TOPIC: &str = "mcollective reply client1 async";

fn connect(broker: &Mc0d, name: &str, extra: &[(&str, &str)]) -> Connector {
    let mut config = broker.config(name);
    for (k, v) in extra {
        config.set(k, v).unwrap();
    }
    Connector::connect(&config).unwrap_or_else(|e| panic!("connect {name}: {e}; broker log:\n{}", broker.log.text()))
}

fn nothing_within(c: &Connector, wait: Duration) {
    match c.receive(wait) {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

#[test]
fn a_publish_whose_ttl_runs_out_while_the_broker_is_down_is_never_sent() {
    let mut broker = Mc0d::start();
    let listener = connect(&broker, "listener", &[("heartbeat", "1")]);
    listener.subscribe("news").unwrap();
    let publisher = connect(&broker, "publisher", &[]);
    broker.kill();
    assert!(wait_until(WAIT, || publisher.stats().reconnects >= 1), "publisher never noticed");
    publisher.publish_with_ttl("news", &[], b"stale", Some(Duration::from_millis(200))).unwrap();
    publisher.publish_with_ttl("news", &[], b"fresh", Some(Duration::from_secs(60))).unwrap();
    publisher.publish("news", &[], b"no ttl").unwrap();
    // The point is time passing: the short TTL runs out while the broker is down.
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
    publisher.flush(WAIT).unwrap();
    let stats = publisher.stats();
    assert_eq!((stats.expired, stats.published), (1, 2), "{stats:?}");
    // The listener re-subscribes by itself (1 s heartbeat); what it gets
    // after that is only what was sent.
    assert!(wait_until(WAIT, || listener.stats().handshakes >= 2), "listener never came back");
    for _ in 0..2 {
        publisher.publish("news", &[], b"probe").unwrap();
    }
    let mut bodies = Vec::new();
    while let Ok(m) = listener.receive(Duration::from_millis(500)) {
        bodies.push(String::from_utf8(m.body).unwrap());
    }
    assert!(!bodies.iter().any(|b| b == "stale"), "{bodies:?}");
    assert!(bodies.iter().any(|b| b == "probe"), "{bodies:?}");
    assert!(publisher.publish_with_ttl("news", &[], b"x", Some(Duration::ZERO)).is_err(), "a TTL of 0 is refused");
}

#[test]
fn queue_consumers_ack_on_receive_or_explicitly_and_unacknowledged_ones_come_back() {
    let broker = Mc0d::start_args(&["--queue", &format!("{TOPIC}=async")]);
    let publisher = connect(&broker, "publisher", &[]);
    for n in 0..3 {
        publisher.publish_with_ttl(TOPIC, &[], format!("reply {n}").as_bytes(), Some(Duration::from_secs(60))).unwrap();
    }
    publisher.flush(WAIT).unwrap();

    // Explicit acks: takes all three, acknowledges only the first, dies.
    let first = connect(&broker, "client1", &[("explicit_ack", "true")]);
    first.subscribe_queue(TOPIC, "async").unwrap();
    let got: Vec<_> = (0..3).map(|_| first.receive(WAIT).unwrap()).collect();
    assert_eq!(got[0].body, b"reply 0");
    assert!(got.iter().all(|m| m.delivery().is_some() && !m.redelivered()));
    // libmc0 asked for compact deliveries; the application sees the
    // classic headers all the same.
    assert_eq!(got[0].header(mc0::protocol::QUEUE), Some(&b"async"[..]), "{:?}", got[0]);
    assert!(got[0].header(mc0::protocol::QUEUE_DELIVERY).is_none(), "{:?}", got[0]);
    first.ack(&got[0]).unwrap();
    // The ACK is on its way before close's DISCONNECT (one socket, in order).
    first.close().unwrap();

    // Acks on receive (the default): the other two come back, marked.
    let second = connect(&broker, "client1", &[]);
    second.subscribe_queue(TOPIC, "async").unwrap();
    let again: Vec<_> = (0..2).map(|_| second.receive(WAIT).unwrap()).collect();
    assert_eq!(
        again.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"reply 1".to_vec(), b"reply 2".to_vec()]
    );
    assert!(again.iter().all(|m| m.redelivered()), "{again:?}");
    second.close().unwrap();

    // Acknowledged on receive: nothing comes a third time.
    let third = connect(&broker, "client1", &[]);
    third.subscribe_queue(TOPIC, "async").unwrap();
    nothing_within(&third, Duration::from_millis(500));
    assert!(third.subscribe(TOPIC).is_err(), "a topic is held one way only");
}
