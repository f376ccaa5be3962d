//! `ack`: K clients, each with its own socket and CURVE keypair, doing N
//! sequential `NOOP ID n` round trips; acks/s and latency percentiles.

use super::clients::Reply;
use super::report::Row;
use super::target::Running;
use super::{clients, sockets, stats};
use crate::Result;
use std::time::{Duration, Instant};

pub struct Params {
    pub clients: usize,
    pub round_trips: usize,
    pub io_threads: i32,
    pub duration: Duration,
    pub timeout: Duration,
}

/// Writes `n` in decimal into `buf`, returning the digits.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

pub fn run(b: &mut Running, p: &Params) -> Result<Row> {
    let ctx = Running::context(p.io_threads, p.clients)?;
    let pid = std::process::id();
    let (socks, _, _) = clients::handshake(
        p.clients,
        p.clients,
        mc0::protocol::DEFAULT_TTL_MS,
        &|_| Vec::new(),
        &mut |i| {
            clients::dealer(
                &ctx,
                &b.endpoint,
                format!("{} {pid}", clients::numbered(clients::ACK_CLIENT, i)).as_bytes(),
            )
        },
        Instant::now() + p.timeout,
        None,
    )?;
    let k = socks.len();
    let mut sent_at = vec![Instant::now(); k];
    let mut count = vec![0u64; k];
    let mut latencies: Vec<f64> = Vec::with_capacity(k * p.round_trips);
    let mut frames = Vec::new();
    let mut buf = [0u8; 20];
    let mut errors = Vec::new();

    let start = Instant::now();
    let stop_sending = start + p.duration;
    let hard = stop_sending + p.timeout;
    let mut outstanding = 0usize;
    for (i, s) in socks.iter().enumerate() {
        sent_at[i] = Instant::now();
        sockets::send(s, &[b"", b"NOOP", b"ID", decimal(0, &mut buf)], 0).map_err(|e| format!("send: {e}"))?;
        outstanding += 1;
    }
    while outstanding > 0 {
        let now = Instant::now();
        if now >= hard {
            errors.push(format!("{outstanding} round trips unanswered at the deadline"));
            break;
        }
        let ready: Vec<bool> = {
            let mut items: Vec<zmq::PollItem> = socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
            zmq::poll(&mut items, (hard - now).as_millis().min(1000) as i64).map_err(|e| format!("poll: {e}"))?;
            items.iter().map(|it| it.is_readable()).collect()
        };
        for (i, s) in socks.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            loop {
                let n = match sockets::recv(s, &mut frames, zmq::DONTWAIT) {
                    Ok(n) => n,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(format!("recv: {e}")),
                };
                match clients::classify(&clients::views(&frames[..n])) {
                    Reply::Ok(id) if id == decimal(count[i], &mut buf) => {
                        latencies.push(sent_at[i].elapsed().as_secs_f64() * 1e3);
                        count[i] += 1;
                        outstanding -= 1;
                        if (count[i] as usize) < p.round_trips && Instant::now() < stop_sending {
                            sent_at[i] = Instant::now();
                            sockets::send(s, &[b"", b"NOOP", b"ID", decimal(count[i], &mut buf)], 0)
                                .map_err(|e| format!("send: {e}"))?;
                            outstanding += 1;
                        }
                    }
                    Reply::Ok(id) => errors.push(format!("client {i}: ack for {:?} out of order", id)),
                    Reply::Noop => {}
                    Reply::Error(m) => errors.push(format!("client {i}: ERROR {m}")),
                    Reply::Message { .. } => errors.push(format!("client {i}: unexpected MESSAGE")),
                    Reply::Other(m) => errors.push(format!("client {i}: {m}")),
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    clients::disconnect_all(&socks);
    b.check_alive()?;
    let acks = latencies.len() as f64;
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99, max) = (
        stats::percentile(&latencies, 50.0),
        stats::percentile(&latencies, 99.0),
        stats::percentile(&latencies, 100.0),
    );
    let rate = acks / elapsed;
    Ok(Row {
        target: b.label.clone(),
        summary: format!(
            "{acks} acks from {k} clients in {elapsed:.2} s: {rate:.0} acks/s, latency p50 {} p99 {} max {}",
            stats::ms(p50),
            stats::ms(p99),
            stats::ms(max)
        ),
        metrics: vec![
            ("acks", acks),
            ("seconds", elapsed),
            ("acks_per_s", rate),
            ("p50_ms", p50),
            ("p99_ms", p99),
            ("max_ms", max),
        ],
        lost: outstanding as u64,
        errors,
    })
}
