//! mc0-bench: measures a broker speaking the mc0 protocol side by side with
//! the smallest raw libzmq ROUTER loop doing the same work, in the same run.

mod ack;
mod clients;
mod cluster;
mod conns;
mod fanout;
mod queue;
mod raw;
mod report;
mod request;
mod sockets;
mod stats;
mod storm;
mod target;
mod workers;

use mc0::protocol::{self, heartbeat};
use raw::Stamp;
use report::{Judged, Row};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use mc0d::cli::Early;
use std::time::Duration;
use target::{Keys, Kind, Running, Target};

/// Every fallible step of a run: the error is the message printed.
pub type Result<T> = std::result::Result<T, String>;

const ABOUT: &str = "\
Measures a broker (mc0d by default) and the raw libzmq ROUTER loop built into
this tool, one after the other in the same run, on 127.0.0.1 with CURVE on,
and prints each figure with the broker's ratio to the raw loop (> 1 is better).
Exits 1 if any delivery, reply or ack was lost, 2 on errors.";

const SCENARIOS: &str = "\
Scenarios:
  ack       K clients, each its own socket and keypair, N sequential NOOP-with-ID
            round trips: acks/s, latency p50/p99/max
              --clients K (10)  --round-trips N (1000)
  fanout    N subscribers on one topic, one publisher, M PUTs of S bytes:
            deliveries/s, lost deliveries, time to last delivery
              --subs N[,N..] (10,100)  --messages M (200000/N)  --size S (1024)
  request   one client PUTs a request with X-REPLY-TO to an agent topic, N nodes
            reply: requests/s, reply-collection time p50/p99
              --nodes N[,N..] (10,100,1000)  --requests R (20000/N)  --size S (1024)
              --procs P (0: the nodes run in this process; P worker processes
              otherwise, needed for fleets beyond the file-descriptor limit:
              each node takes two descriptors)
  conns     C clients CONNECT with TTL and SUB to `mcollective nodes <id>`, hold with
            heartbeats, then one directed PUT each: connect rate, deliveries,
            broker RSS per client, broker CPU while idle
              --clients C (1000)  --procs P (2)  --ttl MS (5000)  --hold SECS (10)
              --window W (100 handshakes in flight)
              --heartbeat-fraction F (0.95: a client NOOPs after F x TTL of silence)
  queue     one producer -> one consumer through mc0d's queues, next to plain
            pub/sub in the same run (targets plain, memory, disk = --queue-dir,
            disk-thread = disk with --queue-writer thread; the consumer asks for compact deliveries and ACK id lists, as
            libmc0 does): an OK awaited per PUT, W PUTs in flight, the same
            two into the queue with no consumer connected (keep-*:
            RabbitMQ's confirm and pipelined shapes), consuming M waiting
            messages with an ACK each: msg/s, publish p99 (ratios to plain)
              --messages M (20000; M/10 for the ok-per-put shapes)  --window W (1000)
              --size S (1024)  --shapes S[,S..] (all)  --classic-queue-frames (adds the target
              classic: the in-memory queue as a consumer that does not ask)
  storm     3 mc0d, C libmc0 connectors with a pool of the 3 (in P processes),
            kill -9 one broker: time until each of its connectors is subscribed
            on a survivor, where they went, the kernel's listen drops, a
            survivor client's losses and RTT; randomised vs fixed order, R rounds
              --clients C (3000)  --procs P (6)  --repeat R (1)
  allowlist --key-seed S [--clients N (1000)]
            prints the allowlist (mc0d --authorized-keys file form) of the
            keys --key-seed S gives up to N clients of each kind, for a
            broker started by hand (--broker)";

/// What to run: a scenario, or one of the modes this binary is spawned in.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Ack,
    Fanout,
    Request,
    Conns,
    Queue,
    Storm,
    Allowlist,
    /// The raw libzmq loop, spawned as its own process.
    #[value(hide = true)]
    RawBroker,
    /// A process of conns clients (`--procs`).
    #[value(hide = true)]
    ConnsWorker,
    /// A process of request nodes (`--procs`).
    #[value(hide = true)]
    RequestWorker,
    /// A process of storm connectors (`--procs`).
    #[value(hide = true)]
    StormWorker,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Ack => "ack",
            Scenario::Fanout => "fanout",
            Scenario::Request => "request",
            Scenario::Conns => "conns",
            Scenario::Queue => "queue",
            Scenario::Storm => "storm",
            Scenario::Allowlist => "allowlist",
            Scenario::RawBroker => "raw-broker",
            Scenario::ConnsWorker => "conns-worker",
            Scenario::RequestWorker => "request-worker",
            Scenario::StormWorker => "storm-worker",
        }
    }
}

