//! `storm`: the reconnect storm of issue 13. Three independent mc0d, N real
//! libmc0 connectors (the Rust API, in worker processes: each connector is
//! an engine thread plus a libzmq context's two threads) with a pool of the
//! three, each subscribed to its own directed topic and a broadcast topic.
//! Then `kill -9` one broker and measure, per connector that was on it, the
//! time until it is subscribed on a survivor: it publishes a probe to its
//! own directed topic as soon as its new session is up, and is recovered
//! when the survivor routes the probe back to it (the session re-makes
//! every subscription before it sends a publish, and a broker handles one
//! client's commands in order). Meanwhile a raw publisher/subscriber pair
//! on a survivor measures what the storm costs the clients already there,
//! and the kernel's TCP listen counters are read before and after.
//!
//! Each round runs the two fleet settings one after the other on fresh
//! brokers: the default (pool shuffled per connector, jittered backoff from
//! `reconnect_initial` = 0.1 s) and a fixed order without jitter (the pool
//! list rotated per connector so the fleet starts spread the same way, as a
//! site would spread it by hand; `randomize = false` and `reconnect_initial`
//! = 0.001 s, its minimum, so the ×0.5–1.5 jitter spans 1 ms: libmc0 has no
//! switch to turn jitter off).
//!
//! A worker prints (stderr) the counters of up to five connectors that did
//! not come back; with `STORM_DEBUG` set in the environment, also their
//! libmc0 log lines (debug level, seconds since the worker started).

use super::clients::Reply;
use super::raw::Stamp;
use super::sockets::{Ctx, Sock};
use super::target::{Keys, Kind, Running, Target};
use super::workers::{self, Parent, Workers};
use super::{clients, sockets, stats};
use crate::Result;
use mc0::connector::{Config, Connector};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BROKERS: usize = 3;
/// The broker killed (index into the three) and the one the survivor pair uses.
const KILLED: usize = 0;
const WATCHED: usize = 1;
const BROADCAST_AGENT: &str = "storm";
/// How often the survivor pair publishes, and how often a worker looks at
/// its connectors' counters (the resolution of the recovery times).
const PAIR_INTERVAL: Duration = Duration::from_millis(10);
const WATCH_INTERVAL: Duration = Duration::from_millis(5);
/// How long the pair waits, once the storm is over, for its last PUTs to
/// come back before it counts them lost: generous, for a loaded machine
/// (it stops as soon as every one is back).
const PAIR_DRAIN: Duration = Duration::from_secs(5);
/// A probe not routed back by then is published again.
const PROBE_RETRY: Duration = Duration::from_secs(2);

pub struct Params {
    pub mc0d: PathBuf,
    pub clients: usize,
    pub procs: usize,
    pub rounds: usize,
    pub timeout: Duration,
    pub json: bool,
}

/// The two fleet settings compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Order {
    /// libmc0's defaults: shuffled pool, jittered backoff from 0.1 s.
    Random,
    /// Pool list rotated per connector, `randomize = false`, 1 ms backoff.
    Fixed,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Random => "random",
            Order::Fixed => "fixed",
        }
    }

    pub fn parse(s: &str) -> Result<Order> {
        match s {
            "random" => Ok(Order::Random),
            "fixed" => Ok(Order::Fixed),
            _ => Err(format!("--order {s:?}: random or fixed")),
        }
    }
}

/// One round of one setting.
struct Outcome {
    order: Order,
    /// Connectors per broker before the kill.
    before: [u64; BROKERS],
    /// Per recovered connector: ms from the kill to its probe's return.
    times_ms: Vec<f64>,
    /// Where the killed broker's connectors went.
    moved_to: [u64; BROKERS],
    /// Connectors that were not on the killed broker but reconnected anyway.
    collateral: u64,
    connect_s: f64,
    kernel: Vec<(String, i64)>,
    pair: PairReport,
    errors: Vec<String>,
}

