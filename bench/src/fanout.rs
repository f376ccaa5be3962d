//! `fanout`: N subscribers on one topic, one publisher sending M PUTs of S
//! bytes as fast as the broker takes them. Every body carries its sequence
//! number, so each subscriber's losses and duplicates are counted exactly.
//! With `--brokers N` the publisher is on the first broker and the
//! subscribers on the others.

use super::clients::Reply;
use super::report::Row;
use super::sockets::Sock;
use super::stats::Seen;
use super::target::Running;
use super::{clients, sockets, stats};
use crate::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Params {
    pub subs: usize,
    pub messages: usize,
    pub size: usize,
    pub threads: usize,
    pub io_threads: i32,
    pub duration: Duration,
    pub timeout: Duration,
    /// How long to keep waiting after the last delivery before declaring the rest lost.
    pub drain: Duration,
}

struct RecvStats {
    distinct: u64,
    dups: u64,
    bad: u64,
    last: Option<Instant>,
    /// Deliveries per sender stamp ([`clients::STAMPS`]): the raw loop must
    /// send what mc0d does.
    stamps: [u64; 4],
}

pub fn run(b: &mut Running, p: &Params) -> Result<Row> {
    let ctx = Running::context(p.io_threads, p.subs + 1)?;
    let pid = std::process::id();
    let topic = format!("{} bench-fanout-{pid}", clients::COLLECTIVE).into_bytes();
    let deadline = Instant::now() + p.timeout;
    // With --brokers, the subscribers spread over the brokers but the
    // publisher's, so every delivery crosses NATS.
    let endpoints = b.endpoints();
    let remote = if endpoints.len() > 1 { &endpoints[1..] } else { &endpoints[..] };
    let mut subs = Vec::with_capacity(p.subs);
    for (j, ep) in remote.iter().enumerate().take(p.subs) {
        let index = |m: usize| j + m * remote.len();
        let count = (p.subs - j).div_ceil(remote.len());
        let name = |m| format!("{} {pid}", clients::numbered(clients::SUBSCRIBER, index(m)));
        subs.extend(clients::clients(&ctx, ep, count, &name, Some(&topic), deadline)?);
    }
    let publisher = clients::client(&ctx, &b.endpoint, &format!("{} {pid}", clients::PUBLISHER), None, deadline)?;
    b.settle(remote.len().min(p.subs), deadline)?;

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let groups = clients::spread(subs, p.threads);
    let messages = p.messages;
    let receivers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || receive(group, messages, &received, &stop))
        })
        .collect();

    // The publisher: sends until M or the duration, whichever first.
    let (pub_stop, sent) = (stop.clone(), Arc::new(AtomicU64::new(0)));
    let pub_sent = sent.clone();
    let (size, duration) = (p.size.max(8), p.duration);
    let start = Instant::now();
    let mut publisher = Some(std::thread::spawn(move || -> Result<Duration> {
        let mut body = vec![0xa5u8; size];
        // A send timeout keeps a stalled broker from hanging the run.
        publisher.set_sndtimeo(200).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        for seq in 0..messages as u64 {
            if t0.elapsed() >= duration {
                break;
            }
            body[..8].copy_from_slice(&seq.to_le_bytes());
            loop {
                match sockets::send(&publisher, &[b"", b"PUT", b"TOPIC", &topic, b"", &body], 0) {
                    Ok(()) => break,
                    Err(zmq::Error::EAGAIN) if !pub_stop.load(Ordering::Relaxed) => continue,
                    Err(e) => return Err(format!("publish: {e}")),
                }
            }
            pub_sent.store(seq + 1, Ordering::Release);
        }
        let took = t0.elapsed();
        // Closing with PUTs still queued would discard them (linger 0): wait
        // until the broker acknowledges a NOOP sent behind the last PUT.
        sockets::send(&publisher, &[b"", b"NOOP", b"ID", b"flush"], 0).map_err(|e| format!("flush: {e}"))?;
        let mut frames = Vec::new();
        loop {
            if pub_stop.load(Ordering::Relaxed) {
                return Err("publisher: no ack for the final NOOP".into());
            }
            if publisher.poll(zmq::POLLIN, 50).map_err(|e| e.to_string())? > 0 {
                let n = sockets::recv(&publisher, &mut frames, 0).map_err(|e| e.to_string())?;
                if let Reply::Ok(b"flush") = clients::classify(&clients::views(&frames[..n])) {
                    break;
                }
            }
        }
        clients::disconnect_all(std::slice::from_ref(&publisher));
        Ok(took)
    }));

    // Wait for every delivery, or until nothing arrives for `drain`.
    let hard = start + p.duration + p.timeout;
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let mut publish_time = None;
    let mut errors = Vec::new();
    loop {
        let got = received.load(Ordering::Acquire);
        if got != last_count {
            last_count = got;
            last_progress = Instant::now();
        }
        if publisher.as_ref().is_some_and(|h| h.is_finished()) {
            match publisher.take().unwrap().join().map_err(|_| "publisher thread panicked".to_string())? {
                Ok(t) => publish_time = Some(t),
                Err(e) => {
                    errors.push(e);
                    publish_time = Some(start.elapsed());
                }
            }
            let expected = sent.load(Ordering::Acquire) * p.subs as u64;
            if got >= expected {
                break;
            }
            continue;
        }
        if publish_time.is_some() {
            let expected = sent.load(Ordering::Acquire) * p.subs as u64;
            if got >= expected || last_progress.elapsed() >= p.drain {
                break;
            }
        }
        if Instant::now() >= hard {
            errors.push("hard deadline reached".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Release);
    if let Some(handle) = publisher {
        // Only reachable at the hard deadline: the publisher gives up on its next send timeout.
        let _ = handle.join();
    }
    let mut total = RecvStats { distinct: 0, dups: 0, bad: 0, last: None, stamps: [0; 4] };
    for r in receivers {
        let s = r.join().map_err(|_| "receiver thread panicked".to_string())??;
        total.distinct += s.distinct;
        total.dups += s.dups;
        total.bad += s.bad;
        total.last = total.last.max(s.last);
        for (sum, n) in total.stamps.iter_mut().zip(s.stamps) {
            *sum += n;
        }
    }
    b.check_alive()?;
    let sent = sent.load(Ordering::Acquire);
    let expected = sent * p.subs as u64;
    let lost = expected.saturating_sub(total.distinct);
    let to_last = total.last.map(|t| (t - start).as_secs_f64()).unwrap_or(f64::NAN);
    let rate = total.distinct as f64 / to_last;
    if total.dups > 0 {
        errors.push(format!("{} duplicate deliveries", total.dups));
    }
    if total.bad > 0 {
        errors.push(format!("{} malformed or unexpected messages", total.bad));
    }
    let stamps: Vec<(&str, u64)> = clients::STAMPS.into_iter().zip(total.stamps).filter(|(_, n)| *n > 0).collect();
    if stamps.len() > 1 {
        let each: Vec<String> = stamps.iter().map(|(stamp, n)| format!("{n} {stamp}")).collect();
        errors.push(format!("deliveries with different stamps: {}", each.join(", ")));
    }
    let stamp = stamps.first().map_or(String::new(), |(stamp, _)| format!(", {stamp}"));
    let publish_s = publish_time.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    Ok(Row {
        target: b.label.clone(),
        summary: format!(
            "{} x {} B to {} subs: {:.0} deliveries/s, {} lost of {}, last delivery after {}{stamp}",
            sent,
            p.size,
            p.subs,
            rate,
            lost,
            expected,
            stats::ms(to_last * 1e3)
        ),
        metrics: vec![
            ("published", sent as f64),
            ("expected", expected as f64),
            ("delivered", total.distinct as f64),
            ("deliveries_per_s", rate),
            ("time_to_last_ms", to_last * 1e3),
            ("publish_ms", publish_s * 1e3),
            // Deliveries carrying each header (indices of clients::STAMPS).
            ("with_sender", (total.stamps[1] + total.stamps[3]) as f64),
            ("with_sender_key", (total.stamps[2] + total.stamps[3]) as f64),
        ],
        lost,
        errors,
    })
}

fn receive(subs: Vec<Sock>, messages: usize, received: &AtomicU64, stop: &AtomicBool) -> Result<RecvStats> {
    let mut seen: Vec<Seen> = subs.iter().map(|_| Seen::new(messages)).collect();
    let mut frames = Vec::new();
    let mut stats = RecvStats { distinct: 0, dups: 0, bad: 0, last: None, stamps: [0; 4] };
    let mut waiter = sockets::Waiter::new(subs.iter().map(|s| &**s))?;
    let mut ready = Vec::new();
    while !stop.load(Ordering::Acquire) {
        waiter.wait(20, &mut ready)?;
        let mut batch = 0;
        for &i in &ready {
            let seen = &mut seen[i];
            sockets::drain(&subs[i], &mut frames, |f| {
                match clients::classify(&clients::views(f)) {
                    Reply::Message { body, headers, .. } => match stats::seq_of(body) {
                        Some(seq) => {
                            stats.stamps[clients::stamp_of(&headers)] += 1;
                            let before = seen.distinct;
                            seen.mark(seq);
                            batch += seen.distinct - before;
                        }
                        None => stats.bad += 1,
                    },
                    Reply::Noop => {}
                    _ => stats.bad += 1,
                }
                Ok(())
            })?;
        }
        if batch > 0 {
            stats.last = Some(Instant::now());
            received.fetch_add(batch, Ordering::AcqRel);
        }
    }
    for s in &seen {
        stats.distinct += s.distinct;
        stats.dups += s.dups;
        stats.bad += s.out_of_range;
    }
    clients::disconnect_all(&subs);
    Ok(stats)
}
