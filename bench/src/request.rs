//! `request`: the MCollective shape. One client subscribes to its reply
//! topic and PUTs a request with `X-REPLY-TO` to an agent topic; N node
//! clients subscribed to that agent each PUT one reply to the reply topic.
//! Requests run one after another; the figure is the time from the request
//! PUT to the N-th reply (reply collection time).
//!
//! The nodes live in this process (a thread per `--threads` group), or with
//! `--procs P` in P worker processes (`mc0-bench request-worker`): a fleet
//! of more than a few thousand nodes needs more file descriptors than one
//! process may have. Each node also subscribes to its directed topic
//! (`mcollective nodes <identity>`), as MCollective's nodes do: a fleet is
//! that many topics in the broker (and, with `--brokers`, in NATS).
//!
//! With `--brokers N` the nodes spread over the brokers (round-robin, or
//! worker `w` on broker `w` mod N) and the client uses the first one.

use super::clients::{Endpoint, Reply};
use super::report::Row;
use super::sockets::{Ctx, Sock};
use super::stats::Seen;
use super::target::Running;
use super::workers::{self, Parent, Workers};
use super::{clients, sockets, stats};
use crate::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Params {
    pub nodes: usize,
    pub requests: usize,
    pub size: usize,
    pub threads: usize,
    pub io_threads: i32,
    pub duration: Duration,
    pub timeout: Duration,
    /// Give up on a request after this long without a reply.
    pub drain: Duration,
    /// Worker processes holding the nodes; 0: this process.
    pub procs: usize,
}

fn node_name(i: usize, pid: u32) -> String {
    format!("{} {pid}", clients::numbered(clients::NODE, i))
}

/// What node `i` subscribes to: the agent and its directed topic.
fn node_topics(agent: &[u8], i: usize) -> Vec<Vec<u8>> {
    vec![agent.to_vec(), mc0::topics::node(clients::COLLECTIVE, &clients::numbered(clients::NODE, i)).into_bytes()]
}

/// The responding nodes, wherever they run.
enum Nodes {
    Threads { stop: Arc<AtomicBool>, responders: Vec<JoinHandle<Result<u64>>> },
    Procs(Workers),
}

impl Nodes {
    /// Connects the nodes; returns them and how many brokers hold some.
    fn start(b: &Running, p: &Params, ctx: &Arc<Ctx>, agent: &[u8], deadline: Instant) -> Result<(Nodes, usize)> {
        let size = p.size.max(12);
        let endpoints = b.endpoints();
        if p.procs > 0 {
            let agent = String::from_utf8_lossy(agent).into_owned();
            let workers = Workers::spawn("request-worker", b, p.nodes, p.procs, |_| {
                let args =
                    [["--agent", &agent], ["--size", &size.to_string()], ["--io-threads", &p.io_threads.to_string()]];
                args.concat().iter().map(|s| s.to_string()).collect()
            })?;
            workers.expect("CONNECTED", workers.len(), deadline)?;
            let used = workers.len().min(endpoints.len());
            return Ok((Nodes::Procs(workers), used));
        }
        let pid = std::process::id();
        // Node i on broker i mod k.
        let k = endpoints.len();
        let mut nodes = Vec::with_capacity(p.nodes);
        for (j, ep) in endpoints.iter().enumerate().take(p.nodes) {
            let count = (p.nodes - j).div_ceil(k);
            let index = |m: usize| j + m * k;
            let socks = clients::clients_with_topics(
                ctx,
                ep,
                count,
                &|m| node_name(index(m), pid),
                &|m| node_topics(agent, index(m)),
                deadline,
            )?;
            nodes.extend(socks.into_iter().enumerate().map(|(m, s)| (index(m) as u32, s)));
        }
        let used = k.min(p.nodes);
        let stop = Arc::new(AtomicBool::new(false));
        let groups = clients::spread(nodes, p.threads);
        let responders = groups
            .into_iter()
            .map(|group| {
                let stop = stop.clone();
                std::thread::spawn(move || respond(group, size, &|| stop.load(Ordering::Acquire)))
            })
            .collect();
        Ok((Nodes::Threads { stop, responders }, used))
    }