pub fn run(p: &Params) -> Result<bool> {
    let keys = Keys::create(None, 0)?;
    let broker_public = keys.dir.join("broker.public");
    let say = |line: &str| {
        if p.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(&format!(
        "mc0-bench storm: {} libmc0 connectors in {} procs over {BROKERS} mc0d (CURVE), kill -9 one, {} round(s) of random vs fixed; load {}",
        p.clients,
        p.procs,
        p.rounds,
        loadavg()
    ));
    let mut all: Vec<Outcome> = Vec::new();
    let mut ok = true;
    for round in 0..p.rounds.max(1) {
        for order in [Order::Random, Order::Fixed] {
            let o = round_of(p, order, &keys, &broker_public)?;
            say(&format!("  round {} {}", round + 1, summary(&o)));
            ok &= o.errors.is_empty() && o.pair.lost == 0;
            if p.json {
                println!("{}", to_json(&o, round));
            }
            all.push(o);
        }
    }
    for order in [Order::Random, Order::Fixed] {
        let rounds: Vec<&Outcome> = all.iter().filter(|o| o.order == order).collect();
        let max: Vec<f64> = rounds.iter().map(|o| pct(&o.times_ms, 100.0)).collect();
        let p50: Vec<f64> = rounds.iter().map(|o| pct(&o.times_ms, 50.0)).collect();
        let split: Vec<String> = rounds.iter().map(|o| format!("{}/{}", o.moved_to[1], o.moved_to[2])).collect();
        say(&format!(
            "  {:<6} median over {} rounds: all recovered in {}, p50 {}; moved to b2/b3: {}",
            order.name(),
            rounds.len(),
            stats::ms(stats::median(&max)),
            stats::ms(stats::median(&p50)),
            split.join(", ")
        ));
    }
    say(&format!("  load after: {}", loadavg()));
    Ok(ok)
}

fn round_of(p: &Params, order: Order, keys: &Keys, broker_public: &Path) -> Result<Outcome> {
    let mut brokers: Vec<Running> = (0..BROKERS)
        .map(|i| {
            let target =
                Target { label: format!("b{}", i + 1), kind: Kind::Mc0d(p.mc0d.clone()), mc0d_args: Vec::new() };
            target.start(true, keys, Stamp::SenderKey, None)
        })
        .collect::<Result<_>>()?;
    let pool: Vec<String> = brokers.iter().map(|b| b.endpoint.addr.trim_start_matches("tcp://").to_string()).collect();
    let pool = pool.join(",");
    let t0 = Instant::now();
    let mut workers = Workers::spawn("storm-worker", &brokers[0], p.clients, p.procs, |_| {
        vec![
            format!("--pool={pool}"),
            format!("--broker-key={}", broker_public.display()),
            format!("--order={}", order.name()),
        ]
    })?;
    let procs = workers.len();
    let mut before = [0u64; BROKERS];
    for (_, line) in workers.expect("READY", procs, t0 + p.timeout)? {
        add_fields(&line, "on", &mut before);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let dead = before[KILLED];

    let stop = Arc::new(AtomicBool::new(false));
    let pair = {
        let ctx = Ctx::new(1, 16)?;
        let ep = brokers[WATCHED].endpoint.clone();
        let stop = stop.clone();
        let deadline = Instant::now() + p.timeout;
        let publisher = clients::client(&ctx, &ep, clients::PUBLISHER, None, deadline)?;
        let topic = mc0::topics::agent(clients::COLLECTIVE, "stormwatch").into_bytes();
        let subscriber = clients::client(&ctx, &ep, clients::SUBSCRIBER, Some(&topic), deadline)?;
        std::thread::spawn(move || survivor_pair([publisher, subscriber], &topic, &stop))
    };
    // A second of undisturbed traffic for the pair's baseline.
    std::thread::sleep(Duration::from_secs(1));
    let kernel_before = kernel_counters();
    let killed_at = Instant::now();
    let killed_ns = epoch_ns();
    let pid = brokers[KILLED].pid.ok_or("the killed broker has no pid")?;
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };

    let mut recovered = vec![0u64; procs];
    let mut errors = Vec::new();
    while recovered.iter().sum::<u64>() < dead && killed_at.elapsed() < p.timeout {
        if let Some((w, line)) = workers.next(Duration::from_millis(50)) {
            if line.starts_with("RECOVERED") {
                recovered[w] = workers::fields(&line).find(|(k, _)| *k == "n").map_or(0, |(_, v)| v);
            } else if line.starts_with("FAIL") {
                errors.push(format!("storm worker {w}: {line}"));
                break;
            }
        }
    }
    let recovered_s = killed_at.elapsed();
    // The pair keeps going a second past the storm, to see it settle.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let kernel_after = kernel_counters();
    let pair = pair.join().map_err(|_| "the survivor pair panicked")??;
    let pair = pair.report(killed_at, killed_at + recovered_s);

    workers.say("STOP")?;
    let mut times_ms = Vec::new();
    let mut moved_to = [0u64; BROKERS];
    let mut collateral = 0;
    for (w, line) in workers.expect("DONE", procs, Instant::now() + p.timeout)? {
        add_fields(&line, "to", &mut moved_to);
        for (k, v) in workers::fields(&line) {
            match k {
                "collateral" => collateral += v,
                "errors" if v > 0 => errors.push(format!("storm worker {w}: {v} errors")),
                _ => {}
            }
        }
        if let Some(list) = line.split_whitespace().find_map(|f| f.strip_prefix("times=")) {
            times_ms.extend(
                list.split(',')
                    .filter_map(|t| t.parse::<u64>().ok())
                    .map(|ns| ns.saturating_sub(killed_ns) as f64 / 1e6),
            );
        }
    }
    times_ms.sort_by(f64::total_cmp);
    if (times_ms.len() as u64) < dead {
        errors.push(format!("{} of the killed broker's {dead} connectors recovered", times_ms.len()));
    }
    for b in brokers.iter_mut().skip(1) {
        b.check_alive()?;
    }
    let kernel =
        kernel_before.iter().map(|(k, v)| (k.clone(), kernel_after.get(k).copied().unwrap_or(*v) - v)).collect();
    Ok(Outcome { order, before, times_ms, moved_to, collateral, connect_s, kernel, pair, errors })
}

/// Adds `<prefix>N=v` fields (N = 1-based broker) of a worker's line into `into`.
fn add_fields(line: &str, prefix: &str, into: &mut [u64; BROKERS]) {
    for (k, v) in workers::fields(line) {
        if let Some(n) = k.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok()) {
            if (1..=BROKERS).contains(&n) {
                into[n - 1] += v;
            }
        }
    }
}

