//! Broker restarts seen by libmc0 connectors with the default 30 s
//! heartbeat: the connectors notice the closed connection at once (socket
//! monitor), reconnect as soon as the broker is back, send CONNECT and
//! re-make every subscription, whether the broker is the real `mc0d` (which
//! forgets them and answers "not connected") or behaves like the legacy
//! brokers (adopts any client silently and never says "not connected").
//! Publishes made while the broker is down wait in the connector and arrive
//! once each after its return.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{wait_until, write_keys, LegacyBroker, Mc0d, TempDir, CONNECTOR_WAIT as WAIT};
use mc0::connector::Config;
use mc0::connector::{Connector, ErrorKind};

/// The bound the issue sets: subscribed again this soon after the broker is
/// back (libmc0's TCP retry interval is at most 1 s, plus jitter and the
/// handshake; see TCP_RETRY_MAX in src/connector/transport.rs).
const BACK_WITHIN: Duration = Duration::from_secs(2);
const SUBSCRIBERS: usize = 5;
/// How long the broker stays down: long enough for libzmq's reconnect
/// interval to reach its cap (0.1 s doubling to 1 s), as in a real restart.
const OUTAGE: Duration = Duration::from_secs(3);

fn topic(i: usize) -> String {
    format!("mcollective news-{i}")
}

fn connect(config: &Config, what: &str) -> Connector {
    Connector::connect(config).unwrap_or_else(|e| panic!("connect {what}: {e}"))
}

/// The connectors of a restart test: subscribers with a topic each, and a
/// publisher ("echo") subscribed to what it publishes.
struct Fleet {
    subscribers: Vec<Connector>,
    echo: Connector,
}

const ECHO: &str = "mcollective echo";

impl Fleet {
    /// Connects and subscribes everyone, with `config(name)`.
    fn new(config: impl Fn(&str) -> Config) -> Fleet {
        let subscribers: Vec<Connector> = (0..SUBSCRIBERS)
            .map(|i| {
                let c = connect(&config(&format!("sub-{i}")), "subscriber");
                c.subscribe(&topic(i)).unwrap();
                c
            })
            .collect();
        let echo = connect(&config("echo"), "echo");
        echo.subscribe(ECHO).unwrap();
        echo.publish(ECHO, &[], b"before").unwrap();
        assert_eq!(echo.receive(WAIT).unwrap().body, b"before");
        // Its MESSAGE can arrive before its OK: settled before the kill.
        echo.flush(WAIT).unwrap();
        assert_eq!(echo.settings().ttl_ms, 30_000, "the default heartbeat");
        Fleet { subscribers, echo }
    }

    /// Once the broker is dead: waits until every connector has seen its
    /// connection close, then publishes `n` messages; returns their bodies.
    fn publish_while_down(&self, n: usize) -> Vec<String> {
        let all: Vec<&Connector> = self.subscribers.iter().chain([&self.echo]).collect();
        let noticed = wait_until(WAIT, || all.iter().all(|c| c.stats().reconnects >= 1));
        let stats: Vec<_> = all.iter().map(|c| c.stats()).collect();
        assert!(noticed, "not every connector noticed the broker's death within {WAIT:?}: {stats:?}");
        let bodies: Vec<String> = (0..n).map(|n| format!("published while down {n}")).collect();
        for body in &bodies {
            self.echo.publish(ECHO, &[], body.as_bytes()).unwrap();
        }
        bodies
    }

