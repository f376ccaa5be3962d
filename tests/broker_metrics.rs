//! `mc0d --metrics`: the real broker's /metrics scraped by Debian's real
//! Prometheus, /connz paginated over 2,000 sessions, and routing unharmed
//! by slow-loris and oversized HTTP requests.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::{get, try_get, Client, Mc0d, Mc0dOptions, TempDir, WAIT};
use mc0::protocol::Command;

/// A broker without CURVE (thousands of sessions connect fast) with
/// `--metrics` on a free loopback port; returns it and that address.
fn broker() -> (Mc0d, SocketAddr) {
    let broker = Mc0d::start_with(Mc0dOptions {
        curve: false,
        args: vec!["--metrics".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });
    let addr = common::metrics_address(&broker);
    (broker, addr)
}

/// The value of one series (`name` or `name{labels}`) in /metrics.
fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_metric(addr: SocketAddr, series: &str, want: f64) {
    let ok = common::wait_until(WAIT, || metric(addr, series) == Some(want));
    assert!(ok, "{series} is {:?}, expected {want}", metric(addr, series));
}

fn put<'a>(topic: &'a str, id: &'a str) -> Command<'a> {
    Command::Put { topic: topic.as_bytes(), headers: vec![], id: Some(id.as_bytes()), body: vec![b"x"] }
}

fn sub<'a>(topic: &'a str) -> Command<'a> {
    Command::Sub { id: Some(b"s"), topics: vec![topic.as_bytes()], queue: None, compact: false }
}

