//! `mc0d --cluster`: three real `nats-server`s clustered over routes on
//! loopback, three real `mc0d`s each joined to one of them, raw DEALER
//! clients on each broker. Deliveries across brokers exactly once, with the
//! first broker's stamp; directed and reply topics; UNSUB and expiry drop
//! the broker's NATS interest (seen in nats-server's monitoring endpoint);
//! bodies over NATS's max_payload refused; and the faults: a NATS server
//! killed, all of NATS gone (local traffic goes on, the status line counts
//! what was not forwarded) and back (interest restored), or not there yet
//! when a broker starts (its subscriptions reach NATS once it is up).
//! Queues hold their topic's interest: a queue on one broker keeps what is
//! published on another while no consumer of it runs.
//!
//! Skipped (with a message) where `nats-server` is not installed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Client, LogBuf, Mc0d, Mc0dOptions, TempDir, WAIT};
use mc0::protocol::{Command, DELIVERY, EXPIRES_IN, QUEUE};

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const MAX_PAYLOAD: usize = 65_536;
const BROADCAST: &[u8] = b"mcollective rpcutil";
/// How long one probe waits for its copy before the next is sent.
const PROBE_WAIT: Duration = Duration::from_millis(200);

/// One nats-server of the test cluster; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    http: u16,
    conf: PathBuf,
    log: LogBuf,
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the server and waits until it is ready. A fresh cluster's
    /// ports may have been taken since they were picked: a server that
    /// stops with a fatal error (`[FTL]`, e.g. "address already in use")
    /// is reported at once.
    fn try_spawn(&mut self) -> Result<(), String> {
        let from = self.log.len();
        let mut child = Process::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().unwrap();
        let sink = self.log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.push(&line);
            }
        });
        self.child = Some(child);
        match self.log.wait_for_after(from, WAIT, |l| l.contains("Server is ready") || l.contains("[FTL]")) {
            Some(line) if line.contains("Server is ready") => Ok(()),
            _ => Err(format!("nats-server on port {} did not start:\n{}", self.port, self.log.text())),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET on the monitoring port, as JSON.
    fn monitor(&self, path: &str) -> serde_json::Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http)).expect("connect to nats monitoring");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("bad JSON from {path}: {e}: {body}"))
    }

    /// The subjects the clients of this server subscribe to.
    fn client_subjects(&self) -> Vec<String> {
        let connz = self.monitor("/connz?subs=1");
        let mut subjects: Vec<String> = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["subscriptions_list"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        subjects.sort();
        subjects
    }

    /// The subjects the other servers told this one their clients want.
    fn route_subjects(&self) -> Vec<String> {
        let routez = self.monitor("/routez?subs=1");
        routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["subscriptions_list"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }

    fn routes(&self) -> u64 {
        self.monitor("/routez")["num_routes"].as_u64().unwrap_or(0)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nats-servers routed to each other, ready (every route up). Their
/// ports are picked free beforehand and may be taken meanwhile by a test
/// running beside: a cluster that does not come up is tried again on new
/// ports.
fn nats_cluster(dir: &TempDir) -> Vec<Nats> {
    on_fresh_ports("a NATS cluster", || {
        let mut servers = nats_configs(dir);
        servers.iter_mut().try_for_each(Nats::try_spawn).and_then(|()| routes_up(&servers))?;
        Ok(servers)
    })
}

/// Runs `attempt` until it gets its nats-servers up, each time on new
/// ports, at most 3 times; an `Err` is a server that did not come up.
fn on_fresh_ports<T>(what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    const ATTEMPTS: usize = 3;
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        match attempt() {
            Ok(done) => return done,
            Err(e) => failures.push(e),
        }
    }
    panic!("no {what} in {ATTEMPTS} attempts, each on new ports:\n{}", failures.join("\n---\n"));
}

/// The three servers of [`nats_cluster`], configured, none started.
fn nats_configs(dir: &TempDir) -> Vec<Nats> {
    let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, &(port, http, route))| {
            let routes: Vec<String> =
                ports.iter().filter(|p| p.2 != route).map(|p| format!("nats-route://127.0.0.1:{}", p.2)).collect();
            let conf = dir.path().join(format!("nats-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
                     max_payload: {MAX_PAYLOAD}\n\
                     cluster {{\n  name: mc0test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ),
            )
            .unwrap();
            Nats { child: None, port, http, conf, log: LogBuf::default() }
        })
        .collect()
}

fn wait_routes(servers: &[Nats]) {
    routes_up(servers).unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until every server has its two routes.
fn routes_up(servers: &[Nats]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while servers.iter().any(|s| s.routes() < 2) {
        if Instant::now() >= deadline {
            return Err(format!(
                "the NATS routes did not come up: {:?}\n{}",
                servers.iter().map(Nats::routes).collect::<Vec<_>>(),
                servers.iter().map(|s| s.log.text()).collect::<Vec<_>>().join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A CURVE mc0d joined to the cluster through `urls`.
fn broker(urls: &[String], extra: &[&str]) -> Mc0d {
    let mut args = vec!["--cluster".to_string(), urls.join(","), "--status-interval".into(), "1".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let broker = Mc0d::start_with(Mc0dOptions { args, ..Default::default() });
    broker
        .log
        .wait_for(WAIT, |l| l.contains("connected to NATS server"))
        .unwrap_or_else(|| panic!("mc0d did not connect to NATS:\n{}", broker.log.text()));
    broker
}

fn subscriber(ctx: &zmq::Context, broker: &Mc0d, topics: &[&[u8]]) -> Client {
    let client = broker.client(ctx);
    client.handshake(60_000);
    client.call(&Command::Sub { id: Some(b"sub"), topics: topics.to_vec(), queue: None, compact: false });
    client
}

fn put(client: &Client, topic: &[u8], body: &[u8]) {
    client.send_command(&Command::Put { topic, headers: vec![(b"X-TEST", b"a\0b\xff")], id: None, body: vec![body] });
}

/// The next MESSAGE's body (skipping NOOPs), if one comes within `wait`.
fn next_body(client: &Client, wait: Duration) -> Option<Vec<u8>> {
    client.recv_non_noop(wait).map(|frames| common::Message::from_frames(&frames).body.concat())
}

/// PUTs probes to `topic` through `from` until each of `to` got one (NATS
/// propagates interest between servers asynchronously), then drains them:
/// a marker PUT afterwards is the next thing each receives.
fn until_delivered(from: &Client, topic: &[u8], to: &[&Client], within: Duration) {
    let deadline = Instant::now() + within;
    let mut waiting: Vec<&Client> = to.to_vec();
    let mut n = 0;
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "no probe to {} arrived within {within:?}", topic.escape_ascii());
        n += 1;
        put(from, topic, format!("probe {n}").as_bytes());
        waiting.retain(|c| next_body(c, PROBE_WAIT).is_none());
    }
    let marker = b"marker after probes";
    put(from, topic, marker);
    for client in to {
        loop {
            let body = next_body(client, WAIT).expect("the marker after the probes");
            if body == marker {
                break;
            }
            assert!(body.starts_with(b"probe "), "unexpected {}", body.escape_ascii());
        }
    }
}

fn have_nats() -> bool {
    if std::path::Path::new(NATS_SERVER).exists() {
        return true;
    }
    eprintln!("skipped: {NATS_SERVER} is not installed (apt-get install nats-server)");
    false
}

/// Waits until `pred` holds for the subjects `nats`'s clients hold.
fn wait_subjects(nats: &Nats, what: &str, pred: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let subjects = nats.client_subjects();
        if pred(&subjects) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: subjects are {subjects:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_brokers_share_topics_through_nats() {
    if !have_nats() {
        return;
    }
    let dir = TempDir::new("cluster");
    let nats = nats_cluster(&dir);
    let brokers: Vec<Mc0d> = nats.iter().map(|n| broker(&[n.url()], &[])).collect();
    let ctx = zmq::Context::new();
    let node_b: &[u8] = b"mcollective nodes node-b.example.com";
    let reply: &[u8] = b"mcollective reply client-a 1234";
    let other: &[u8] = b"mcollective discovery";
    let subs: Vec<Client> = brokers.iter().map(|b| subscriber(&ctx, b, &[BROADCAST, other])).collect();
    let directed = subscriber(&ctx, &brokers[1], &[node_b]);
    let replies = subscriber(&ctx, &brokers[0], &[reply]);
    let publisher = brokers[0].client(&ctx);
    publisher.handshake(60_000);
    // Readable subjects in NATS: the interest of broker B.
    wait_subjects(&nats[1], "B's interest", |s| {
        s.contains(&"mc0.mcollective.rpcutil".to_string())
            && s.contains(&"mc0.mcollective.nodes.node-b%2Eexample%2Ecom".to_string())
    });

    // Broadcast from A: once on A (local), B and C (through NATS).
    let all: Vec<&Client> = subs.iter().collect();
    until_delivered(&publisher, BROADCAST, &all, WAIT);
    put(&publisher, BROADCAST, b"the one");
    put(&publisher, other, b"end");
    let mut stamps = Vec::new();
    for (i, client) in subs.iter().enumerate() {
        let frames = client.recv_non_noop(WAIT).unwrap_or_else(|| panic!("broker {i}: no message"));
        let message = common::Message::from_frames(&frames);
        assert_eq!(message.body.concat(), b"the one", "broker {i}");
        assert_eq!(message.topic, BROADCAST);
        assert_eq!(message.headers, vec![(b"X-TEST".to_vec(), b"a\0b\xff".to_vec())], "headers intact");
        stamps.push(message.sender_key.clone().expect("stamped by broker A"));
        // Exactly once: the next message is the end marker on the other topic.
        assert_eq!(next_body(client, WAIT).as_deref(), Some(&b"end"[..]), "broker {i}: a duplicate");
    }
    assert!(stamps.iter().all(|s| *s == stamps[0]), "every broker shows A's stamp: {stamps:?}");

    // Directed request A → node on B, its reply C → client on A.
    until_delivered(&publisher, node_b, &[&directed], WAIT);
    put(&publisher, node_b, b"request for b");
    assert_eq!(next_body(&directed, WAIT).as_deref(), Some(&b"request for b"[..]));
    let node_c = brokers[2].client(&ctx);
    node_c.handshake(60_000);
    until_delivered(&node_c, reply, &[&replies], WAIT);
    put(&node_c, reply, b"reply from c");
    assert_eq!(next_body(&replies, WAIT).as_deref(), Some(&b"reply from c"[..]));

    // UNSUB on B: no more deliveries there, and B drops its NATS interest.
    subs[1].call(&Command::Unsub { id: Some(b"unsub"), topics: vec![BROADCAST], queue: None });
    wait_subjects(&nats[1], "B dropped its interest", |s| !s.contains(&"mc0.mcollective.rpcutil".to_string()));
    put(&publisher, BROADCAST, b"after unsub");
    put(&publisher, other, b"end 2");
    assert_eq!(next_body(&subs[1], WAIT).as_deref(), Some(&b"end 2"[..]), "B still got the broadcast");
    for still in [&subs[0], &subs[2]] {
        assert_eq!(next_body(still, WAIT).as_deref(), Some(&b"after unsub"[..]), "A and C still get it");
        assert_eq!(next_body(still, WAIT).as_deref(), Some(&b"end 2"[..]));
    }

    // Expiry on C: the only subscriber of a topic goes silent.
    let silent_topic: &[u8] = b"mcollective nodes short-lived";
    let silent = brokers[2].client(&ctx);
    silent.handshake(300);
    silent.call(&Command::Sub { id: Some(b"s"), topics: vec![silent_topic], queue: None, compact: false });
    wait_subjects(&nats[2], "C's interest", |s| s.contains(&"mc0.mcollective.nodes.short-lived".to_string()));
    brokers[2].log.wait_for(WAIT, |l| l.contains("expired")).expect("the silent client expires");
    wait_subjects(&nats[2], "C dropped the expired client's interest", |s| {
        !s.contains(&"mc0.mcollective.nodes.short-lived".to_string())
    });

    // A body over NATS's max_payload: a clear ERROR, delivered nowhere.
    let big = vec![b'x'; MAX_PAYLOAD + 1];
    publisher.send_command(&Command::Put { topic: BROADCAST, headers: vec![], id: Some(b"big"), body: vec![&big] });
    let (message, id) = publisher.expect_error();
    assert!(message.contains("max_payload"), "{message}");
    assert_eq!(id.as_deref(), Some("big"));
    put(&publisher, BROADCAST, b"small again");
    assert_eq!(next_body(&subs[0], WAIT).as_deref(), Some(&b"small again"[..]), "A got the refused body");
    assert!(brokers[0].log.text().contains("max_payload"), "and a log line");
}

#[test]
fn brokers_survive_nats_faults() {
    if !have_nats() {
        return;
    }
    let dir = TempDir::new("cluster-faults");
    let mut nats = nats_cluster(&dir);
    let urls: Vec<String> = nats.iter().map(Nats::url).collect();
    // B prefers the server that is killed first, but knows them all.
    let a = broker(&[urls[0].clone()], &["--metrics", "127.0.0.1:0"]);
    let metrics = common::metrics_address(&a);
    let b = broker(&[urls[1].clone(), urls[2].clone()], &[]);
    let ctx = zmq::Context::new();
    let local = subscriber(&ctx, &a, &[BROADCAST]);
    let remote = subscriber(&ctx, &b, &[BROADCAST]);
    let publisher = a.client(&ctx);
    publisher.handshake(60_000);
    until_delivered(&publisher, BROADCAST, &[&local, &remote], WAIT);

    // kill -9 the server B is connected to: B moves to another, within seconds.
    let connected_to_1 = !nats[1].client_subjects().is_empty();
    let victim = if connected_to_1 { 1 } else { 2 };
    nats[victim].kill(); // SIGKILL
    b.log.wait_for(WAIT, |l| l.contains("lost the NATS connection")).expect("B notices");
    until_delivered(&publisher, BROADCAST, &[&local, &remote], Duration::from_secs(8));

    // All of NATS gone: local traffic goes on; what could not go out is counted.
    for server in &mut nats {
        server.kill();
    }
    a.log.wait_for(WAIT, |l| l.contains("lost the NATS connection")).expect("A notices");
    let from = a.log.len();
    put(&publisher, BROADCAST, b"local only");
    assert_eq!(next_body(&local, WAIT).as_deref(), Some(&b"local only"[..]));
    a.log
        .wait_for_after(from, WAIT, |l| {
            l.contains("status:") && l.contains("cluster=down") && !l.contains("unforwarded=0")
        })
        .unwrap_or_else(|| panic!("no status line counting the unforwarded message:\n{}", a.log.text()));
    assert!(a.log.text().contains("reached only this broker's subscribers"), "logged");
    // /metrics shows the same (its snapshot follows within a wake-up of the loop).
    let down =
        |text: &str| text.contains("\nmc0d_cluster_up 0") && !text.contains("\nmc0d_cluster_unforwarded_total 0\n");
    let shown = common::wait_until(WAIT, || down(&common::get(metrics, "/metrics").1));
    assert!(
        shown,
        "/metrics does not show the link down with the unforwarded PUT:\n{}",
        common::get(metrics, "/metrics").1
    );

    // NATS back: both brokers reconnect and renew their interest.
    for server in &mut nats {
        server.spawn();
    }
    wait_routes(&nats);
    until_delivered(&publisher, BROADCAST, &[&local, &remote], WAIT);
    let up = common::wait_until(WAIT, || common::get(metrics, "/metrics").1.contains("\nmc0d_cluster_up 1"));
    assert!(up, "the link is up again in /metrics");
}

/// The topic of the queue `replies` that [`queue_on_c`] declares, and its
/// NATS subject.
const REPLIES: &[u8] = b"mcollective reply client-a async";
const REPLIES_SUBJECT: &str = "mc0.mcollective.reply.client-a.async";

/// A NATS cluster, broker A on its first server, and broker C on its last
/// with the queue `replies` of [`REPLIES`] declared (and `c_args`), once
/// A's server has learnt the queue's interest.
fn queue_on_c(dir: &TempDir, c_args: &[&str]) -> (Vec<Nats>, Mc0d, Mc0d) {
    let nats = nats_cluster(dir);
    let a = broker(&[nats[0].url()], &[]);
    let declared = format!("{}=replies", String::from_utf8_lossy(REPLIES));
    let c = broker(&[nats[2].url()], &[&["--queue", &declared][..], c_args].concat());
    // C's declared queue holds the interest, and A's server learns it.
    wait_subjects(&nats[2], "C's queue interest", |s| s.iter().any(|x| x == REPLIES_SUBJECT));
    assert!(
        common::wait_until(WAIT, || nats[0].route_subjects().iter().any(|x| x == REPLIES_SUBJECT)),
        "A's NATS server did not learn C's interest: {:?}",
        nats[0].route_subjects()
    );
    (nats, a, c)
}

#[test]
fn a_queue_keeps_what_other_brokers_publish_while_no_consumer_runs() {
    if !have_nats() {
        return;
    }
    let dir = TempDir::new("cluster-queues");
    let queue_dir = dir.path().join("queues");
    let (nats, a, c) = queue_on_c(&dir, &["--queue-idle", "1", "--queue-dir", queue_dir.to_str().unwrap()]);
    let (topic, subject) = (REPLIES, REPLIES_SUBJECT.to_string());

    // PUTs on A while nobody on C consumes: one kept, one that expires first.
    let ctx = zmq::Context::new();
    let publisher = a.client(&ctx);
    publisher.handshake(60_000);
    let put_ttl = |id: &'static [u8], body: &'static [u8], ttl: &'static [u8]| {
        publisher.call(&Command::Put {
            topic,
            headers: vec![(EXPIRES_IN.as_bytes(), ttl)],
            id: Some(id),
            body: vec![body],
        })
    };
    put_ttl(b"p1", b"short-lived", b"200");
    put_ttl(b"p2", b"the reply", b"60000");
    // p1 reached C's queue (it expired there); p2 followed it on the same
    // path, so it too is stored before the consumer comes.
    c.log.wait_for(WAIT, |l| l.contains("1 queued messages expired")).expect("the short-lived one expires on C");

    // The consumer comes later: the kept one, once, with its time left.
    let consumer = c.client(&ctx);
    consumer.handshake(60_000);
    consumer.call(&Command::Sub { id: Some(b"q"), queue: Some(b"replies"), compact: false, topics: vec![topic] });
    let m = common::Message::from_frames(&consumer.recv_non_noop(WAIT).expect("the queued reply"));
    assert_eq!(m.body.concat(), b"the reply");
    let header = |name: &str| m.headers.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.clone());
    assert_eq!(header(QUEUE).as_deref(), Some(&b"replies"[..]));
    let left: u64 = String::from_utf8(header(EXPIRES_IN).expect("time left")).unwrap().parse().unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
    assert!(m.sender_key.is_some(), "A's stamp travels with it");
    let delivery: u64 = String::from_utf8(header(DELIVERY).expect("a delivery id")).unwrap().parse().unwrap();
    consumer.call(&Command::Ack { id: Some(b"ack"), deliveries: vec![delivery] });
    // Exactly once: the next thing the consumer gets is the next PUT.
    put_ttl(b"p3", b"next", b"60000");
    let next = consumer.recv_non_noop(WAIT).expect("the next reply");
    assert_eq!(common::Message::from_frames(&next).body.concat(), b"next", "a duplicate came first");
    assert!(next_body(&consumer, Duration::from_millis(300)).is_none(), "nothing twice");

    // A queue made by a queue SUB holds its topic's interest until it is
    // forgotten (empty, without consumers, for --queue-idle).
    let other: &[u8] = b"mcollective reply client-b async";
    let other_subject = "mc0.mcollective.reply.client-b.async".to_string();
    consumer.call(&Command::Sub { id: Some(b"q2"), queue: Some(b"b"), compact: false, topics: vec![other] });
    wait_subjects(&nats[2], "the new queue's interest", |s| s.contains(&other_subject));
    consumer.call(&Command::Unsub { id: Some(b"u2"), queue: Some(b"b"), topics: vec![other] });
    // The declared queue and its interest stay.
    wait_subjects(&nats[2], "the forgotten queue's interest dropped", |s| {
        !s.contains(&other_subject) && s.contains(&subject)
    });
}

/// A PUT is refused for a full queue only on the queue's broker; one that
/// comes through NATS had its OK on its own broker, so a full queue drops
/// it, and says so: logged, `unqueued=` and a metric.
#[test]
fn a_message_from_another_broker_that_a_full_queue_cannot_take_is_counted() {
    if !have_nats() {
        return;
    }
    let dir = TempDir::new("cluster-queue-full");
    let (_nats, a, c) = queue_on_c(&dir, &["--queue-max-messages", "1", "--metrics", "127.0.0.1:0"]);
    let topic = REPLIES;
    let ctx = zmq::Context::new();
    let publisher = a.client(&ctx);
    publisher.handshake(60_000);
    for id in [&b"p1"[..], b"p2"] {
        publisher.call(&Command::Put { topic, headers: vec![], id: Some(id), body: vec![b"a reply"] });
    }
    c.log.wait_for(WAIT, |l| l.contains("was not queued") && l.contains("is full")).expect("C logs the one it dropped");
    c.log.wait_for(WAIT, |l| l.contains("status:") && l.contains("unqueued=1")).expect("C's status line counts it");
    let metrics = common::metrics_address(&c);
    let (_, text) = common::get(metrics, "/metrics");
    assert!(text.contains("\nmc0d_cluster_unqueued_total 1\n"), "{text}");
    assert!(
        text.contains("mc0d_queue_messages{topic=\"mcollective reply client-a async\",queue=\"replies\"} 1"),
        "{text}"
    );
}

#[test]
fn a_subscription_made_before_nats_ever_answered_reaches_it_later() {
    if !have_nats() {
        return;
    }
    // Its servers start one by one, so a port picked for the last one
    // has a while to be taken by a test beside it.
    on_fresh_ports("late NATS server", || {
        let dir = TempDir::new("cluster-late");
        let mut nats = nats_configs(&dir);
        nats[0].try_spawn()?;
        nats[1].try_spawn()?;
        let a = broker(&[nats[0].url()], &[]);
        // C's only NATS server is not running yet: C serves its clients meanwhile.
        let c = Mc0d::start_args(&["--cluster", &nats[2].url(), "--status-interval", "1"]);
        let ctx = zmq::Context::new();
        let late = subscriber(&ctx, &c, &[BROADCAST]);
        c.log.wait_for(WAIT, |l| l.contains("subscribed") || l.contains("connecting to NATS")).expect("C runs");
        assert!(!c.log.text().contains("connected to NATS server"), "NATS answered too early for this test");

        // NATS comes: C connects and the subscription made before reaches it.
        nats[2].try_spawn()?;
        routes_up(&nats)?;
        c.log.wait_for(WAIT, |l| l.contains("connected to NATS server")).expect("C connects once NATS runs");
        wait_subjects(&nats[2], "C's interest from before NATS ran", |s| {
            s.contains(&"mc0.mcollective.rpcutil".to_string())
        });
        let publisher = a.client(&ctx);
        publisher.handshake(60_000);
        until_delivered(&publisher, BROADCAST, &[&late], WAIT);
        put(&publisher, BROADCAST, b"from A");
        assert_eq!(next_body(&late, WAIT).as_deref(), Some(&b"from A"[..]));
        Ok(())
    })
}

#[test]
fn bad_cluster_options_stop_mc0d_naming_them() {
    for (args, culprit) in [
        (&["--cluster-name", "a.b"][..], "--cluster-name"),
        (&["--cluster-creds", "/nonexistent/mc0d.creds"], "/nonexistent/mc0d.creds"),
        (&["--cluster-tls-ca", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
    ] {
        let output = Process::new(common::bin("mc0d"))
            .args(["--no-curve", "--bind", "127.0.0.1", "--port", &free_port().to_string()])
            .args(["--cluster", "nats://127.0.0.1:1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run mc0d");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(culprit), "{args:?}: {stderr}");
    }
}

#[test]
fn unreachable_nats_at_start_still_serves_local_clients() {
    // Nothing listens there: mc0d serves, says so, and keeps trying.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let broker = Mc0d::start_args(&["--cluster", &dead, "--status-interval", "1"]);
    let ctx = zmq::Context::new();
    let local = subscriber(&ctx, &broker, &[BROADCAST]);
    let publisher = broker.client(&ctx);
    publisher.handshake(60_000);
    put(&publisher, BROADCAST, b"local");
    assert_eq!(next_body(&local, WAIT).as_deref(), Some(&b"local"[..]));
    broker
        .log
        .wait_for(WAIT, |l| l.contains("cluster=down") && l.contains("unforwarded=1"))
        .unwrap_or_else(|| panic!("no status line counting the unforwarded message:\n{}", broker.log.text()));
}
