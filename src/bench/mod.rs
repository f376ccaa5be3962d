//! mc0-bench: measures a broker speaking the mc0 protocol side by side with
//! the smallest raw libzmq ROUTER loop doing the same work, in the same run.

mod ack;
mod conns;
mod fanout;
mod raw;
mod report;
mod request;
mod target;
mod util;
mod workers;

use mc0::protocol::{self, heartbeat};
use raw::Stamp;
use report::{Judged, Row};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use target::{Keys, Kind, Running, Target};
use util::Result;

const USAGE: &str = "\
usage: mc0-bench SCENARIO [OPTIONS]

Measures a broker (mc0d by default) and the raw libzmq ROUTER loop built into
this tool, one after the other in the same run, on 127.0.0.1 with CURVE on,
and prints each figure with the broker's ratio to the raw loop (> 1 is better).
Exits 1 if any delivery, reply or ack was lost, 2 on errors.

scenarios:
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

  allowlist --key-seed S [--clients N (1000)]
            prints the allowlist (mc0d --authorized-keys file form) of the
            keys --key-seed S gives up to N clients of each kind, for a
            broker started by hand (--broker)

brokers (default: spawn the mc0d next to this binary, plus the raw loop):
  --spawn-mc0d PATH     spawn this mc0d on a free loopback port
  --broker HOST:PORT    measure an already running broker instead of mc0d
  --broker-key FILE     its CURVE public key file (with --broker)
  --broker-pid PID      its pid, for RSS and CPU figures (with --broker)
  --label NAME          name of the measured broker in the output (mc0d / broker)
  --no-raw              skip the raw libzmq loop
  --raw-only            measure only the raw libzmq loop
  --key-seed S          each client's CURVE key is derived from S and its
                        identity, and a spawned mc0d runs with --authorized-keys
                        listing them (identity = name): mc0d's allowlist mode.
                        Default: fresh keys, open mode
  --stamp MODE          the sender stamp the raw loop adds to each MESSAGE, as
                        mc0d does: sender (SENDER, the identity; default with
                        --key-seed), sender-key (SENDER-KEY, the Z85 key;
                        default with CURVE) or none (default without CURVE;
                        what mc0d did before it stamped)

common:
  --no-curve            NULL mechanism instead of CURVE (both sides)
  --repeat R (1)        alternate the brokers R times; ratios use medians
  --duration SECS (30)  stop issuing new work after this long
  --timeout SECS (30)   bound on every setup and wait phase
  --drain SECS (2)      give up on outstanding deliveries after this long without one
  --threads T (1)       load-generator threads receiving (fanout, request)
  --io-threads T (1)    libzmq I/O threads of the load generator
  --json                JSON lines on stdout (human-readable lines go to stderr)
";

