//! `request`: the MCollective shape. One client subscribes to its reply
//! topic and PUTs a request with `X-REPLY-TO` to an agent topic; N node
//! clients subscribed to that agent each PUT one reply to the reply topic.
//! Requests run one after another; the figure is the time from the request
//! PUT to the N-th reply (reply collection time).

use super::report::Row;
use super::target::Running;
use super::util::{self, Reply, Result, Seen, Sock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
}

pub fn run(b: &mut Running, p: &Params) -> Result<Row> {
    let ctx = Running::context(p.io_threads, p.nodes + 1)?;
    let pid = std::process::id();
    let agent = mc0::topics::agent(util::COLLECTIVE, &format!("benchagent{pid}")).into_bytes();
    let reply_to = mc0::topics::reply(util::COLLECTIVE, "bench-client", pid).into_bytes();
    let deadline = Instant::now() + p.timeout;
    let nodes =
        util::clients(&ctx, &b.endpoint, p.nodes, &|i| format!("bench-node-{i} {pid}"), Some(&agent), deadline)?;
    let client = util::client(&ctx, &b.endpoint, &format!("bench-client {pid}"), Some(&reply_to), deadline)?;

    let stop = Arc::new(AtomicBool::new(false));
    let groups = util::spread(nodes.into_iter().enumerate().map(|(i, s)| (i as u32, s)).collect(), p.threads);
    let size = p.size.max(12);
    let responders: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let stop = stop.clone();
            std::thread::spawn(move || respond(group, size, &stop))
        })
        .collect();

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
        util::send(&client, &[b"", b"PUT", b"TOPIC", &agent, b"X-REPLY-TO", &reply_to, b"", &body], 0)
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
                let n = match util::recv(&client, &mut frames, zmq::DONTWAIT) {
                    Ok(n) => n,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(format!("recv: {e}")),
                };
                match util::classify(&frames[..n]) {
                    Reply::Message { body, .. } if body.len() >= 12 => {
                        let rseq = util::seq_of(body).unwrap();
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
    stop.store(true, Ordering::Release);
    let mut node_errors = 0u64;
    for r in responders {
        node_errors += r.join().map_err(|_| "node thread panicked".to_string())??;
    }
    util::disconnect_all(std::slice::from_ref(&client));
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
    let (p50, p99) = (util::percentile(&times, 50.0), util::percentile(&times, 99.0));
    Ok(Row {
        target: b.label.clone(),
        summary: format!(
            "{} requests to {} nodes: {:.0} requests/s, replies collected p50 {} p99 {}, {} replies lost",
            times.len(),
            p.nodes,
            rate,
            util::ms(p50),
            util::ms(p99),
            lost
        ),
        metrics: vec![
            ("nodes", p.nodes as f64),
            ("requests", issued as f64),
            ("complete", times.len() as f64),
            ("requests_per_s", rate),
            ("p50_ms", p50),
            ("p99_ms", p99),
        ],
        lost,
        errors,
    })
}

/// A group of nodes: answers each request with one reply PUT carrying the
/// request's sequence number and the node's index. Returns the count of
/// unexpected messages.
fn respond(nodes: Vec<(u32, Sock)>, size: usize, stop: &AtomicBool) -> Result<u64> {
    let mut frames = Vec::new();
    let mut reply = vec![0x3cu8; size];
    let mut bad = 0;
    let mut waiter = util::Waiter::new(nodes.iter().map(|(_, s)| &**s))?;
    let mut ready = Vec::new();
    while !stop.load(Ordering::Acquire) {
        waiter.wait(20, &mut ready)?;
        for &k in &ready {
            let (idx, s) = &nodes[k];
            util::drain(s, &mut frames, |f| {
                match util::classify(f) {
                    Reply::Message { body, frames: f, .. } if body.len() >= 8 => match util::header(f, b"X-REPLY-TO") {
                        Some(rt) => {
                            reply[..8].copy_from_slice(&body[..8]);
                            reply[8..12].copy_from_slice(&idx.to_le_bytes());
                            util::send(s, &[b"", b"PUT", b"TOPIC", rt, b"", &reply], 0)
                                .map_err(|e| format!("send reply: {e}"))?;
                        }
                        None => bad += 1,
                    },
                    Reply::Noop => {}
                    _ => bad += 1,
                }
                Ok(())
            })?;
        }
    }
    let socks: Vec<Sock> = nodes.into_iter().map(|(_, s)| s).collect();
    util::disconnect_all(&socks);
    Ok(bad)
}