fn summary(o: &Outcome) -> String {
    let dead = o.before[KILLED];
    let kernel: Vec<String> = o.kernel.iter().map(|(k, v)| format!("{k} +{v}")).collect();
    format!(
        "{:<6}: on b1/b2/b3 {}/{}/{} (connected+subscribed in {:.1} s); kill -9 b1: {} of {dead} re-subscribed, \
         all in {} (p50 {}, p90 {}); moved to b2 {}, b3 {}; others reconnected {}; kernel {}; survivor pair on b2: \
         {} of {} lost, RTT p99 {} before / {} during the storm (max {}){}",
        o.order.name(),
        o.before[0],
        o.before[1],
        o.before[2],
        o.connect_s,
        o.times_ms.len(),
        stats::ms(pct(&o.times_ms, 100.0)),
        stats::ms(pct(&o.times_ms, 50.0)),
        stats::ms(pct(&o.times_ms, 90.0)),
        o.moved_to[1],
        o.moved_to[2],
        o.collateral,
        kernel.join(", "),
        o.pair.lost,
        o.pair.sent,
        stats::ms(o.pair.p99_before_ms),
        stats::ms(o.pair.p99_storm_ms),
        stats::ms(o.pair.max_storm_ms),
        if o.errors.is_empty() { String::new() } else { format!("  FAILED: {}", o.errors.join("; ")) }
    )
}

fn to_json(o: &Outcome, round: usize) -> serde_json::Value {
    let kernel: serde_json::Map<String, serde_json::Value> =
        o.kernel.iter().map(|(k, v)| (k.clone(), (*v).into())).collect();
    serde_json::json!({
        "scenario": "storm",
        "order": o.order.name(),
        "round": round,
        "before": o.before,
        "killed_connectors": o.before[KILLED],
        "recovered": o.times_ms.len(),
        "recover_all_ms": pct(&o.times_ms, 100.0),
        "recover_p50_ms": pct(&o.times_ms, 50.0),
        "recover_p90_ms": pct(&o.times_ms, 90.0),
        "moved_to": o.moved_to,
        "collateral": o.collateral,
        "connect_s": o.connect_s,
        "kernel": kernel,
        "pair_sent": o.pair.sent,
        "pair_lost": o.pair.lost,
        "pair_p99_before_ms": o.pair.p99_before_ms,
        "pair_p99_storm_ms": o.pair.p99_storm_ms,
        "pair_max_storm_ms": o.pair.max_storm_ms,
        "errors": o.errors,
    })
}