    /// Stops the nodes; returns how many unexpected messages they saw.
    fn stop(self, timeout: Duration) -> Result<u64> {
        match self {
            Nodes::Threads { stop, responders } => {
                stop.store(true, Ordering::Release);
                let mut bad = 0;
                for r in responders {
                    bad += r.join().map_err(|_| "node thread panicked".to_string())??;
                }
                Ok(bad)
            }
            Nodes::Procs(mut workers) => {
                workers.say("STOP")?;
                let done = workers.expect("DONE", workers.len(), Instant::now() + timeout)?;
                Ok(done.iter().flat_map(|(_, line)| workers::fields(line)).map(|(_, v)| v).sum())
            }
        }
    }
}

pub fn run(b: &mut Running, p: &Params) -> Result<Row> {
    let in_process = if p.procs > 0 { 0 } else { p.nodes };
    let ctx = Running::context(p.io_threads, in_process + 1)?;
    let pid = std::process::id();
    let agent = mc0::topics::agent(clients::COLLECTIVE, &format!("benchagent{pid}")).into_bytes();
    let reply_to = mc0::topics::reply(clients::COLLECTIVE, clients::REQUEST_CLIENT, pid).into_bytes();
    let deadline = Instant::now() + p.timeout;
    let rss_before = b.brokers_rss_kib();
    let connecting = Instant::now();
    let (nodes, brokers_used) = Nodes::start(b, p, &ctx, &agent, deadline)?;
    let connected_s = connecting.elapsed().as_secs_f64();
    let client =
        clients::client(&ctx, &b.endpoint, &format!("{} {pid}", clients::REQUEST_CLIENT), Some(&reply_to), deadline)?;
    // The agent on each broker with nodes, each node's directed topic, the reply topic.
    b.settle(brokers_used + p.nodes + 1, deadline)?;
    let nats = b.cluster.as_ref().map(|c| format!(", {}", c.nats_figures())).unwrap_or_default();
    let rss_per_node = match (rss_before, b.brokers_rss_kib()) {
        (Some(before), Some(after)) => after.saturating_sub(before) as f64 / p.nodes.max(1) as f64,
        _ => f64::NAN,
    };
    let size = p.size.max(12);

    let mut body = vec![0x5au8; size];
    let mut frames = Vec::new();
    let mut times: Vec<f64> = Vec::with_capacity(p.requests);
    let mut errors = Vec::new();
    let (mut lost, mut late, mut dups, mut issued) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    let hard = start + p.duration + p.timeout;
    for seq in 0..p.requests as u64 {
        if seq > 0 && start.elapsed() >= p.duration {
            break;
        }
        body[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        sockets::send(&client, &[b"", b"PUT", b"TOPIC", &agent, b"X-REPLY-TO", &reply_to, b"", &body], 0)
            .map_err(|e| format!("send request: {e}"))?;
        issued += 1;
        let mut seen = Seen::new(p.nodes);
        let mut last_progress = Instant::now();
        while (seen.distinct as usize) < p.nodes {
            let now = Instant::now();
            if now >= hard || now - last_progress >= p.drain {
                break;
            }
            let wait = (p.drain - (now - last_progress)).min(hard - now);
            if client.poll(zmq::POLLIN, wait.as_millis().max(1) as i64).map_err(|e| format!("poll: {e}"))? == 0 {
                continue;
            }
            loop {
                let n = match sockets::recv(&client, &mut frames, zmq::DONTWAIT) {
                    Ok(n) => n,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(format!("recv: {e}")),
                };
                match clients::classify(&clients::views(&frames[..n])) {
                    Reply::Message { body, .. } if body.len() >= 12 => {
                        let rseq = stats::seq_of(body).unwrap();
                        let node = u32::from_le_bytes(body[8..12].try_into().unwrap()) as u64;
                        if rseq == seq {
                            seen.mark(node);
                            last_progress = Instant::now();
                        } else {
                            late += 1;
                        }
                    }
                    Reply::Noop => {}
                    Reply::Error(m) => errors.push(format!("client: ERROR {m}")),
                    _ => errors.push("client: unexpected message".into()),
                }
            }
        }
        let complete = seen.distinct as usize == p.nodes;
        if complete {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        lost += p.nodes as u64 - seen.distinct;
        dups += seen.dups;
        if !complete && Instant::now() >= hard {
            errors.push("hard deadline reached".into());
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let node_errors = nodes.stop(p.timeout)?;
    clients::disconnect_all(std::slice::from_ref(&client));
    b.check_alive()?;
    if node_errors > 0 {
        errors.push(format!("{node_errors} unexpected messages at the nodes"));
    }
    if dups > 0 {
        errors.push(format!("{dups} duplicate replies"));
    }
    if late > 0 {
        errors.push(format!("{late} replies arrived after their request was given up"));
    }
    let rate = times.len() as f64 / elapsed;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (stats::percentile(&times, 50.0), stats::percentile(&times, 99.0));
    Ok(Row {
        target: b.label.clone(),
        summary: format!(
            "{} requests to {} nodes: {:.0} requests/s, replies collected p50 {} p99 {}, {} replies lost \
             (nodes connected in {connected_s:.1} s, brokers' RSS +{rss_per_node:.1} KiB per node{nats})",
            times.len(),
            p.nodes,
            rate,
            stats::ms(p50),
            stats::ms(p99),
            lost
        ),
        metrics: vec![
            ("nodes", p.nodes as f64),
            ("requests", issued as f64),
            ("complete", times.len() as f64),
            ("requests_per_s", rate),
            ("p50_ms", p50),
            ("p99_ms", p99),
            ("connect_s", connected_s),
            ("rss_kib_per_node", rss_per_node),
        ],
        lost,
        errors,
    })
}

pub struct WorkerOptions {
    pub endpoint: Endpoint,
    pub first: usize,
    pub count: usize,
    pub agent: String,
    pub size: usize,
    pub io_threads: i32,
}

/// The `request-worker` process: `count` nodes (indices from `first`)
/// subscribed to `agent`, answering every request until told to STOP.
pub fn worker(o: &WorkerOptions) -> Result<()> {
    Parent::serve(|parent| {
        let ctx = Ctx::new(o.io_threads, o.count + 64)?;
        let pid = std::process::id();
        let name = |i| node_name(o.first + i, pid);
        let deadline = Instant::now() + Duration::from_secs(600);
        let topics = |i| node_topics(o.agent.as_bytes(), o.first + i);
        let nodes = clients::clients_with_topics(&ctx, &o.endpoint, o.count, &name, &topics, deadline)?;
        parent.say(&format!("CONNECTED {}", nodes.len()));
        let nodes = nodes.into_iter().enumerate().map(|(i, s)| ((o.first + i) as u32, s)).collect();
        let bad = respond(nodes, o.size, &|| parent.said("STOP"))?;
        parent.say(&format!("DONE unexpected={bad}"));
        Ok(())
    })
}

/// A group of nodes: answers each request with one reply PUT carrying the
/// request's sequence number and the node's index, until `stop()`. Returns
/// the count of unexpected messages.
fn respond(nodes: Vec<(u32, Sock)>, size: usize, stop: &dyn Fn() -> bool) -> Result<u64> {
    let mut frames = Vec::new();
    let mut reply = vec![0x3cu8; size];
    let mut bad = 0;
    let mut waiter = sockets::Waiter::new(nodes.iter().map(|(_, s)| &**s))?;
    let mut ready = Vec::new();
    while !stop() {
        waiter.wait(20, &mut ready)?;
        for &k in &ready {
            let (idx, s) = &nodes[k];
            sockets::drain(s, &mut frames, |f| {
                match clients::classify(&clients::views(f)) {
                    Reply::Message { body, headers, .. } if body.len() >= 8 => {
                        match clients::header(&headers, "X-REPLY-TO") {
                            Some(rt) => {
                                reply[..8].copy_from_slice(&body[..8]);
                                reply[8..12].copy_from_slice(&idx.to_le_bytes());
                                sockets::send(s, &[b"", b"PUT", b"TOPIC", rt, b"", &reply], 0)
                                    .map_err(|e| format!("send reply: {e}"))?;
                            }
                            None => bad += 1,
                        }
                    }
                    Reply::Noop => {}
                    _ => bad += 1,
                }
                Ok(())
            })?;
        }
    }
    let socks: Vec<Sock> = nodes.into_iter().map(|(_, s)| s).collect();
    clients::disconnect_all(&socks);
    Ok(bad)
}
