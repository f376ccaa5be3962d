//! Queue throughput against plain pub/sub, same sitting, real mc0d over
//! CURVE on loopback. A benchmark, not a test: ignored by `make test`; run
//!
//!     cargo test --release -p mc0 --test bench_queues -- --ignored --nocapture
//!
//! and copy the `MEASURE` lines into docs/BENCHMARKS.md. Shapes: one
//! producer → one consumer, 1 KB bodies; pipelined (up to WINDOW PUTs
//! awaiting their OK) or one OK awaited per PUT; the consumer acknowledges
//! every queue delivery (ACK without ID).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Client, Mc0d, TempDir};
use mc0::protocol::{parse_delivery, Command, Limits, Reply, DELIVERY};

const TOPIC: &[u8] = b"mcollective reply bench async";
const WINDOW: usize = 1000;

fn consume(c: Client, n: usize, ack: bool) -> Duration {
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        let frames = c.recv(Duration::from_secs(30)).expect("a delivery within 30 s");
        let Ok(Reply::Message { headers, .. }) = Reply::parse(&frames, &Limits::default()) else { continue };
        got += 1;
        if ack {
            let id = headers.iter().find(|(k, _)| *k == DELIVERY.as_bytes()).expect("a delivery id").1;
            c.send_command(&Command::Ack { id: None, deliveries: vec![parse_delivery(id).unwrap()] });
        }
    }
    start.elapsed()
}

/// Publishes `n` PUTs, at most `window` unanswered; returns each PUT's
/// latency to its OK.
fn produce(p: &Client, n: usize, window: usize) -> Vec<Duration> {
    let body = vec![b'x'; 1024];
    let mut sent_at = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let mut next = 0;
    while latencies.len() < n {
        while next < n && next - latencies.len() < window {
            let id = next.to_string();
            sent_at.push(Instant::now());
            p.send_command(&Command::Put { topic: TOPIC, headers: vec![], id: Some(id.as_bytes()), body: vec![&body] });
            next += 1;
        }
        let frames = p.recv(Duration::from_secs(30)).expect("an OK within 30 s");
        match Reply::parse(&frames, &Limits::default()) {
            Ok(Reply::Ok { id }) => {
                let i: usize = std::str::from_utf8(id).unwrap().parse().unwrap();
                latencies.push(sent_at[i].elapsed());
            }
            Ok(Reply::Noop) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    latencies
}

fn run(name: &str, args: &[&str], queue: bool, n: usize, window: usize) {
    let broker = Mc0d::start_args(args);
    let ctx = zmq::Context::new();
    let consumer = broker.client(&ctx);
    consumer.handshake(60_000);
    let queue_name: &[u8] = b"async";
    consumer.call(&Command::Sub { id: Some(b"s"), queue: queue.then_some(queue_name), topics: vec![TOPIC] });
    let producer = broker.client(&ctx);
    producer.handshake(60_000);
    let start = Instant::now();
    let reader = thread::spawn(move || consume(consumer, n, queue));
    let mut latencies = produce(&producer, n, window);
    let _ = reader.join().unwrap();
    let took = start.elapsed();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "MEASURE {name}: {n} x 1 KB, window {window}: {:.0} msg/s end to end, publish p99 {:.2} ms",
        n as f64 / took.as_secs_f64(),
        p99.as_secs_f64() * 1000.0
    );
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn queue_throughput_next_to_plain_pub_sub() {
    let dir = TempDir::new("bench-queues");
    let disk = dir.path().join("q");
    let disk = disk.to_str().unwrap();
    let declare = "--queue=mcollective reply bench async=async";
    run("plain pub/sub", &[], false, 50_000, WINDOW);
    run("queue, memory", &[declare], true, 50_000, WINDOW);
    run("queue, --queue-dir", &[declare, "--queue-dir", disk], true, 5_000, WINDOW);
    run("plain pub/sub, OK per PUT", &[], false, 5_000, 1);
    run("queue, memory, OK per PUT", &[declare], true, 5_000, 1);
    let disk2 = dir.path().join("q2");
    run("queue, --queue-dir, OK per PUT", &[declare, "--queue-dir", disk2.to_str().unwrap()], true, 1_000, 1);
}
