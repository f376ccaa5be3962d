//! `queue`: one producer → one consumer of S-byte messages through mc0d's
//! queues (issue 14), next to plain pub/sub in the same run. The modes are
//! the run's targets — `plain` (the consumer SUBscribes plainly), `memory`
//! (it consumes a queue), `disk` (the same with `--queue-dir`),
//! `disk-thread` (`disk` with `--queue-writer thread`) and, with
//! `--classic-queue-frames`, `classic` (`memory` for a consumer that does
//! not ask for compact deliveries) — so each figure comes with its ratio to
//! plain pub/sub. A queue consumer asks for compact deliveries and lists
//! its ACK ids in one frame once it has had one, as libmc0 does. The
//! shapes are the cases:
//!
//! - `ok-per-put`: the producer awaits each PUT's OK (for `disk`: "on
//!   disk") before the next, the consumer takes each message as it comes
//!   and acknowledges what it took as libmc0 does: one `ACK` for every
//!   delivery taken since the last;
//! - `in-flight`: the same with up to W PUTs awaiting their OK;
//! - `keep-ok-per-put` and `keep-in-flight`: the producer alone, into the
//!   queue while no consumer is connected, so the queue keeps every message
//!   (timed until the last OK; then a consumer takes them all, untimed, to
//!   check none is lost). These are RabbitMQ's `confirm` and `pipelined`
//!   shapes (benches/rabbitmq_durable.py, which publishes with no consumer);
//! - `consume`: M messages wait in the queue (published with W in flight,
//!   no consumer), then the consumer takes them all, acknowledging each with
//!   an `ACK` of its own.
//!
//! Plain pub/sub keeps nothing, so it has no `keep-*` or `consume` figure.
//! msg/s counts from the first PUT (or, for `consume`, the consumer's SUB)
//! until the consumer has the last message (for `keep-*`, until the last
//! OK); publish p99 is PUT to OK; RSS is mc0d's at the end.

use super::clients::Reply;
use super::report::Row;
use super::target::{Kind, Running, Target};
use super::{clients, sockets, stats};
use crate::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mc0::protocol::{self, AckForm, Command, DELIVERY, QUEUE_DELIVERY};

/// The targets, one per mode: their labels.
pub const PLAIN: &str = "plain";
pub const MEMORY: &str = "memory";
pub const DISK: &str = "disk";
/// `disk` with the journal written by a store thread (`--queue-writer
/// thread`), as where the file system has no `O_DIRECT`.
pub const DISK_THREAD: &str = "disk-thread";
pub const CLASSIC: &str = "classic";

const QUEUE: &[u8] = b"async";

/// Runs so far: each run has a topic (and so a queue) of its own, so
/// nothing a run left in a `disk` store reaches the next.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// The modes of the spawned mc0d among `targets` (with `classic`, four);
/// `disk` keeps its store in `dir`.
pub fn modes(targets: Vec<Target>, dir: &std::path::Path, classic: bool) -> Result<Vec<Target>> {
    let mc0d = targets
        .into_iter()
        .find(|t| matches!(t.kind, Kind::Mc0d(_)))
        .ok_or("queue needs an mc0d it spawns (--queue-dir for the disk mode): not --broker or --raw-only")?;
    let mode = |label: &str, args: Vec<String>| Target { label: label.into(), mc0d_args: args, ..mc0d.clone() };
    let dir = dir.to_str().ok_or("the temporary directory's path is not UTF-8")?;
    let mut modes = vec![mode(PLAIN, Vec::new()), mode(MEMORY, Vec::new())];
    if classic {
        modes.push(mode(CLASSIC, Vec::new()));
    }
    modes.push(mode(DISK, vec!["--queue-dir".into(), dir.into()]));
    let thread_dir = format!("{dir}/thread");
    modes.push(mode(DISK_THREAD, vec!["--queue-dir".into(), thread_dir, "--queue-writer".into(), "thread".into()]));
    Ok(modes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    OkPerPut,
    KeepOkPerPut,
    InFlight,
    KeepInFlight,
    Consume,
}

impl Shape {
    pub const ALL: [Shape; 5] =
        [Shape::OkPerPut, Shape::KeepOkPerPut, Shape::InFlight, Shape::KeepInFlight, Shape::Consume];

    pub fn name(self) -> &'static str {
        match self {
            Shape::OkPerPut => "ok-per-put",
            Shape::KeepOkPerPut => "keep-ok-per-put",
            Shape::InFlight => "in-flight",
            Shape::KeepInFlight => "keep-in-flight",
            Shape::Consume => "consume",
        }
    }

    /// `--shapes`: a shape by its [`name`](Self::name).
    pub fn parse(name: &str) -> std::result::Result<Shape, String> {
        let names = || Shape::ALL.map(Shape::name).join(", ");
        Shape::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| format!("not a shape: {}", names()))
    }

    /// One PUT awaiting its OK at a time.
    pub fn one_at_a_time(self) -> bool {
        matches!(self, Shape::OkPerPut | Shape::KeepOkPerPut)
    }

    /// Messages wait in the queue with no consumer connected, which plain
    /// pub/sub cannot do.
    fn needs_a_queue(self) -> bool {
        matches!(self, Shape::KeepOkPerPut | Shape::KeepInFlight | Shape::Consume)
    }
}