/// Parsed `--key value` options and flags.
struct Args {
    positional: Vec<String>,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

const FLAGS: &[&str] = &["--no-raw", "--raw-only", "--no-curve", "--json", "--help", "-h"];
const VALUES: &[&str] = &[
    "--spawn-mc0d",
    "--broker",
    "--broker-key",
    "--broker-pid",
    "--label",
    "--repeat",
    "--duration",
    "--timeout",
    "--drain",
    "--threads",
    "--io-threads",
    "--clients",
    "--round-trips",
    "--subs",
    "--messages",
    "--size",
    "--nodes",
    "--requests",
    "--procs",
    "--ttl",
    "--hold",
    "--window",
    "--heartbeat-fraction",
    "--drop-every",
    "--key-seed",
    "--stamp",
    // raw-broker, conns-worker and request-worker (internal modes)
    "--bind",
    "--port",
    "--curve-private-key",
    "--endpoint",
    "--server-key",
    "--first",
    "--count",
    "--agent",
];

impl Args {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
        let mut a = Args { positional: Vec::new(), values: HashMap::new(), flags: Vec::new() };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            if let Some((k, v)) = arg.split_once('=').filter(|(k, _)| k.starts_with("--")) {
                if !VALUES.contains(&k) {
                    return Err(format!("unknown option {k}"));
                }
                a.values.insert(k.to_string(), v.to_string());
            } else if FLAGS.contains(&arg.as_str()) {
                a.flags.push(arg);
            } else if VALUES.contains(&arg.as_str()) {
                let v = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                a.values.insert(arg, v);
            } else if arg.starts_with('-') {
                return Err(format!("unknown option {arg}"));
            } else {
                a.positional.push(arg);
            }
        }
        Ok(a)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|s| s.as_str())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.str(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name}: {v:?} is not a valid number")),
        }
    }

    fn secs(&self, name: &str, default: f64) -> Result<Duration> {
        let s: f64 = self.num(name, default)?;
        if !(s.is_finite() && s >= 0.0) {
            return Err(format!("{name}: {s} is not a duration in seconds"));
        }
        Ok(Duration::from_secs_f64(s))
    }

    fn list(&self, name: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.str(name) {
            None => Ok(default.to_vec()),
            Some(v) => {
                v.split(',').map(|x| x.trim().parse().map_err(|_| format!("{name}: {x:?} is not a number"))).collect()
            }
        }
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

pub fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mc0-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.flag("--help") || args.flag("-h") || args.positional.is_empty() {
        print!("{USAGE}");
        return if args.positional.is_empty() && !args.flag("--help") && !args.flag("-h") {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mc0-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Ok(false) when a measurement lost something.
fn run(args: &Args) -> Result<bool> {
    if let Err(e) = mc0::ensure_curve_support() {
        if !args.flag("--no-curve") {
            return Err(e);
        }
    }
    util::raise_fd_limit(1 << 20);
    let scenario = args.positional[0].as_str();
    if args.positional.len() > 1 {
        return Err(format!("unexpected argument {:?}", args.positional[1]));
    }
    match scenario {
        "allowlist" => return print_allowlist(args).map(|_| true),
        "raw-broker" => return raw_broker(args).map(|_| true),
        "conns-worker" => return conns_worker(args).map(|_| true),
        "request-worker" => return request_worker(args).map(|_| true),
        _ => {}
    }
    let duration = args.secs("--duration", 30.0)?;
    let timeout = args.secs("--timeout", 30.0)?;
    let drain = args.secs("--drain", 2.0)?;
    let threads: usize = args.num("--threads", 1)?;
    let io_threads: i32 = args.num("--io-threads", 1)?;
    let size: usize = args.num("--size", 1024)?;

    let mut cases: Vec<Case> = Vec::new();
    match scenario {
        "ack" => {
            let p = ack::Params {
                clients: args.num("--clients", 10)?,
                round_trips: args.num("--round-trips", 1000)?,
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
        "fanout" => {
            for subs in args.list("--subs", &[10, 100])? {
                // By default about 200,000 deliveries per case, whatever N.
                let messages = args.num("--messages", (200_000 / subs.max(1)).max(1000))?;
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
        "request" => {
            for nodes in args.list("--nodes", &[10, 100, 1000])? {
                // By default about 20,000 replies per case, whatever N.
                let requests = args.num("--requests", (20_000 / nodes.max(1)).clamp(20, 2000))?;
                let procs = args.num("--procs", 0)?;
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
        "conns" => {
            let p = conns::Params {
                clients: args.num("--clients", 1000)?,
                procs: args.num("--procs", 2)?,
                ttl_ms: args.num("--ttl", 5000)?,
                heartbeat_fraction: args.num("--heartbeat-fraction", heartbeat::NOOP_AFTER)?,
                hold: args.secs("--hold", 10.0)?,
                window: args.num("--window", 100)?,
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
        other => return Err(format!("unknown scenario {other:?} (ack, fanout, request, conns)")),
    }

    let targets = targets(args)?;
    let curve = !args.flag("--no-curve");
    let repeat: usize = args.num("--repeat", 1)?;
    let drop_every: Option<u64> =
        args.str("--drop-every").map(|v| v.parse()).transpose().map_err(|_| "--drop-every")?;
    let json = args.flag("--json");
    let key_seed = key_seed(args)?;
    if key_seed.is_some() && !curve {
        return Err("--key-seed needs CURVE: without it clients have no keys".into());
    }
    let stamp = match args.str("--stamp") {
        Some(mode) => mode.parse()?,
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
        let (lines, value) = report::summarize(scenario, &case.name, &case.judged, &rows, RAW);
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
    if !args.flag("--no-raw") {
        out.push(Target { label: RAW.into(), kind: Kind::Raw });
    }
    if args.flag("--raw-only") {
        return Ok(out);
    }
    if let Some(addr) = args.str("--broker") {
        let pid = args.str("--broker-pid").map(|p| p.parse()).transpose().map_err(|_| "--broker-pid: not a pid")?;
        out.push(Target {
            label: args.str("--label").unwrap_or("broker").into(),
            kind: Kind::External { addr: addr.into(), key_file: args.str("--broker-key").map(PathBuf::from), pid },
        });
    } else {
        let path = match args.str("--spawn-mc0d") {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let sibling = exe.with_file_name("mc0d");
                if !sibling.exists() {
                    return Err(format!("no mc0d next to {} (use --spawn-mc0d PATH or --broker)", exe.display()));
                }
                sibling
            }
        };
        out.push(Target { label: args.str("--label").unwrap_or("mc0d").into(), kind: Kind::Mc0d(path) });
    }
    if out.is_empty() {
        return Err("nothing to measure (--no-raw with --raw-only)".into());
    }
    Ok(out)
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
    let private_key = match (args.flag("--no-curve"), args.str("--curve-private-key")) {
        (true, _) => None,
        (false, Some(f)) => Some(PathBuf::from(f)),
        (false, None) => return Err("raw-broker needs --curve-private-key FILE or --no-curve".into()),
    };
    raw::serve(&raw::RawOptions {
        bind: args.str("--bind").unwrap_or("127.0.0.1").into(),
        port: args.num("--port", protocol::DEFAULT_PORT)?,
        private_key,
        stamp: args.str("--stamp").unwrap_or(Stamp::None.as_str()).parse()?,
        drop_every: args.str("--drop-every").map(|v| v.parse()).transpose().map_err(|_| "--drop-every")?,
    })
}

/// The broker a worker process is told to use.
fn worker_endpoint(args: &Args) -> Result<util::Endpoint> {
    let server_key = match args.str("--server-key") {
        Some(z) => Some(mc0::keys::parse_key(z)?),
        None => None,
    };
    Ok(util::Endpoint {
        addr: args.str("--endpoint").ok_or("a worker needs --endpoint")?.into(),
        server_key,
        key_seed: key_seed(args)?,
    })
}

fn key_seed(args: &Args) -> Result<Option<u64>> {
    args.str("--key-seed").map(|v| v.parse().map_err(|_| format!("--key-seed: {v:?} is not a number"))).transpose()
}

fn print_allowlist(args: &Args) -> Result<()> {
    let seed = key_seed(args)?.ok_or("allowlist needs --key-seed S")?;
    print!("{}", util::allowlist(seed, args.num("--clients", 1000)?)?);
    Ok(())
}

fn request_worker(args: &Args) -> Result<()> {
    request::worker(&request::WorkerOptions {
        endpoint: worker_endpoint(args)?,
        first: args.num("--first", 0)?,
        count: args.num("--count", 0)?,
        agent: args.str("--agent").ok_or("request-worker needs --agent")?.into(),
        size: args.num("--size", 1024)?,
        io_threads: args.num("--io-threads", 1)?,
    })
}

fn conns_worker(args: &Args) -> Result<()> {
    conns::worker(&conns::WorkerOptions {
        endpoint: worker_endpoint(args)?,
        first: args.num("--first", 0)?,
        count: args.num("--count", 0)?,
        ttl_ms: args.num("--ttl", protocol::DEFAULT_TTL_MS)?,
        heartbeat_fraction: args.num("--heartbeat-fraction", heartbeat::NOOP_AFTER)?,
        window: args.num("--window", 50)?,
        io_threads: args.num("--io-threads", 1)?,
    })
}