/// `p`th percentile of sorted values, NaN when empty.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        f64::NAN
    } else {
        stats::percentile(sorted, p)
    }
}

fn epoch_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The kernel's counters of refused and dropped connection attempts (what
/// `nstat` reads): `/proc/net/netstat` TcpExt and `/proc/net/snmp` Tcp.
/// System-wide, so only a quiet machine attributes them to the storm.
fn kernel_counters() -> BTreeMap<String, i64> {
    const WANTED: &[&str] = &[
        "TcpExt.ListenOverflows",
        "TcpExt.ListenDrops",
        "TcpExt.TCPReqQFullDrop",
        "TcpExt.TCPReqQFullDoCookies",
        "TcpExt.SyncookiesSent",
        "TcpExt.TCPBacklogDrop",
        "Tcp.AttemptFails",
        "Tcp.EstabResets",
        "Tcp.RetransSegs",
        "Tcp.PassiveOpens",
    ];
    let mut out = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // Pairs of lines: "Group: names..." then "Group: values...".
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((group, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':')) else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                let key = format!("{group}.{name}");
                if WANTED.contains(&key.as_str()) {
                    out.insert(key, value.parse().unwrap_or(0));
                }
            }
        }
    }
    out
}

/// What the pair on a survivor saw: one PUT per [`PAIR_INTERVAL`].
struct Pair {
    /// Per PUT: when it was sent, and its round trip if it came back.
    samples: Vec<(Instant, Option<Duration>)>,
}

struct PairReport {
    sent: usize,
    lost: usize,
    p99_before_ms: f64,
    p99_storm_ms: f64,
    max_storm_ms: f64,
}

impl Pair {
    fn report(&self, storm_start: Instant, storm_end: Instant) -> PairReport {
        let rtts = |keep: &dyn Fn(Instant) -> bool| {
            let mut v: Vec<f64> = self
                .samples
                .iter()
                .filter(|(at, _)| keep(*at))
                .filter_map(|(_, rtt)| rtt.map(|d| d.as_secs_f64() * 1e3))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let before = rtts(&|at| at < storm_start);
        let storm = rtts(&|at| at >= storm_start && at <= storm_end);
        PairReport {
            sent: self.samples.len(),
            lost: self.samples.iter().filter(|(_, rtt)| rtt.is_none()).count(),
            p99_before_ms: pct(&before, 99.0),
            p99_storm_ms: pct(&storm, 99.0),
            max_storm_ms: pct(&storm, 100.0),
        }
    }
}

/// A client already on a survivor: PUTs to a topic its partner holds, every
/// [`PAIR_INTERVAL`] until `stop`, then waits for the stragglers (at most
/// [`PAIR_DRAIN`]).
fn survivor_pair(pair: [Sock; 2], topic: &[u8], stop: &AtomicBool) -> Result<Pair> {
    let [publisher, subscriber] = &pair;
    let mut samples: Vec<(Instant, Option<Duration>)> = Vec::new();
    let mut frames = Vec::new();
    let mut next = Instant::now();
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match drain_until {
            None if stop.load(Ordering::SeqCst) => drain_until = Some(now + PAIR_DRAIN),
            Some(t) if now >= t || samples.iter().all(|(_, rtt)| rtt.is_some()) => break,
            _ => {}
        }
        if drain_until.is_none() && now >= next {
            let seq = samples.len() as u64;
            sockets::send(publisher, &[b"", b"PUT", b"TOPIC", topic, b"", &seq.to_le_bytes()], 0)
                .map_err(|e| format!("survivor pair: {e}"))?;
            samples.push((now, None));
            next += PAIR_INTERVAL;
        }
        let wait = next.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        if subscriber.poll(zmq::POLLIN, wait.as_millis() as i64).map_err(|e| e.to_string())? == 0 {
            continue;
        }
        while let Ok(n) = sockets::recv(subscriber, &mut frames, zmq::DONTWAIT) {
            if let Reply::Message { body, .. } = clients::classify(&clients::views(&frames[..n])) {
                if let Some((at, rtt)) = stats::seq_of(body).and_then(|s| samples.get_mut(s as usize)) {
                    rtt.get_or_insert(at.elapsed());
                }
            }
        }
    }
    clients::disconnect_all(&pair);
    Ok(Pair { samples })
}