const BROKERS: &str = "Brokers (default: spawn the mc0d next to this binary, plus the raw loop)";
const COMMON: &str = "Common";
const SCENARIO: &str = "Scenario options (defaults per scenario: see Scenarios below)";

/// `mc0-bench`'s command line. Options a scenario does not use are ignored.
#[derive(Parser, Debug)]
#[command(
    name = "mc0-bench",
    version = mc0::VERSION,
    about = ABOUT,
    after_help = SCENARIOS,
    override_usage = "mc0-bench SCENARIO [OPTIONS]",
    max_term_width = 100,
    // As before clap: a repeated option takes its last value.
    args_override_self = true
)]
struct Args {
    /// What to measure (see Scenarios below)
    #[arg(value_enum, value_name = "SCENARIO")]
    scenario: Option<Scenario>,

    /// Spawn this mc0d on a free loopback port
    #[arg(long, value_name = "PATH", help_heading = BROKERS)]
    spawn_mc0d: Option<PathBuf>,
    /// Measure an already running broker instead of mc0d
    #[arg(long, value_name = "HOST:PORT", help_heading = BROKERS)]
    broker: Option<String>,
    /// Its CURVE public key file (with --broker)
    #[arg(long, value_name = "FILE", help_heading = BROKERS)]
    broker_key: Option<PathBuf>,
    /// Its pid, for RSS and CPU figures (with --broker)
    #[arg(long, value_name = "PID", help_heading = BROKERS)]
    broker_pid: Option<u32>,
    /// Name of the measured broker in the output [default: mc0d, or broker with --broker]
    #[arg(long, value_name = "NAME", help_heading = BROKERS)]
    label: Option<String>,
    /// Skip the raw libzmq loop
    #[arg(long, help_heading = BROKERS)]
    no_raw: bool,
    /// Compare one mc0d with N mc0d joined by --cluster over N nats-servers
    /// routed to each other (spawned on loopback; instead of the raw loop,
    /// the ratios are to the one mc0d). request: nodes spread over the
    /// brokers, client on the first; fanout: publisher on the first,
    /// subscribers on the others
    #[arg(long, value_name = "N", conflicts_with_all = ["broker", "raw_only"], help_heading = BROKERS)]
    brokers: Option<usize>,
    /// With --brokers: measure only the N clustered brokers, not the one mc0d
    #[arg(long, requires = "brokers", help_heading = BROKERS)]
    cluster_only: bool,
    /// Measure only the raw libzmq loop
    #[arg(long, help_heading = BROKERS)]
    raw_only: bool,
    /// Each client's CURVE key is derived from S and its identity, and a
    /// spawned mc0d runs with --authorized-keys listing them (identity =
    /// name): mc0d's allowlist mode. Default: fresh keys, open mode
    #[arg(long, value_name = "S", help_heading = BROKERS)]
    key_seed: Option<u64>,
    /// The sender stamp the raw loop adds to each MESSAGE, as mc0d does:
    /// sender (SENDER, the identity; default with --key-seed), sender-key
    /// (SENDER-KEY, the Z85 key; default with CURVE) or none (default
    /// without CURVE; what mc0d did before it stamped)
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<Stamp>(), help_heading = BROKERS)]
    stamp: Option<Stamp>,

    /// NULL mechanism instead of CURVE (both sides)
    #[arg(long, help_heading = COMMON)]
    no_curve: bool,
    /// Alternate the brokers R times; ratios use medians
    #[arg(long, value_name = "R", default_value_t = 1, help_heading = COMMON)]
    repeat: usize,
    /// Stop issuing new work after this long
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds, help_heading = COMMON)]
    duration: Duration,
    /// Bound on every setup and wait phase
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds, help_heading = COMMON)]
    timeout: Duration,
    /// Give up on outstanding deliveries after this long without one
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = seconds, help_heading = COMMON)]
    drain: Duration,
    /// Load-generator threads receiving (fanout, request)
    #[arg(long, value_name = "T", default_value_t = 1, help_heading = COMMON)]
    threads: usize,
    /// libzmq I/O threads of the load generator
    #[arg(long, value_name = "T", default_value_t = 1, help_heading = COMMON)]
    io_threads: i32,
    /// JSON lines on stdout (human-readable lines go to stderr)
    #[arg(long, help_heading = COMMON)]
    json: bool,

    /// ack, conns, allowlist: clients
    #[arg(long, value_name = "N", help_heading = SCENARIO)]
    clients: Option<usize>,
    /// ack: round trips per client
    #[arg(long, value_name = "N", default_value_t = 1000, help_heading = SCENARIO)]
    round_trips: usize,
    /// fanout: subscriber counts, one case each
    #[arg(long, value_name = "N[,N..]", value_parser = list, help_heading = SCENARIO)]
    subs: Option<List>,
    /// fanout: PUTs per case
    #[arg(long, value_name = "M", help_heading = SCENARIO)]
    messages: Option<usize>,
    /// fanout, request: body bytes
    #[arg(long, value_name = "S", default_value_t = 1024, help_heading = SCENARIO)]
    size: usize,
    /// request: node counts, one case each
    #[arg(long, value_name = "N[,N..]", value_parser = list, help_heading = SCENARIO)]
    nodes: Option<List>,
    /// request: requests per case
    #[arg(long, value_name = "R", help_heading = SCENARIO)]
    requests: Option<usize>,
    /// request, conns: worker processes
    #[arg(long, value_name = "P", help_heading = SCENARIO)]
    procs: Option<usize>,
    /// conns: the clients' TTL
    #[arg(long, value_name = "MS", help_heading = SCENARIO)]
    ttl: Option<u64>,
    /// conns: how long the clients hold
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds, help_heading = SCENARIO)]
    hold: Duration,
    /// conns: handshakes in flight; queue: PUTs in flight
    #[arg(long, value_name = "W", help_heading = SCENARIO)]
    window: Option<usize>,
    /// queue: also run the in-memory queue with its classic frames (target
    /// `classic`: no COMPACT asked, so QUEUE and DELIVERY in each delivery
    /// and one ACK frame per id), for an A/B against the compact form of
    /// `memory` in the same run
    #[arg(long, help_heading = SCENARIO)]
    classic_queue_frames: bool,
    /// queue: only these shapes [default: all]
    #[arg(long, value_name = "S[,S..]", value_delimiter = ',', value_parser = queue::Shape::parse,
          help_heading = SCENARIO)]
    shapes: Vec<queue::Shape>,
    /// conns: a client NOOPs after F x TTL of silence
    #[arg(long, value_name = "F", default_value_t = heartbeat::NOOP_AFTER, help_heading = SCENARIO)]
    heartbeat_fraction: f64,
    /// The raw loop drops every Kth delivery (to see the loss check fail)
    #[arg(long, value_name = "K", hide = true)]
    drop_every: Option<u64>,

    // The modes this binary spawns itself in (raw-broker, conns-worker,
    // request-worker).
    #[arg(long, hide = true)]
    bind: Option<String>,
    #[arg(long, hide = true)]
    port: Option<u16>,
    #[arg(long, hide = true)]
    curve_private_key: Option<PathBuf>,
    #[arg(long, hide = true)]
    endpoint: Option<String>,
    #[arg(long, hide = true)]
    server_key: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
    #[arg(long, hide = true)]
    agent: Option<String>,
    /// storm-worker: the brokers, `host:port,..`
    #[arg(long, hide = true)]
    pool: Option<String>,
    /// storm-worker: random or fixed
    #[arg(long, hide = true)]
    order: Option<String>,
}