/// Prometheus 2.42 (Debian's `prometheus`) scraping the broker every
/// second, queried over its HTTP API.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: mc0d\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
        let child = Process::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (Debian package prometheus, in the Makefile's DEB_PACKAGES)");
        Prometheus { child, addr, _dir: dir }
    }

    /// The value of an instant query with one result, if any.
    fn query(&self, expr: &str) -> Option<f64> {
        let encoded: String = expr
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = try_get(self.addr, &format!("/api/v1/query?query={encoded}")).ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"].get(0)?["value"][1].as_str()?.parse().ok()
    }

    fn wait_for(&self, expr: &str, want: f64) {
        let mut last = None;
        let ok = common::wait_until(Duration::from_secs(30), || {
            last = self.query(expr);
            last == Some(want)
        });
        assert!(ok, "Prometheus: {expr} is {last:?}, expected {want}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_connections_puts_and_drops() {
    let (broker, addr) = broker();
    let prometheus = Prometheus::start(addr);
    let ctx = zmq::Context::new();
    let clients: Vec<Client> = (0..3).map(|_| broker.client(&ctx)).collect();
    for c in &clients {
        c.handshake(60_000);
    }
    clients[0].call(&sub("t"));
    for i in 0..5 {
        clients[1].call(&put("t", &format!("p{i}")));
        clients[0].expect_message();
    }
    // A subscriber whose connection is gone: its deliveries are dropped as
    // "peer_gone" (the routing id is unknown to libzmq).
    let leaver = broker.client_with_id(&ctx, b"leaver");
    leaver.handshake(60_000);
    leaver.call(&sub("t"));
    drop(leaver);
    wait_metric(addr, "mc0d_connections", 4.0);
    let peer_gone = "mc0d_drops_total{reason=\"peer_gone\"}";
    // libzmq forgets the routing id once it has seen the connection close.
    let mut n = 0;
    let dropped = common::wait_until(WAIT, || {
        n += 1;
        clients[1].call(&put("t", &format!("q{n}")));
        clients[0].expect_message();
        metric(addr, peer_gone).is_some_and(|v| v > 0.0)
    });
    assert!(dropped, "no peer_gone drop counted:\n{}", get(addr, "/metrics").1);
    let drops = metric(addr, peer_gone).unwrap();
    // A command before CONNECT is refused as not connected.
    let stranger = broker.client(&ctx);
    stranger.send_command(&Command::Noop { id: Some(b"n") });
    stranger.expect_error();

    prometheus.wait_for("mc0d_connections", 4.0);
    prometheus.wait_for("mc0d_puts_total", 5.0 + n as f64);
    prometheus.wait_for("mc0d_drops_total{reason=\"peer_gone\"}", drops);
    prometheus.wait_for("mc0d_refused_total{reason=\"not_connected\"}", 1.0);
    prometheus.wait_for("up{job=\"mc0d\"}", 1.0);
}

/// Per-queue figures in /metrics and through Prometheus: depth,
/// unacknowledged, consumers, redeliveries after a consumer dies holding
/// messages, and the bound.
#[test]
fn prometheus_scrapes_per_queue_figures() {
    let topic = "mcollective.reply.client1";
    let broker = Mc0d::start_with(Mc0dOptions {
        curve: false,
        args: ["--metrics", "127.0.0.1:0", "--queue", &format!("{topic}=async"), "--queue-max-messages", "50"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let addr = common::metrics_address(&broker);
    let prometheus = Prometheus::start(addr);
    let ctx = zmq::Context::new();
    let publisher = broker.client(&ctx);
    publisher.handshake(60_000);
    for i in 0..3 {
        publisher.call(&put(topic, &format!("p{i}")));
    }
    let series = |family: &str| format!("{family}{{topic=\"{topic}\",queue=\"async\"}}");
    wait_metric(addr, &series("mc0d_queue_messages"), 3.0);
    assert!(metric(addr, &series("mc0d_queue_bytes")).is_some_and(|b| b > 0.0));
    assert_eq!(metric(addr, "mc0d_queue_max_messages"), Some(50.0));
    let queue_sub =
        Command::Sub { id: Some(b"q"), topics: vec![topic.as_bytes()], queue: Some(b"async"), compact: false };
    // A consumer takes all three and dies holding them.
    let first = broker.client(&ctx);
    first.handshake(60_000);
    first.call(&queue_sub);
    for _ in 0..3 {
        first.expect_message();
    }
    wait_metric(addr, &series("mc0d_queue_messages_unacknowledged"), 3.0);
    wait_metric(addr, &series("mc0d_queue_consumers"), 1.0);
    first.send_command(&Command::Disconnect { id: None });
    wait_metric(addr, &series("mc0d_queue_consumers"), 0.0);
    // The next one gets them again, marked redelivered.
    let second = broker.client(&ctx);
    second.handshake(60_000);
    second.call(&queue_sub);
    for _ in 0..3 {
        second.expect_message();
    }
    wait_metric(addr, &series("mc0d_queue_messages_redelivered_total"), 3.0);
    assert_eq!(metric(addr, &series("mc0d_queue_messages")), Some(3.0), "kept until acknowledged");

    prometheus.wait_for("mc0d_queue_messages_redelivered_total{queue=\"async\"}", 3.0);
    prometheus.wait_for("mc0d_queue_messages_unacknowledged{queue=\"async\"}", 3.0);
    prometheus.wait_for("mc0d_queue_consumers{queue=\"async\"}", 1.0);
    prometheus.wait_for("mc0d_queue_max_messages", 50.0);
}

/// Without CURVE too, the peer addresses of closed connections are
/// forgotten: after rounds of connect/disconnect churn the broker holds as
/// many as there are live connections.
#[test]
fn peer_addresses_follow_connections_through_churn() {
    let (broker, addr) = broker();
    let ctx = zmq::Context::new();
    let live: Vec<Client> = (0..5).map(|_| broker.client(&ctx)).collect();
    for c in &live {
        c.handshake(60_000);
    }
    wait_metric(addr, "mc0d_tcp_connections", 5.0);
    for _ in 0..3 {
        let churn: Vec<Client> = (0..100).map(|_| broker.client(&ctx)).collect();
        for c in &churn {
            c.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"hello") });
        }
        for c in &churn {
            c.expect_ok("hello");
        }
        wait_metric(addr, "mc0d_tcp_connections", 105.0);
        // Half say goodbye, half just go (their sessions wait to expire).
        for c in churn.iter().step_by(2) {
            c.send_command(&Command::Disconnect { id: None });
        }
        drop(churn);
        wait_metric(addr, "mc0d_tcp_connections", 5.0);
    }
    wait_metric(addr, "mc0d_connections", 155.0);
    let (_, body) = get(addr, "/connz?limit=1000");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let with_peer = json["sessions"].as_array().unwrap().iter().filter(|s| s["peer"].is_string()).count();
    assert_eq!(with_peer, 5, "only live connections have an address: {body}");
}

#[test]
fn connz_pages_through_2000_sessions() {
    common::raise_fd_limit();
    let (broker, addr) = broker();
    // libzmq caps a context at 1023 sockets (the zmq crate cannot raise it).
    let contexts: Vec<zmq::Context> = (0..4).map(|_| zmq::Context::new()).collect();
    let clients: Vec<Client> =
        (0..2000).map(|i| broker.client_with_id(&contexts[i % 4], format!("node{i:04}").as_bytes())).collect();
    for c in &clients {
        c.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"hello") });
    }
    for c in &clients {
        c.expect_ok("hello");
    }
    wait_metric(addr, "mc0d_connections", 2000.0);
    let mut seen = Vec::new();
    let started = Instant::now();
    for page in 0..4 {
        let (status, body) = get(addr, &format!("/connz?sort=id&limit=500&offset={}", page * 500));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["total"], 2000);
        let sessions = json["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 500);
        for s in sessions {
            assert!(s["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1")), "{s}");
            assert!(s.get("secret").is_none());
            seen.push(s["id"].as_str().unwrap().to_string());
        }
    }
    eprintln!("4 pages of 500 of 2000 sessions in {:?}", started.elapsed());
    let expected: Vec<String> = (0..2000).map(|i| format!("node{i:04}")).collect();
    assert_eq!(seen, expected, "every session once, in order");
    let (_, body) = get(addr, "/connz?offset=2000");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["sessions"].as_array().unwrap().len(), 0);
    let (_, body) = get(addr, "/connz?filter=node199&sort=msgs_in");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["matched"], 10);
    let (status, body) = get(addr, "/connz?sort=nonsense");
    assert_eq!(status, 400);
    assert!(body.contains("nonsense"), "{body}");
}