pub struct WorkerOptions {
    /// `host:port,host:port,host:port`: the three brokers, in their order.
    pub pool: String,
    pub broker_key: PathBuf,
    pub order: Order,
    pub first: usize,
    pub count: usize,
}

/// The `storm-worker` process: `count` connectors, reported to the parent.
pub fn worker(o: &WorkerOptions) -> Result<()> {
    Parent::serve(|parent| worker_inner(o, parent))
}

/// One connector of a worker and what the watch loop knows about it.
struct Node {
    connector: Connector,
    /// Its pool list is the brokers rotated by this much (fixed order).
    rotation: usize,
    /// The broker (0-based, in the parent's order) it was on at READY.
    started_on: usize,
    handshakes: u64,
    received: u64,
    probe_sent: Option<Instant>,
    recovered_ns: Option<u64>,
    recovered_on: usize,
}

impl Node {
    fn broker(&self) -> usize {
        (self.connector.stats().broker + self.rotation) % BROKERS
    }
}

fn directed_topic(i: usize) -> String {
    mc0::topics::node(clients::COLLECTIVE, &clients::numbered(clients::NODE, i))
}

fn worker_inner(o: &WorkerOptions, parent: &Parent) -> Result<()> {
    let pool: Vec<&str> = o.pool.split(',').collect();
    if pool.len() != BROKERS {
        return Err(format!("--pool needs {BROKERS} brokers, got {:?}", o.pool));
    }
    let dir = std::env::temp_dir().join(format!("mc0-bench-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pair = mc0::keys::KeyPair::generate()?;
    let (public, private) =
        mc0::keys::write_keypair(dir.join("client"), &pair, true).map_err(|e| format!("client keys: {e}"))?;
    if std::env::var_os("STORM_DEBUG").is_some() {
        let sink = log_lines();
        let t0 = Instant::now();
        mc0::connector::set_logger(
            Some(Arc::new(move |_l, line: &str| {
                sink.lock().unwrap().push(format!("{:.3} {line}", t0.elapsed().as_secs_f64()));
            })),
            mc0::log::Level::Debug,
        );
    }
    let result = (|| {
        let config = |i: usize| -> Result<(Config, usize)> {
            let rotation = match o.order {
                Order::Random => 0,
                Order::Fixed => i % BROKERS,
            };
            let hosts: Vec<&str> = (0..BROKERS).map(|k| pool[(k + rotation) % BROKERS]).collect();
            let mut pairs = vec![
                ("broker.host", hosts.join(",")),
                ("broker.public_key", o.broker_key.display().to_string()),
                ("public_key", public.display().to_string()),
                ("private_key", private.display().to_string()),
                ("identity", clients::numbered(clients::NODE, i)),
                // Generous: thousands connect at once on a loaded machine.
                ("connect_timeout", "60".into()),
                ("close_timeout", "0.5".into()),
            ];
            if o.order == Order::Fixed {
                pairs.push(("randomize", "false".into()));
                pairs.push(("reconnect_initial", "0.001".into()));
            }
            Ok((Config::from_pairs(pairs).map_err(|e| e.to_string())?, rotation))
        };
        let broadcast = mc0::topics::agent(clients::COLLECTIVE, BROADCAST_AGENT);
        // Connect and subscribe from a few threads: each call waits for the broker.
        let threads = 8.min(o.count.max(1));
        let mut nodes: Vec<Option<Node>> = (0..o.count).map(|_| None).collect();
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (config, broadcast) = (&config, &broadcast);
                    s.spawn(move || -> Result<Vec<(usize, Node)>> {
                        let mut mine = Vec::new();
                        for k in (t..o.count).step_by(threads) {
                            let i = o.first + k;
                            let (config, rotation) = config(i)?;
                            let connector = Connector::connect(&config).map_err(|e| format!("node {i}: {e}"))?;
                            for topic in [directed_topic(i).as_str(), broadcast] {
                                connector.subscribe(topic).map_err(|e| format!("node {i}: subscribe: {e}"))?;
                            }
                            let stats = connector.stats();
                            let mut node = Node {
                                connector,
                                rotation,
                                started_on: 0,
                                handshakes: stats.handshakes,
                                received: stats.received,
                                probe_sent: None,
                                recovered_ns: None,
                                recovered_on: 0,
                            };
                            node.started_on = node.broker();
                            mine.push((k, node));
                        }
                        Ok(mine)
                    })
                })
                .collect();
            for h in handles {
                for (k, node) in h.join().map_err(|_| "a connect thread panicked")?? {
                    nodes[k] = Some(node);
                }
            }
            Ok(())
        })?;
        let mut nodes: Vec<Node> = nodes.into_iter().flatten().collect();
        let mut on = [0u64; BROKERS];
        for n in &nodes {
            on[n.started_on] += 1;
        }
        parent.say(&format!("READY on1={} on2={} on3={}", on[0], on[1], on[2]));
        watch(o, parent, &mut nodes)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Until STOP: every connector whose session was re-made publishes a probe
/// to its directed topic; the probe coming back marks it recovered.
fn watch(o: &WorkerOptions, parent: &Parent, nodes: &mut [Node]) -> Result<()> {
    let (mut recovered, mut reported, mut errors) = (0u64, 0u64, 0u64);
    let mut last_report = Instant::now();
    while !parent.said("STOP") {
        for (k, n) in nodes.iter_mut().enumerate() {
            if n.recovered_ns.is_some() {
                continue;
            }
            let stats = n.connector.stats();
            let resend = n.probe_sent.is_some_and(|t| t.elapsed() >= PROBE_RETRY);
            if (stats.handshakes > n.handshakes && n.probe_sent.is_none()) || resend {
                match n.connector.publish(&directed_topic(o.first + k), &[], &((o.first + k) as u64).to_le_bytes()) {
                    Ok(()) => n.probe_sent = Some(Instant::now()),
                    Err(_) => errors += 1,
                }
            }
            if stats.received > n.received {
                n.received = stats.received;
                while let Ok(m) = n.connector.receive(Duration::ZERO) {
                    if n.probe_sent.is_some() && m.topic == directed_topic(o.first + k) {
                        n.recovered_ns = Some(epoch_ns());
                        n.recovered_on = n.broker();
                        recovered += u64::from(n.started_on == KILLED);
                    }
                }
            }
        }
        if recovered != reported && last_report.elapsed() >= Duration::from_millis(20) {
            parent.say(&format!("RECOVERED n={recovered}"));
            reported = recovered;
            last_report = Instant::now();
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    let mut to = [0u64; BROKERS];
    let mut times = Vec::new();
    let mut collateral = 0;
    for n in nodes.iter() {
        match (n.started_on == KILLED, n.recovered_ns) {
            (true, Some(ns)) => {
                to[n.recovered_on] += 1;
                times.push(ns.to_string());
            }
            (false, Some(_)) => collateral += 1,
            _ => {}
        }
    }
    // Why a connector of the killed broker did not come back, for whoever
    // reads the run (a few are enough).
    let stuck = nodes.iter().enumerate().filter(|(_, n)| n.started_on == KILLED && n.recovered_ns.is_none());
    for (k, n) in stuck.take(5) {
        eprintln!(
            "storm worker: node {} not recovered (probe {}): {}",
            o.first + k,
            if n.probe_sent.is_some() { "sent" } else { "not sent" },
            n.connector.stats_json()
        );
        if std::env::var_os("STORM_DEBUG").is_some() {
            let needle = format!("{} ", clients::numbered(clients::NODE, o.first + k));
            for l in log_lines().lock().unwrap().iter().filter(|l| l.contains(&needle)) {
                eprintln!("   {l}");
            }
        }
    }
    parent.say(&format!(
        "DONE to1={} to2={} to3={} collateral={collateral} errors={errors} times={}",
        to[0],
        to[1],
        to[2],
        times.join(",")
    ));
    Ok(())
}

/// The libmc0 log of a worker run with `STORM_DEBUG`.
fn log_lines() -> &'static std::sync::Mutex<Vec<String>> {
    static LOG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    &LOG
}
