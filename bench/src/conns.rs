//! `conns`: C clients CONNECT with a TTL and SUB to their own
//! `<collective> nodes <id>` topic, hold with heartbeats, then get one PUT
//! each. The clients live in worker processes (`mc0-bench conns-worker`) so
//! file descriptors and CPU spread over several processes; the parent
//! coordinates them over their stdin/stdout and samples the broker's RSS and
//! CPU from /proc.

use super::clients::{Endpoint, Reply};
use super::report::Row;
use super::sockets::Ctx;
use super::target::Running;
use super::workers::{self, Parent, Workers};
use super::{clients, sockets, stats};
use crate::Result;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

pub struct Params {
    pub clients: usize,
    pub procs: usize,
    pub ttl_ms: u64,
    pub heartbeat_fraction: f64,
    pub hold: Duration,
    pub window: usize,
    pub io_threads: i32,
    pub timeout: Duration,
    pub drain: Duration,
}

fn node_identity(i: usize) -> String {
    clients::numbered(clients::NODE, i)
}

fn node_topic(i: usize) -> Vec<u8> {
    mc0::topics::node(clients::COLLECTIVE, &node_identity(i)).into_bytes()
}

pub fn run(b: &mut Running, p: &Params) -> Result<Row> {
    let rss_idle = b.rss_kib();
    let window = (p.window / p.procs.max(1)).max(1);
    let mut workers = Workers::spawn("conns-worker", b, p.clients, p.procs, |_| {
        [
            ["--ttl", &p.ttl_ms.to_string()],
            ["--window", &window.to_string()],
            ["--io-threads", &p.io_threads.to_string()],
            ["--heartbeat-fraction", &p.heartbeat_fraction.to_string()],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect()
    })?;
    let procs = workers.len();
    // Keys and sockets are prepared before GO, so only connecting is timed.
    workers.expect("READY", procs, Instant::now() + p.timeout)?;
    let t0 = Instant::now();
    workers.say("GO")?;
    workers.expect("CONNECTED", procs, t0 + p.timeout)?;
    let connect_s = t0.elapsed().as_secs_f64();
    let connect_rate = p.clients as f64 / connect_s;
    let rss_connected = b.rss_kib();

    // Hold: nothing but heartbeats. The hold itself is what is measured.
    let cpu0 = b.cpu_seconds();
    let hold_start = Instant::now();
    while hold_start.elapsed() < p.hold {
        if let Some((w, line)) = workers.next(p.hold.saturating_sub(hold_start.elapsed())) {
            if line.starts_with("FAIL") {
                return Err(format!("load worker {w}: {line}"));
            }
        }
    }
    let held = hold_start.elapsed().as_secs_f64();
    let cpu_pct = match (cpu0, b.cpu_seconds()) {
        (Some(a), Some(z)) => (z - a) / held * 100.0,
        _ => f64::NAN,
    };
    let rss_held = b.rss_kib();
    b.check_alive()?;

    // One directed PUT to every client.
    let ctx = Ctx::new(1, 64)?;
    let name = format!("{} {}", clients::CONNS_PUBLISHER, std::process::id());
    let publisher = clients::client(&ctx, &b.endpoint, &name, None, Instant::now() + p.timeout)?;
    let put0 = Instant::now();
    for i in 0..p.clients {
        let topic = node_topic(i);
        sockets::send(&publisher, &[b"", b"PUT", b"TOPIC", &topic, b"", &(i as u64).to_le_bytes()], 0)
            .map_err(|e| format!("publish: {e}"))?;
    }
    let mut got = vec![0u64; procs];
    let mut last_progress = Instant::now();
    let hard = put0 + p.timeout;
    let mut errors = Vec::new();
    while got.iter().sum::<u64>() < p.clients as u64 {
        if last_progress.elapsed() >= p.drain || Instant::now() >= hard {
            break;
        }
        if let Some((w, line)) = workers.next(Duration::from_millis(50)) {
            if let Some(n) = line.strip_prefix("GOT ").and_then(|n| n.trim().parse().ok()) {
                got[w] = n;
                last_progress = Instant::now();
            } else if line.starts_with("FAIL") {
                errors.push(format!("load worker {w}: {line}"));
            }
        }
    }
    let put_s = put0.elapsed().as_secs_f64();
    clients::disconnect_all(std::slice::from_ref(&publisher));
    workers.say("STOP")?;
    let mut delivered = 0u64;
    let mut heartbeats = 0u64;
    let mut late_ms = 0u64;
    for (w, line) in workers.expect("DONE", procs, Instant::now() + p.timeout)? {
        for (k, v) in workers::fields(&line) {
            match k {
                "delivered" => delivered += v,
                "heartbeats" => heartbeats += v,
                "late_ms" => late_ms = late_ms.max(v),
                "dups" | "errors" | "wrong" if v > 0 => errors.push(format!("load worker {w}: {k}={v}")),
                _ => {}
            }
        }
    }
    b.check_alive()?;
    let lost = (p.clients as u64).saturating_sub(delivered);
    let per_client = |rss: Option<u64>| match (rss_idle, rss) {
        (Some(a), Some(z)) => (z as f64 - a as f64) / p.clients as f64,
        _ => f64::NAN,
    };
    let (kib_connected, kib_held) = (per_client(rss_connected), per_client(rss_held));
    Ok(Row {
        target: b.label.clone(),
        summary: format!(
            "{} clients in {} procs: connect+sub {:.0}/s ({:.2} s), {} of {} directed PUTs delivered in {}, \
             RSS {:.1} KiB/client ({} MiB total), idle CPU {:.2}% over {:.0} s (TTL {} ms, {} client heartbeats, latest {} ms late)",
            p.clients,
            procs,
            connect_rate,
            connect_s,
            delivered,
            p.clients,
            stats::ms(put_s * 1e3),
            kib_held,
            rss_held.map(|k| k / 1024).unwrap_or(0),
            cpu_pct,
            held,
            p.ttl_ms,
            heartbeats,
            late_ms
        ),
        metrics: vec![
            ("clients", p.clients as f64),
            ("connect_s", connect_s),
            ("connects_per_s", connect_rate),
            ("delivered", delivered as f64),
            ("rss_kib_per_client", kib_held),
            ("rss_kib_per_client_connected", kib_connected),
            ("rss_mib", rss_held.map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN)),
            ("idle_cpu_pct", cpu_pct),
            ("hold_s", held),
            ("client_heartbeats", heartbeats as f64),
            ("heartbeat_late_ms", late_ms as f64),
        ],
        lost,
        errors,
    })
}