pub struct Params {
    pub shape: Shape,
    pub messages: usize,
    pub window: usize,
    pub size: usize,
    pub timeout: Duration,
}

/// The producer's side: PUTs sent, OKs awaited.
struct Producer {
    sock: sockets::Sock,
    topic: Vec<u8>,
    body: Vec<u8>,
    sent_at: Vec<Instant>,
    latencies: Vec<f64>,
    window: usize,
    total: usize,
}

impl Producer {
    /// Sends PUTs while fewer than `window` await their OK.
    fn fill(&mut self) -> Result<()> {
        let mut buf = [0u8; 20];
        while self.sent_at.len() < self.total && self.sent_at.len() - self.latencies.len() < self.window {
            let id = super::ack::decimal(self.sent_at.len() as u64, &mut buf);
            self.sent_at.push(Instant::now());
            sockets::send(&self.sock, &[b"", b"PUT", b"TOPIC", &self.topic, b"ID", id, b"", &self.body], 0)
                .map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.latencies.len() == self.total
    }

    /// Takes the OKs waiting; OKs come in order.
    fn read(&mut self, frames: &mut Vec<zmq::Message>, errors: &mut Vec<String>) -> Result<()> {
        loop {
            let n = match sockets::recv(&self.sock, frames, zmq::DONTWAIT) {
                Ok(n) => n,
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(e) => return Err(format!("recv: {e}")),
            };
            match clients::classify(&clients::views(&frames[..n])) {
                Reply::Ok(_) => {
                    let i = self.latencies.len();
                    self.latencies.push(self.sent_at[i].elapsed().as_secs_f64() * 1e3);
                }
                Reply::Noop => {}
                Reply::Error(m) => return Err(format!("producer: ERROR {m}")),
                other => errors.push(format!("producer: unexpected {}", what(&other))),
            }
        }
    }
}

fn what(reply: &Reply<'_>) -> String {
    match reply {
        Reply::Ok(_) => "OK".into(),
        Reply::Message { .. } => "MESSAGE".into(),
        Reply::Noop => "NOOP".into(),
        Reply::Error(m) => format!("ERROR {m}"),
        Reply::Other(m) => m.clone(),
    }
}

/// How the consumer acknowledges queue deliveries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acks {
    /// Plain pub/sub: nothing to acknowledge.
    None,
    /// One `ACK` per message (as `pika` does in RabbitMQ's consume shape).
    Each,
    /// One `ACK` for every delivery taken since the last, as libmc0 does.
    Batched,
}