/// `--subs 10,100`.
#[derive(Debug, Clone)]
struct List(Vec<usize>);

fn list(value: &str) -> Result<List> {
    value
        .split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("{x:?} is not a number")))
        .collect::<Result<_>>()
        .map(List)
}

fn seconds(value: &str) -> Result<Duration> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{value:?} is not a duration in seconds")),
    }
}

type Measure<'a> = Box<dyn Fn(&mut Running) -> Result<Row> + 'a>;

/// A named measurement run against every target.
struct Case<'a> {
    name: String,
    /// The most clients of one kind it uses (for the `--key-seed` allowlist).
    clients: usize,
    judged: Vec<Judged>,
    run: Measure<'a>,
}

fn main() -> ExitCode {
    let args: Args = match mc0d::cli::parse("mc0-bench", std::env::args().skip(1)) {
        Ok(args) => args,
        Err(Early::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(Early::Usage(line)) => {
            eprintln!("mc0-bench: {line}");
            return ExitCode::from(2);
        }
    };
    let Some(scenario) = args.scenario else {
        print!("{}", Args::command().render_help());
        return ExitCode::from(2);
    };
    match run(scenario, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mc0-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Ok(false) when a measurement lost something.
fn run(scenario: Scenario, args: &Args) -> Result<bool> {
    if let Err(e) = mc0::ensure_curve_support() {
        if !args.no_curve {
            return Err(e);
        }
    }
    sockets::raise_fd_limit(1 << 20);
    let (duration, timeout, drain) = (args.duration, args.timeout, args.drain);
    let (threads, io_threads, size) = (args.threads, args.io_threads, args.size);

    let mut cases: Vec<Case> = Vec::new();
    match scenario {
        Scenario::Ack => {
            let p = ack::Params {
                clients: args.clients.unwrap_or(10),
                round_trips: args.round_trips,
                io_threads,
                duration,
                timeout,
            };
            cases.push(Case {
                name: format!("{} clients x {} round trips", p.clients, p.round_trips),
                clients: p.clients,
                judged: vec![
                    Judged { metric: "acks_per_s", unit: "/s", higher_is_better: true },
                    Judged { metric: "p50_ms", unit: "ms", higher_is_better: false },
                    Judged { metric: "p99_ms", unit: "ms", higher_is_better: false },
                ],
                run: Box::new(move |b| ack::run(b, &p)),
            });
        }
        Scenario::Fanout => {
            for subs in args.subs.clone().map_or(vec![10, 100], |l| l.0) {
                // By default about 200,000 deliveries per case, whatever N.
                let messages = args.messages.unwrap_or((200_000 / subs.max(1)).max(1000));
                let p = fanout::Params { subs, messages, size, threads, io_threads, duration, timeout, drain };
                cases.push(Case {
                    name: format!("{subs} subs, {messages} x {size} B"),
                    clients: subs,
                    judged: vec![
                        Judged { metric: "deliveries_per_s", unit: "/s", higher_is_better: true },
                        Judged { metric: "time_to_last_ms", unit: "ms", higher_is_better: false },
                    ],
                    run: Box::new(move |b| fanout::run(b, &p)),
                });
            }
        }
        Scenario::Request => {
            for nodes in args.nodes.clone().map_or(vec![10, 100, 1000], |l| l.0) {
                // By default about 20,000 replies per case, whatever N.
                let requests = args.requests.unwrap_or((20_000 / nodes.max(1)).clamp(20, 2000));
                let procs = args.procs.unwrap_or(0);
                let p = request::Params { nodes, requests, size, threads, io_threads, duration, timeout, drain, procs };
                cases.push(Case {
                    name: format!("{nodes} nodes, {size} B"),
                    clients: nodes,
                    judged: vec![
                        Judged { metric: "p50_ms", unit: "ms", higher_is_better: false },
                        Judged { metric: "p99_ms", unit: "ms", higher_is_better: false },
                        Judged { metric: "requests_per_s", unit: "/s", higher_is_better: true },
                    ],
                    run: Box::new(move |b| request::run(b, &p)),
                });
            }
        }
        Scenario::Conns => {
            let p = conns::Params {
                clients: args.clients.unwrap_or(1000),
                procs: args.procs.unwrap_or(2),
                ttl_ms: args.ttl.unwrap_or(5000),
                heartbeat_fraction: args.heartbeat_fraction,
                hold: args.hold,
                window: args.window.unwrap_or(100),
                io_threads,
                timeout,
                drain: drain.max(Duration::from_secs(5)),
            };
            if !(p.heartbeat_fraction > 0.0 && p.heartbeat_fraction <= 1.0) {
                return Err("--heartbeat-fraction must be in (0, 1]".into());
            }
            cases.push(Case {
                name: format!("{} clients, TTL {} ms, hold {:?}", p.clients, p.ttl_ms, p.hold),
                clients: p.clients,
                judged: vec![
                    Judged { metric: "connects_per_s", unit: "/s", higher_is_better: true },
                    Judged { metric: "rss_kib_per_client", unit: "KiB", higher_is_better: false },
                    Judged { metric: "idle_cpu_pct", unit: "%", higher_is_better: false },
                ],
                run: Box::new(move |b| conns::run(b, &p)),
            });
        }
        Scenario::Queue => {
            let messages = args.messages.unwrap_or(20_000);
            let window = args.window.unwrap_or(1000);
            let shapes = if args.shapes.is_empty() { queue::Shape::ALL.to_vec() } else { args.shapes.clone() };
            for shape in shapes {
                let messages = if shape.one_at_a_time() { (messages / 10).max(1) } else { messages };
                let p = queue::Params { shape, messages, window, size, timeout };
                cases.push(Case {
                    name: format!("{}, {messages} x {size} B", shape.name()),
                    clients: 2,
                    judged: vec![
                        Judged { metric: "msgs_per_s", unit: "/s", higher_is_better: true },
                        Judged { metric: "publish_p99_ms", unit: "ms", higher_is_better: false },
                    ],
                    run: Box::new(move |b| queue::run(b, &p)),
                });
            }
        }
        // Runs its own brokers (three, one killed) and rounds.
        Scenario::Storm => {
            return storm::run(&storm::Params {
                mc0d: mc0d_path(args)?,
                clients: args.clients.unwrap_or(3000),
                procs: args.procs.unwrap_or(6),
                rounds: args.repeat,
                timeout: args.timeout,
                json: args.json,
            })
        }
        // Not measurements: they print an allowlist, or serve a run.
        Scenario::Allowlist => return print_allowlist(args).map(|_| true),
        Scenario::RawBroker => return raw_broker(args).map(|_| true),
        Scenario::ConnsWorker => return conns_worker(args).map(|_| true),
        Scenario::RequestWorker => return request_worker(args).map(|_| true),
        Scenario::StormWorker => return storm_worker(args).map(|_| true),
    }
    let (targets, baseline) = match scenario {
        // Its modes are mc0d's targets; the queue store goes where the keys go.
        Scenario::Queue => {
            let dir = std::env::temp_dir().join(format!("mc0-bench-{}", std::process::id())).join("queues");
            (queue::modes(targets(args)?, &dir, args.classic_queue_frames)?, queue::PLAIN.to_string())
        }
        // The one mc0d is what several brokers are compared with.
        _ if args.brokers.is_some() => {
            let targets = targets(args)?;
            let first = targets[0].label.clone();
            (targets, first)
        }
        _ => (targets(args)?, RAW.to_string()),
    };
    let scenario = scenario.name();

    let curve = !args.no_curve;
    let repeat = args.repeat;
    let drop_every = args.drop_every;
    let json = args.json;
    let key_seed = args.key_seed;
    if key_seed.is_some() && !curve {
        return Err("--key-seed needs CURVE: without it clients have no keys".into());
    }
    let stamp = match args.stamp {
        Some(mode) => mode,
        None if key_seed.is_some() => Stamp::Sender,
        None if curve => Stamp::SenderKey,
        None => Stamp::None,
    };
    let keys = Keys::create(key_seed, cases.iter().map(|c| c.clients).max().unwrap_or(0))?;
    let mut all_ok = true;
    let say = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(&format!(
        "mc0-bench {scenario}: {} (CURVE {}, {}, raw stamp {}), {} x {}",
        targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>().join(" vs "),
        if curve { "on" } else { "off" },
        if key_seed.is_some() { "allowlist" } else { "no allowlist" },
        stamp.as_str(),
        repeat,
        machine()
    ));
    for case in &cases {
        say(&format!("{scenario} [{}]", case.name));
        let mut rows: Vec<(String, Vec<Row>)> = targets.iter().map(|t| (t.label.clone(), Vec::new())).collect();
        for rep in 0..repeat.max(1) {
            for (t, target) in targets.iter().enumerate() {
                let drop_every = drop_every.filter(|_| matches!(target.kind, Kind::Raw));
                let mut running = target.start(curve, &keys, stamp, drop_every)?;
                let row = (case.run)(&mut running)
                    .map_err(|e| format!("{} [{}] on {}: {e}", scenario, case.name, target.label))?;
                drop(running);
                let status = if row.ok() { String::new() } else { format!("  FAILED: {}", failure(&row)) };
                say(&format!("  {:<6} {}{status}", row.target, row.summary));
                if json {
                    println!("{}", row.to_json(scenario, &case.name, rep));
                }
                all_ok &= row.ok();
                rows[t].1.push(row);
            }
        }
        let (lines, value) = report::summarize(scenario, &case.name, &case.judged, &rows, &baseline);
        if targets.len() > 1 || repeat > 1 {
            for l in lines {
                say(&l);
            }
        }
        if json {
            println!("{value}");
        }
        let _ = std::io::stdout().flush();
    }
    Ok(all_ok)
}

const RAW: &str = "raw";

fn failure(row: &Row) -> String {
    let mut parts = Vec::new();
    if row.lost > 0 {
        parts.push(format!("{} lost", row.lost));
    }
    parts.extend(row.errors.iter().cloned());
    parts.join("; ")
}

fn targets(args: &Args) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    if !args.no_raw && args.brokers.is_none() {
        out.push(Target { label: RAW.into(), kind: Kind::Raw, mc0d_args: Vec::new() });
    }
    if args.raw_only {
        return Ok(out);
    }
    if let Some(addr) = &args.broker {
        out.push(Target {
            label: args.label.as_deref().unwrap_or("broker").into(),
            kind: Kind::External { addr: addr.clone(), key_file: args.broker_key.clone(), pid: args.broker_pid },
            mc0d_args: Vec::new(),
        });
    } else {
        let path = mc0d_path(args)?;
        if !args.cluster_only {
            let label = args.label.as_deref().unwrap_or("mc0d").into();
            out.push(Target { label, kind: Kind::Mc0d(path.clone()), mc0d_args: Vec::new() });
        }
        if let Some(brokers) = args.brokers {
            let kind = Kind::Cluster { mc0d: path, brokers };
            out.push(Target { label: format!("{brokers}-brokers"), kind, mc0d_args: Vec::new() });
        }
    }
    if out.is_empty() {
        return Err("nothing to measure (--no-raw with --raw-only)".into());
    }
    Ok(out)
}

/// `--spawn-mc0d`, or the mc0d next to this binary.
fn mc0d_path(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.spawn_mc0d {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sibling = exe.with_file_name("mc0d");
    if !sibling.exists() {
        return Err(format!("no mc0d next to {} (use --spawn-mc0d PATH or --broker)", exe.display()));
    }
    Ok(sibling)
}

/// "2 x Intel(R) Xeon(R) ..., libzmq 4.3.4" for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let (a, b, c) = zmq::version();
    format!("{cores} x {cpu}, libzmq {a}.{b}.{c}")
}

fn raw_broker(args: &Args) -> Result<()> {
    let private_key = match (args.no_curve, &args.curve_private_key) {
        (true, _) => None,
        (false, Some(f)) => Some(f.clone()),
        (false, None) => return Err("raw-broker needs --curve-private-key FILE or --no-curve".into()),
    };
    raw::serve(&raw::RawOptions {
        bind: args.bind.as_deref().unwrap_or("127.0.0.1").into(),
        port: args.port.unwrap_or(protocol::DEFAULT_PORT),
        private_key,
        stamp: args.stamp.unwrap_or(Stamp::None),
        drop_every: args.drop_every,
    })
}

/// The broker a worker process is told to use.
fn worker_endpoint(args: &Args) -> Result<clients::Endpoint> {
    let server_key = match args.server_key.as_deref() {
        Some(z) => Some(mc0::keys::parse_key(z)?),
        None => None,
    };
    Ok(clients::Endpoint {
        addr: args.endpoint.clone().ok_or("a worker needs --endpoint")?,
        server_key,
        key_seed: args.key_seed,
    })
}

fn print_allowlist(args: &Args) -> Result<()> {
    let seed = args.key_seed.ok_or("allowlist needs --key-seed S")?;
    print!("{}", clients::allowlist(seed, args.clients.unwrap_or(1000))?);
    Ok(())
}

fn request_worker(args: &Args) -> Result<()> {
    request::worker(&request::WorkerOptions {
        endpoint: worker_endpoint(args)?,
        first: args.first,
        count: args.count,
        agent: args.agent.clone().ok_or("request-worker needs --agent")?,
        size: args.size,
        io_threads: args.io_threads,
    })
}

fn conns_worker(args: &Args) -> Result<()> {
    conns::worker(&conns::WorkerOptions {
        endpoint: worker_endpoint(args)?,
        first: args.first,
        count: args.count,
        ttl_ms: args.ttl.unwrap_or(protocol::DEFAULT_TTL_MS),
        heartbeat_fraction: args.heartbeat_fraction,
        window: args.window.unwrap_or(50),
        io_threads: args.io_threads,
    })
}

fn storm_worker(args: &Args) -> Result<()> {
    storm::worker(&storm::WorkerOptions {
        pool: args.pool.clone().ok_or("storm-worker needs --pool")?,
        broker_key: args.broker_key.clone().ok_or("storm-worker needs --broker-key")?,
        order: storm::Order::parse(args.order.as_deref().unwrap_or("random"))?,
        first: args.first,
        count: args.count,
    })
}