#[test]
fn slow_and_oversized_http_requests_do_not_delay_routing() {
    let (broker, addr) = broker();
    let ctx = zmq::Context::new();
    let (node, client) = (broker.client(&ctx), broker.client(&ctx));
    node.handshake(60_000);
    client.handshake(60_000);
    node.call(&sub("t"));
    // Oversized: refused, connection closed.
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_read_timeout(Some(WAIT)).unwrap();
    let _ = big.write_all(format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024)).as_bytes());
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // Slow loris: many connections, each sending a byte now and then.
    let mut slow: Vec<TcpStream> = (0..64).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        for s in &mut slow {
            let _ = s.write_all(b"G");
        }
        let started = Instant::now();
        client.call(&put("t", &format!("p{i}")));
        node.expect_message();
        worst = worst.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(worst < Duration::from_millis(500), "a round trip took {worst:?} during the attack");
    // The attackers gone, scrapes are served again.
    drop(slow);
    assert!(common::wait_until(WAIT, || metric(addr, "mc0d_puts_total") == Some(40.0)));
}

#[test]
fn status_page_and_unknown_paths() {
    let (_broker, addr) = broker();
    let (status, body) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<table id=\"sessions\"") && !body.contains("http://") && !body.contains("https://"));
    assert_eq!(get(addr, "/nope").0, 404);
}

#[test]
fn alert_rules_pass_promtool() {
    let root = common::crate_dir();
    let mut check = Process::new("promtool");
    check.args(["check", "rules"]).arg(root.join("docs/prometheus-alerts.yml"));
    let (status, out, err) = common::run(check, WAIT);
    assert!(status.success(), "promtool check rules:\n{out}{err}");
    // The fleet alert fires on a 15 % drop and not on 7.5 %.
    let mut test = Process::new("promtool");
    test.args(["test", "rules", "alerts_test.yml"]).current_dir(root.join("tests/prometheus"));
    let (status, out, err) = common::run(test, WAIT);
    assert!(status.success(), "promtool test rules:\n{out}{err}");
}

/// The page's DOM after its scripts ran, in Debian's headless chromium.
fn rendered(url: &str) -> String {
    let profile = TempDir::new("chromium");
    let mut cmd = Process::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Runs the page's fetches and rendering before the DOM is dumped.
        "--virtual-time-budget=3000",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(url);
    let (status, out, err) = common::run(cmd, Duration::from_secs(60));
    assert!(status.success(), "chromium (Debian package chromium) failed:\n{err}");
    out
}

#[test]
fn status_page_in_a_browser_lists_sessions_and_filters_them() {
    let (broker, addr) = broker();
    let ctx = zmq::Context::new();
    let clients: Vec<Client> =
        ["web-1", "web-2", "db-1"].iter().map(|id| broker.client_with_id(&ctx, id.as_bytes())).collect();
    for c in &clients {
        c.handshake(60_000);
    }
    wait_metric(addr, "mc0d_connections", 3.0);
    let rows = |dom: &str| dom.matches("<tr class=\"session\">").count();
    let dom = rendered(&format!("http://{addr}/"));
    assert!(dom.contains("data-ready=\"1\""), "the page's scripts did not finish:\n{dom}");
    assert_eq!(rows(&dom), 3, "{dom}");
    assert!(dom.contains("web-1") && dom.contains("db-1") && dom.contains("127.0.0.1"), "{dom}");
    assert!(dom.contains("(3 of 3)"), "{dom}");
    let dom = rendered(&format!("http://{addr}/?filter=web"));
    assert_eq!(rows(&dom), 2, "{dom}");
    assert!(!dom.contains("db-1") && dom.contains("(2 of 3)"), "{dom}");
}