/// Takes the messages waiting for the consumer, acknowledging queue
/// deliveries as `acks` says; returns how many. `lists`: a compact
/// delivery came, so the broker reads ACK id lists (as libmc0, the
/// consumer sends them only then).
fn consume(
    sock: &zmq::Socket,
    acks: Acks,
    lists: &mut bool,
    frames: &mut Vec<zmq::Message>,
    errors: &mut Vec<String>,
) -> Result<usize> {
    let mut got = 0;
    let mut taken: Vec<u64> = Vec::new();
    let flush = |taken: &mut Vec<u64>, lists: bool| -> Result<()> {
        if taken.is_empty() {
            return Ok(());
        }
        let form = if lists { AckForm::List } else { AckForm::FramePerId };
        let ack = protocol::ack_frames(None, taken, form);
        let ack: Vec<&[u8]> = ack.iter().map(Vec::as_slice).collect();
        let sent = sockets::send(sock, &ack, 0).map_err(|e| format!("send: {e}"));
        taken.clear();
        sent
    };
    loop {
        let n = match sockets::recv(sock, frames, zmq::DONTWAIT) {
            Ok(n) => n,
            Err(zmq::Error::EAGAIN) => {
                flush(&mut taken, *lists)?;
                return Ok(got);
            }
            Err(e) => return Err(format!("recv: {e}")),
        };
        let views = clients::views(&frames[..n]);
        match clients::classify(&views) {
            Reply::Message { headers, .. } => {
                got += 1;
                if acks == Acks::None {
                    continue;
                }
                let delivery = match clients::header(&headers, QUEUE_DELIVERY) {
                    Some(folded) => {
                        *lists = true;
                        protocol::parse_queue_delivery(folded).map(|(id, _)| id).ok()
                    }
                    None => clients::header(&headers, DELIVERY),
                };
                let Some(delivery) = delivery.and_then(|d| protocol::parse_delivery(d).ok()) else {
                    errors.push("a queue delivery without a delivery id".into());
                    continue;
                };
                taken.push(delivery);
                if acks == Acks::Each || taken.len() >= MAX_ACK {
                    flush(&mut taken, *lists)?;
                }
            }
            Reply::Ok(_) | Reply::Noop => {}
            other => errors.push(format!("consumer: unexpected {}", what(&other))),
        }
    }
}

/// Delivery ids per batched `ACK` (within the broker's frame limit).
const MAX_ACK: usize = 1000;

/// SUBscribes `sock` to the topic, as a queue consumer (asking for compact
/// deliveries or not) or plainly, and waits for the OK.
fn subscribe(sock: &zmq::Socket, topic: &[u8], queue: bool, compact: bool, deadline: Instant) -> Result<()> {
    let sub = Command::Sub { id: Some(b"sub"), queue: queue.then_some(QUEUE), compact, topics: vec![topic] };
    clients::send_command(sock, &sub).map_err(|e| format!("send: {e}"))?;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.poll(zmq::POLLIN, left.as_millis() as i64).map_err(|e| e.to_string())? == 0 {
            return Err("no OK to SUB in time".into());
        }
        let n = sockets::recv(sock, &mut frames, 0).map_err(|e| format!("recv: {e}"))?;
        match clients::classify(&clients::views(&frames[..n])) {
            Reply::Ok(b"sub") => return Ok(()),
            Reply::Noop => {}
            other => return Err(format!("SUB answered with {}", what(&other))),
        }
    }
}

