//! Failover across a pool of real, independent `mc0d` brokers (issue 13):
//! `kill -9` the broker a connector is on and it is subscribed on the next
//! one within 2 heartbeats, receives what is published there, and what it
//! published meanwhile arrives there exactly once. Connecting with a pool
//! skips dead brokers, and fails naming each one when none answers.
//!
//! The pool order is not randomised here (`randomize = false`), so the test
//! knows which broker comes next.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, wait_until, write_keys, Mc0d, CONNECTOR_WAIT as WAIT};
use mc0::connector::{Config, Connector, ErrorKind};
use mc0::log::Level;

const HEARTBEAT: Duration = Duration::from_secs(2);
const TOPIC: &str = "mcollective.failover";
const ECHO: &str = "mcollective.failover.echo";

/// A pool config in MCollective's `pool.N.*` form, each broker with its own
/// key file; `ports` may name ports where nothing listens.
fn pool_config(brokers: &[&Mc0d], extra_ports: &[u16], name: &str) -> Config {
    let dir = &brokers[0].dir;
    let (_, public, private) = write_keys(dir.path(), name);
    let mut pairs: Vec<(String, String)> = vec![
        ("identity".into(), name.into()),
        ("public_key".into(), public.display().to_string()),
        ("private_key".into(), private.display().to_string()),
        ("randomize".into(), "false".into()),
        ("heartbeat".into(), HEARTBEAT.as_secs_f64().to_string()),
        ("connect_timeout".into(), "4".into()),
        ("pool.size".into(), (extra_ports.len() + brokers.len()).to_string()),
    ];
    // Dead ports first, so connecting has to skip them.
    let entries = extra_ports
        .iter()
        .map(|port| (*port, brokers[0].server_public_file()))
        .chain(brokers.iter().map(|b| (b.port, b.server_public_file())));
    for (n, (port, key)) in entries.enumerate() {
        let n = n + 1;
        pairs.push((format!("pool.{n}.host"), "127.0.0.1".into()));
        pairs.push((format!("pool.{n}.port"), port.to_string()));
        pairs.push((format!("pool.{n}.public_key"), key.display().to_string()));
    }
    Config::from_pairs(pairs).unwrap_or_else(|e| panic!("{e}"))
}

fn connect(config: &Config, what: &str) -> Connector {
    Connector::connect(config).unwrap_or_else(|e| panic!("connect {what}: {e}"))
}

#[test]
fn kill_9_the_broker_a_connector_is_on_and_it_moves_to_the_next() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    mc0::connector::set_logger(
        Some(Arc::new(move |level, line: &str| {
            if level == Level::Warn {
                sink.lock().unwrap().push(line.to_string());
            }
        })),
        Level::Warn,
    );
    let mut first = Mc0d::start_debug();
    let second = Mc0d::start_debug();
    let third = Mc0d::start_debug();
    let node = connect(&pool_config(&[&first, &second, &third], &[], "node"), "node");
    assert_eq!(node.server().port, first.port, "not randomised: the first broker");
    node.subscribe(TOPIC).unwrap();
    // Others stay on the second broker: one publishes to the node's topic,
    // one listens to what the node publishes.
    let other = connect(&second.config("other"), "other");
    let listener = connect(&second.config("listener"), "listener");
    listener.subscribe(ECHO).unwrap();

    let from = second.log.len();
    let killed = Instant::now();
    first.kill();
    // Published once the node knows the link is dead: the queue goes out
    // on the next broker, once each.
    assert!(wait_until(WAIT, || node.stats().reconnects >= 1), "the node did not notice: {:?}", node.stats());
    let queued: Vec<String> = (0..20).map(|i| format!("queued {i}")).collect();
    for body in &queued {
        node.publish(ECHO, &[], body.as_bytes()).unwrap();
    }
    let want = format!("subscribed to \"{TOPIC}\"");
    let line = second.log.wait_for_after(from, WAIT, |l| l.contains(&want) && l.contains("node"));
    let took = killed.elapsed();
    assert!(line.is_some(), "the node never subscribed on the second broker; its log:\n{}", second.log.text());
    eprintln!("MEASURE failover after kill -9 (heartbeat {HEARTBEAT:?}): subscribed on the next broker after {took:?}");
    assert!(took <= 2 * HEARTBEAT, "subscribed on the next broker only after {took:?}");

    // A PUT sent there reaches it.
    other.publish(TOPIC, &[], b"after the failover").unwrap();
    let m = node.receive(WAIT).unwrap_or_else(|e| panic!("{e}; {:?}", node.stats()));
    assert_eq!(m.body, b"after the failover");
    // What it queued meanwhile arrives once each, in order.
    for want in &queued {
        let m = listener.receive(WAIT).unwrap_or_else(|e| panic!("{want}: {e}; node {:?}", node.stats()));
        assert_eq!(String::from_utf8_lossy(&m.body), *want);
    }
    node.flush(WAIT).unwrap();
    let extra = listener.receive(Duration::from_millis(300));
    assert!(extra.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout), "a duplicate: {extra:?}");

    let stats = node.stats();
    assert_eq!((stats.failovers, stats.broker, stats.published), (1, 1, 20), "{stats:?}");
    assert_eq!(node.server().port, second.port);
    // The log sink is process-wide: the other test's lines are there too.
    let left = format!("failing over from broker 127.0.0.1:{}", first.port);
    let moves: Vec<String> = lines.lock().unwrap().iter().filter(|l| l.contains(&left)).cloned().collect();
    let want = format!("{left} to 127.0.0.1:{}", second.port);
    assert!(moves.len() == 1 && moves[0].contains(&want), "one warning naming from and to: {moves:?}");
    mc0::connector::set_logger(None, Level::Error);
}

#[test]
fn connecting_with_a_pool_skips_dead_brokers_and_names_each_when_none_answers() {
    let live = Mc0d::start();
    let dead = [free_port(), free_port()];
    let node = connect(&pool_config(&[&live], &dead, "node"), "a pool with two dead brokers first");
    assert_eq!(node.server().port, live.port);
    assert_eq!(node.stats().failovers, 2);
    node.subscribe(TOPIC).unwrap();
    drop(node);

    let mut gone = Mc0d::start();
    let config = pool_config(&[&gone], &dead, "lonely");
    gone.kill();
    let started = Instant::now();
    let Err(e) = Connector::connect(&config) else { panic!("connected, but no broker answers") };
    assert!(started.elapsed() < Duration::from_secs(4) + Duration::from_secs(2), "{:?}", started.elapsed());
    for port in dead.iter().chain([&gone.port]) {
        assert!(e.message().contains(&format!("127.0.0.1:{port}")), "names broker {port}: {e}");
    }
}