pub struct WorkerOptions {
    pub endpoint: Endpoint,
    pub first: usize,
    pub count: usize,
    pub ttl_ms: u64,
    pub heartbeat_fraction: f64,
    pub window: usize,
    pub io_threads: i32,
}

/// The `conns-worker` process: holds `count` clients and reports to the parent.
pub fn worker(o: &WorkerOptions) -> Result<()> {
    Parent::serve(|parent| worker_inner(o, parent))
}

fn worker_inner(o: &WorkerOptions, parent: &Parent) -> Result<()> {
    let ctx = Ctx::new(o.io_threads, o.count + 16)?;
    let rid = |i| format!("{} {}", node_identity(o.first + i), std::process::id());
    let keys: Vec<Option<zmq::CurveKeyPair>> =
        (0..o.count).map(|i| o.endpoint.client_keys(rid(i).as_bytes())).collect::<Result<_>>()?;
    // Each client sends NOOP when it has been silent for (by default, as the
    // protocol says) 0.95 x TTL.
    let interval = Duration::from_secs_f64(o.ttl_ms as f64 / 1000.0 * o.heartbeat_fraction);
    parent.say("READY");
    parent.wait_for("GO")?;
    let (socks, sent_at, took) = clients::handshake(
        o.count,
        o.window,
        o.ttl_ms,
        &|i| vec![node_topic(o.first + i)],
        &mut |i| clients::dealer_with_keys(&ctx, &o.endpoint, rid(i).as_bytes(), keys[i].as_ref()),
        Instant::now() + Duration::from_secs(600),
        Some(interval),
    )?;
    parent.say(&format!("CONNECTED {} {:.3}", socks.len(), took.as_secs_f64()));

    let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
        sent_at.iter().enumerate().map(|(i, t)| Reverse((*t + interval, i))).collect();
    let mut delivered = vec![false; socks.len()];
    let (mut got, mut reported, mut dups, mut wrong, mut errors, mut heartbeats) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    // How far behind schedule a heartbeat went out: tells a slow load
    // generator apart from a broker expiring clients that kept their TTL.
    let mut late_ms = 0u64;
    let mut last_report = Instant::now();
    let mut frames = Vec::new();
    let mut waiter = sockets::Waiter::new(socks.iter().map(|s| &**s))?;
    let (mut ready, mut rechecks) = (Vec::new(), Vec::new());
    while !parent.said("STOP") {
        while let Some(Reverse((when, i))) = due.peek().copied() {
            if when > Instant::now() {
                break;
            }
            due.pop();
            late_ms = late_ms.max(when.elapsed().as_millis() as u64);
            sockets::send(&socks[i], &[b"", b"NOOP"], zmq::DONTWAIT).map_err(|e| format!("heartbeat: {e}"))?;
            heartbeats += 1;
            // The send may have consumed the wake-up of a message that
            // arrived meanwhile: look at this socket in this round.
            rechecks.push(i);
            due.push(Reverse((Instant::now() + interval, i)));
        }
        let next = due.peek().map(|Reverse((w, _))| w.saturating_duration_since(Instant::now()));
        let timeout = next.unwrap_or(Duration::from_millis(100)).min(Duration::from_millis(100));
        waiter.wait(timeout.as_millis() as i32, &mut ready)?;
        ready.append(&mut rechecks);
        for &i in &ready {
            sockets::drain(&socks[i], &mut frames, |f| {
                match clients::classify(&clients::views(f)) {
                    Reply::Message { topic, body, .. } => {
                        if topic != &node_topic(o.first + i)[..] || stats::seq_of(body) != Some((o.first + i) as u64) {
                            wrong += 1;
                        } else if delivered[i] {
                            dups += 1;
                        } else {
                            delivered[i] = true;
                            got += 1;
                        }
                    }
                    Reply::Noop | Reply::Ok(_) => {}
                    Reply::Error(_) | Reply::Other(_) => errors += 1,
                }
                Ok(())
            })?;
        }
        if got != reported && (got == socks.len() as u64 || last_report.elapsed() >= Duration::from_millis(50)) {
            parent.say(&format!("GOT {got}"));
            reported = got;
            last_report = Instant::now();
        }
    }
    clients::disconnect_all(&socks);
    parent.say(&format!(
        "DONE delivered={got} dups={dups} wrong={wrong} errors={errors} heartbeats={heartbeats} late_ms={late_ms}"
    ));
    Ok(())
}