pub fn run(b: &mut Running, p: &Params) -> Result<Row> {
    let queued = b.label != PLAIN;
    let compact = b.label != CLASSIC;
    let mut lists = false;
    if p.shape.needs_a_queue() && !queued {
        return Ok(Row {
            target: b.label.clone(),
            summary: "not applicable: plain pub/sub keeps nothing".into(),
            metrics: vec![("consumed", 0.0), ("msgs_per_s", f64::NAN), ("publish_p99_ms", f64::NAN)],
            lost: 0,
            errors: Vec::new(),
        });
    }
    let topic = format!("mcollective reply bench-queue async{}", RUNS.fetch_add(1, Ordering::Relaxed));
    let topic = topic.as_bytes();
    let ctx = Running::context(1, 2)?;
    let deadline = Instant::now() + p.timeout;
    let pid = std::process::id();
    let consumer = clients::client(&ctx, &b.endpoint, &format!("{} {pid}", clients::SUBSCRIBER), None, deadline)?;
    let producer = clients::client(&ctx, &b.endpoint, &format!("{} {pid}", clients::PUBLISHER), None, deadline)?;
    let window = if p.shape.one_at_a_time() { 1 } else { p.window };
    let mut producer = Producer {
        sock: producer,
        topic: topic.to_vec(),
        body: vec![b'x'; p.size],
        sent_at: Vec::with_capacity(p.messages),
        latencies: Vec::with_capacity(p.messages),
        window,
        total: p.messages,
    };
    let mut frames = Vec::new();
    let mut errors = Vec::new();
    let mut got = 0;
    let start;
    let elapsed;
    if p.shape.needs_a_queue() {
        // The queue first (so it keeps what follows), then its messages
        // while nobody consumes, then a consumer that takes them all.
        subscribe(&consumer, topic, true, compact, deadline)?;
        sockets::send(&consumer, &[b"", b"DISCONNECT"], 0).map_err(|e| format!("send: {e}"))?;
        drop(consumer);
        let filling = Instant::now();
        while !producer.done() {
            producer.fill()?;
            wait(&[&producer.sock], p.timeout)?;
            producer.read(&mut frames, &mut errors)?;
        }
        let filled = filling.elapsed();
        let deadline = Instant::now() + p.timeout;
        let consumer = clients::client(&ctx, &b.endpoint, &format!("{} {pid} 2", clients::SUBSCRIBER), None, deadline)?;
        start = Instant::now();
        subscribe(&consumer, topic, true, compact, deadline)?;
        while got < p.messages {
            wait(&[&consumer], p.timeout)?;
            got += consume(&consumer, Acks::Each, &mut lists, &mut frames, &mut errors)?;
        }
        elapsed = if p.shape == Shape::Consume { start.elapsed() } else { filled };
        clients::disconnect_all(&[consumer]);
    } else {
        subscribe(&consumer, topic, queued, compact, deadline)?;
        let acks = if queued { Acks::Batched } else { Acks::None };
        start = Instant::now();
        while got < p.messages || !producer.done() {
            producer.fill()?;
            wait(&[&producer.sock, &consumer], p.timeout)?;
            producer.read(&mut frames, &mut errors)?;
            got += consume(&consumer, acks, &mut lists, &mut frames, &mut errors)?;
        }
        elapsed = start.elapsed();
        clients::disconnect_all(&[consumer]);
    }
    let elapsed = elapsed.as_secs_f64();
    let rss_mib = b.rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0);
    clients::disconnect_all(&[producer.sock]);
    b.check_alive()?;
    let mut latencies = producer.latencies;
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = stats::percentile(&latencies, 99.0);
    let rate = got as f64 / elapsed;
    let kept = if p.shape.needs_a_queue() { " kept" } else { "" };
    let what = match p.shape {
        Shape::Consume => format!("{got} consumed with an ACK each in {elapsed:.2} s: {rate:.0} msg/s, RSS {rss_mib:.0} MiB"),
        _ => format!(
            "{got} x {} B{kept}, {window} in flight, in {elapsed:.2} s: {rate:.0} msg/s, publish p99 {}, RSS {rss_mib:.0} MiB",
            p.size,
            stats::ms(p99)
        ),
    };
    Ok(Row {
        target: b.label.clone(),
        summary: what,
        metrics: vec![
            ("consumed", got as f64),
            ("msgs_per_s", rate),
            ("rss_mib", rss_mib),
            ("publish_p99_ms", if p.shape == Shape::Consume { f64::NAN } else { p99 }),
        ],
        lost: (p.messages - got) as u64,
        errors,
    })
}

/// Waits until one of `socks` has input; fails after `stall` without any
/// (`--timeout`).
fn wait(socks: &[&zmq::Socket], stall: Duration) -> Result<()> {
    let mut items: Vec<zmq::PollItem> = socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
    match zmq::poll(&mut items, stall.as_millis() as i64).map_err(|e| format!("poll: {e}"))? {
        0 => Err(format!("nothing from the broker for {stall:?} (--timeout)")),
        _ => Ok(()),
    }
}