    /// After the broker's return: what was published while it was down comes
    /// back once each, in order, and nothing else follows; then each
    /// subscriber gets a message published now.
    fn expect_everything_delivered(&self, queued: &[String]) {
        let echo = &self.echo;
        for want in queued {
            let m = echo.receive(WAIT).unwrap_or_else(|e| panic!("{want}: {e}; stats {:?}", echo.stats()));
            assert_eq!(String::from_utf8_lossy(&m.body), *want, "in order, once each");
        }
        echo.flush(WAIT).unwrap();
        let extra = echo.receive(Duration::from_millis(300));
        assert!(extra.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout), "a duplicate: {extra:?}");
        let stats = echo.stats();
        assert_eq!((stats.published, stats.publishes_dropped), (queued.len() as u64 + 1, 0), "{stats:?}");
        for (i, sub) in self.subscribers.iter().enumerate() {
            echo.publish(&topic(i), &[], b"after the restart").unwrap();
            let m = sub.receive(WAIT).unwrap_or_else(|e| panic!("subscriber {i}: {e}; {:?}", sub.stats()));
            assert_eq!((m.topic.as_str(), &m.body[..]), (topic(i).as_str(), &b"after the restart"[..]));
        }
    }
}

#[test]
fn mc0d_killed_and_restarted_every_subscription_is_back_within_2s() {
    let mut broker = Mc0d::start_debug();
    let fleet = Fleet::new(|name| broker.config(name));
    broker.kill();
    let queued = fleet.publish_while_down(50);
    std::thread::sleep(OUTAGE);
    let from = broker.log.len();
    let back = Instant::now();
    broker.restart();
    let mut took = BTreeMap::new();
    for i in 0..SUBSCRIBERS {
        let want = format!("subscribed to \"{}\"", topic(i));
        let line = broker.log.wait_for_after(from, WAIT, |l| l.contains(&want));
        assert!(line.is_some(), "subscriber {i} never re-subscribed; log:\n{}", broker.log.text());
        took.insert(i, back.elapsed());
    }
    eprintln!("MEASURE mc0d restart (heartbeat 30 s): re-subscribed after {took:?} (from the restart's start)");
    for (i, t) in &took {
        assert!(*t <= BACK_WITHIN, "subscriber {i} re-subscribed {t:?} after the restart; log:\n{}", broker.log.text());
    }
    fleet.expect_everything_delivered(&queued);
}

#[test]
fn legacy_broker_restarted_every_subscription_is_back_within_2s() {
    let dir = TempDir::new("legacy");
    let mut broker = LegacyBroker::start(&dir);
    let fleet = Fleet::new(|name| broker.config(&dir, name));
    broker.kill();
    let queued = fleet.publish_while_down(50);
    std::thread::sleep(OUTAGE);
    let back = Instant::now();
    broker.restart();
    let want: HashSet<String> = (0..SUBSCRIBERS).map(topic).collect();
    let all_back = wait_until(WAIT, || broker.subscribed_since(back).is_superset(&want));
    let took = back.elapsed();
    eprintln!("MEASURE legacy broker restart (heartbeat 30 s): every subscription back after {took:?}");
    let missing: Vec<String> = want.difference(&broker.subscribed_since(back)).cloned().collect();
    assert!(all_back, "never re-subscribed behind a legacy broker: {missing:?}");
    assert!(took <= BACK_WITHIN, "subscriptions back only after {took:?}");
    fleet.expect_everything_delivered(&queued);
}

#[test]
fn an_unknown_broker_host_fails_at_once_naming_it() {
    let dir = TempDir::new("resolve");
    let (_, broker_public, _) = write_keys(dir.path(), "broker");
    let (_, public, private) = write_keys(dir.path(), "me");
    let config = Config::from_pairs([
        ("broker.host", "no-such-host.invalid"),
        ("broker.public_key", broker_public.to_str().unwrap()),
        ("public_key", public.to_str().unwrap()),
        ("private_key", private.to_str().unwrap()),
        ("connect_timeout", "60"),
    ])
    .unwrap();
    let started = Instant::now();
    let e = Connector::connect(&config).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Resolve, "{e}");
    assert!(e.message().contains("cannot resolve") && e.message().contains("\"no-such-host.invalid\""), "{e}");
    // At once here (a few ms); the bound leaves room for a slow resolver.
    assert!(took < Duration::from_secs(20), "took {took:?}, not at once (connect_timeout is 60 s)");
}
