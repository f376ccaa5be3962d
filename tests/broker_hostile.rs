//! Hostile input against the real `mc0d`: the checked-in corpus of
//! malformed messages, random frames, every configurable limit, and
//! denial-of-service shapes (half-open connections, 100 000 subscriptions,
//! a client that floods and never reads). Each is followed by a check that
//! a well-behaved client is still served; the waits are measured and
//! printed (`cargo test --release --test broker_hostile -- --nocapture`).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Client, Mc0d, Monitor, WAIT};
use mc0::protocol::{Command, Limits, Reply};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

fn sub<'a>(id: &'a str, topics: Vec<&'a [u8]>) -> Command<'a> {
    Command::Sub { id: Some(id.as_bytes()), queue: None, compact: false, topics }
}

fn put<'a>(topic: &'a [u8], id: &'a str, body: &'a [u8]) -> Command<'a> {
    Command::Put { topic, headers: vec![], id: Some(id.as_bytes()), body: vec![body] }
}

/// A pair of well-behaved clients: `watcher` subscribes to "witness".
struct Witness {
    publisher: Client,
    watcher: Client,
}

impl Witness {
    fn new(broker: &Mc0d, ctx: &zmq::Context) -> Witness {
        let publisher = broker.client(ctx);
        publisher.handshake(60_000);
        let watcher = broker.client(ctx);
        watcher.handshake(60_000);
        watcher.call(&sub("w", vec![b"witness"]));
        Witness { publisher, watcher }
    }

    /// A PUT from one good client reaches the other; returns how long the
    /// round trip (ack and delivery) took.
    fn check(&self, tag: &str) -> Duration {
        let start = Instant::now();
        self.publisher.call(&put(b"witness", tag, tag.as_bytes()));
        let m = self.watcher.expect_message();
        assert_eq!(m.body, vec![tag.as_bytes().to_vec()], "{tag}");
        start.elapsed()
    }
}

// ---------------------------------------------------------------- corpus

enum Expect {
    Error { words: String, id: Option<String> },
    Ok(String),
    Nothing,
}

struct Case {
    name: String,
    frames: Vec<Vec<u8>>,
    expect: Expect,
}

fn unescape(s: &str, file: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = s.bytes();
    while let Some(c) = chars.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'"') => out.push(b'"'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'x') => {
                let hex: Vec<u8> = chars.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{file}: bad \\x{hex}")));
            }
            other => panic!("{file}: bad escape {other:?}"),
        }
    }
    out
}

fn parse_case(path: &Path) -> Case {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let mut frames = Vec::new();
    let mut expect = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(e) = line.strip_prefix("# expect:") {
            let e = e.trim();
            expect = Some(if e == "none" {
                Expect::Nothing
            } else if let Some(id) = e.strip_prefix("ok ") {
                Expect::Ok(id.trim().to_string())
            } else if let Some(rest) = e.strip_prefix("error ") {
                match rest.rsplit_once(" id ") {
                    Some((words, id)) => Expect::Error { words: words.into(), id: Some(id.trim().into()) },
                    None => Expect::Error { words: rest.into(), id: None },
                }
            } else {
                panic!("{name}: bad expectation {e:?}")
            });
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let close = line.rfind('"').filter(|&i| i > 0 && line.starts_with('"'));
        let close = close.unwrap_or_else(|| panic!("{name}: not a quoted frame: {line:?}"));
        let mut frame = unescape(&line[1..close], &name);
        let (mut repeat, mut count) = (1usize, 1usize);
        let mut rest = line[close + 1..].split_whitespace();
        while let Some(op) = rest.next() {
            let n: usize = rest.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{name}: {line:?}"));
            match op {
                "^" => repeat = n,
                "*" => count = n,
                _ => panic!("{name}: bad operator in {line:?}"),
            }
        }
        frame = frame.repeat(repeat);
        frames.extend(std::iter::repeat(frame).take(count));
    }
    Case { name: name.clone(), frames, expect: expect.unwrap_or_else(|| panic!("{name}: no # expect: line")) }
}

#[test]
fn corpus_of_malformed_messages_gets_the_documented_answers_and_harms_nobody() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "frames"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 25, "corpus at {}", dir.display());
    let broker = Mc0d::start_args(&["--max-body-size", "65536"]);
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let hostile = broker.client(&ctx);
    hostile.handshake(60_000);
    for path in &paths {
        let case = parse_case(path);
        hostile.send(&case.frames);
        match &case.expect {
            Expect::Nothing => {}
            Expect::Ok(id) => hostile.expect_ok(id),
            Expect::Error { words, id } => {
                let (message, got) = hostile.expect_error();
                assert!(message.contains(words.as_str()), "{}: {message:?} lacks {words:?}", case.name);
                assert_eq!(&got, id, "{}: {message}", case.name);
            }
        }
        // Exactly one answer: the next reply is this OK.
        hostile.call(&Command::Noop { id: Some(b"next") });
    }
    witness.check("after the corpus");
}

// ---------------------------------------------------------------- random frames

#[test]
fn random_frames_over_the_wire_never_stop_the_broker() {
    let broker = Mc0d::start_args(&["--max-frames", "32", "--max-body-size", "4096"]);
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let hostile = broker.client(&ctx);
    hostile.handshake(60_000);
    let token = prop_oneof![
        Just(b"".to_vec()),
        Just(b"ID".to_vec()),
        Just(b"TOPIC".to_vec()),
        Just(b"SUB".to_vec()),
        Just(b"PUT".to_vec()),
        Just(b"CONNECT".to_vec()),
        Just(b"t".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 4000..5000),
    ];
    let message = prop::collection::vec(token, 1..40);
    let mut runner = TestRunner::new(RunnerConfig { cases: 150, failure_persistence: None, ..RunnerConfig::default() });
    let probe = std::cell::Cell::new(0u64);
    runner
        .run(&message, |frames| {
            hostile.send(&frames);
            probe.set(probe.get() + 1);
            let id = format!("probe-{}", probe.get());
            hostile.send_command(&Command::Noop { id: Some(id.as_bytes()) });
            // Whatever the random message did (OK, ERROR, a DISCONNECT that
            // makes the probe "not connected", a MESSAGE to itself), the
            // broker answers the probe.
            let deadline = Instant::now() + WAIT;
            loop {
                let frames = hostile.recv_until(deadline).expect("the broker answers the probe");
                match Reply::parse(&frames, &Limits::default()) {
                    Ok(Reply::Ok { id: got }) | Ok(Reply::Error { id: Some(got), .. }) if got == id.as_bytes() => break,
                    Ok(_) => {}
                    Err(e) => panic!("unparseable reply {e}: {}", common::show(&frames)),
                }
            }
            // Keep the hostile client connected for the next case.
            hostile.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None });
            Ok(())
        })
        .unwrap();
    witness.check("after random frames");
}

// ---------------------------------------------------------------- limits

#[test]
fn every_limit_answers_error_and_the_broker_serves_on() {
    let broker = Mc0d::start_args(&[
        "--max-frames",
        "12",
        "--max-headers",
        "3",
        "--max-topic-length",
        "16",
        "--max-body-size",
        "1000",
        "--max-subscriptions",
        "5",
    ]);
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let c = broker.client(&ctx);
    c.handshake(60_000);
    let expect = |frames: Vec<&[u8]>, words: &str, id: Option<&str>| {
        c.send(&frames);
        let (message, got) = c.expect_error();
        assert!(message.contains(words), "{message:?} lacks {words:?}");
        assert_eq!(got.as_deref(), id, "{message}");
        witness.check(words);
    };
    let body = vec![b'b'; 1001];
    let long = vec![b't'; 17];
    let frames: Vec<&[u8]> = vec![b"", b"SUB", b"ID", b"f", b"", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8"];
    expect(frames, "13 frames, over the limit of 12", Some("f"));
    let frames: Vec<&[u8]> = vec![b"", b"PUT", b"TOPIC", b"t", b"X-1", b"v", b"X-2", b"v", b"X-3", b"v", b"", b"b"];
    expect(frames, "4 headers, over the limit of 3", None);
    expect(vec![b"", b"SUB", b"ID", b"t", b"", &long], "topic is 17 bytes, over the limit of 16", Some("t"));
    expect(vec![b"", b"PUT", b"TOPIC", b"t", b"ID", b"b", b"", &body], "body is 1001 bytes", Some("b"));
    c.call(&sub("s1", vec![b"a", b"b", b"c"]));
    expect(vec![b"", b"SUB", b"ID", b"s", b"", b"c", b"d", b"e", b"f"], "over the limit of 5 per client", Some("s"));
    // Nothing of the refused SUB was applied; up to the limit still works.
    c.call(&sub("s2", vec![b"d", b"e"]));
    // At the limits exactly: accepted.
    let body = vec![b'b'; 1000];
    c.call(&Command::Put { topic: &[b'u'; 16], headers: vec![(b"X-1", b"v")], id: Some(b"p"), body: vec![&body] });
}

#[test]
fn a_frame_beyond_the_hard_cap_drops_only_that_connection() {
    // Cap = body limit + 1 MiB: libzmq refuses to read further and closes
    // the connection; no ERROR is possible, nobody else notices.
    let broker = Mc0d::start_args(&["--max-body-size", "1000"]);
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let mut monitor = None;
    let c = Client::connect_with(&ctx, &broker.endpoint(), broker.server_public.as_ref(), None, |s| {
        monitor = Some(Monitor::events(&ctx, s, zmq::SocketEvent::DISCONNECTED.to_raw()));
    });
    let monitor = monitor.unwrap();
    c.handshake(60_000);
    assert_eq!(monitor.next(WAIT).map(|e| e.0), Some(zmq::SocketEvent::HANDSHAKE_SUCCEEDED));
    let huge = vec![0u8; 1000 + 1024 * 1024 + 1];
    c.send(&[&b""[..], b"PUT", b"TOPIC", b"witness", b"ID", b"huge", b"", &huge]);
    assert_eq!(monitor.next(WAIT).map(|e| e.0), Some(zmq::SocketEvent::DISCONNECTED), "the broker hung up");
    // The DEALER reconnects and is a new, unknown client to the broker.
    assert_eq!(monitor.next(WAIT).map(|e| e.0), Some(zmq::SocketEvent::HANDSHAKE_SUCCEEDED));
    c.send_command(&Command::Noop { id: Some(b"after") });
    assert_eq!(c.expect_error(), (mc0::protocol::NOT_CONNECTED.to_string(), Some("after".into())));
    assert!(witness.watcher.recv_non_noop(Duration::from_millis(300)).is_none(), "nothing was delivered");
    witness.check("after an oversized frame");
}

// ---------------------------------------------------------------- denial of service

/// A well-behaved client's wait, measured, before and under load.
fn report(what: &str, waits: &[Duration]) {
    let max = waits.iter().max().unwrap();
    let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
    eprintln!("MEASURE {what}: {} round trips, mean {mean:?}, max {max:?}", waits.len());
}

#[test]
fn many_half_open_connections_do_not_stop_others_being_served() {
    const SILENT: usize = 500;
    const STALLED: usize = 100;
    assert!(common::raise_fd_limit() > 2 * (SILENT + STALLED) as u64);
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let addr = format!("127.0.0.1:{}", broker.port);
    let start = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..SILENT {
        streams.push(TcpStream::connect(&addr).expect("connect"));
    }
    // Half a ZMTP greeting, then silence: the broker has to hold these in
    // the handshake (libzmq drops them after ZMQ_HANDSHAKE_IVL, 30 s).
    for _ in 0..STALLED {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.write_all(&[0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3]).unwrap();
        streams.push(s);
    }
    eprintln!("MEASURE opened {} half-open connections in {:?}", streams.len(), start.elapsed());
    let waits: Vec<Duration> = (0..20).map(|i| witness.check(&format!("half-open {i}"))).collect();
    report("good client with 600 half-open connections", &waits);
    // A fresh client can still connect and handshake.
    let start = Instant::now();
    let fresh = broker.client(&ctx);
    fresh.handshake(60_000);
    eprintln!("MEASURE new CURVE client handshake + CONNECT with 600 half-open connections: {:?}", start.elapsed());
    drop(streams);
    witness.check("after closing them");
}

#[test]
fn a_client_subscribing_to_100000_topics_is_limited_and_others_stay_served() {
    const TOPICS: usize = 100_000;
    const BATCH: usize = 1000;
    let topics: Vec<Vec<u8>> = (0..TOPICS).map(|i| format!("mcollective topic {i:06}").into_bytes()).collect();
    // Default limit (10 000 per client): the flood is cut off with ERROR.
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let flood = broker.client(&ctx);
    flood.handshake(60_000);
    let (mut ok, mut refused, mut waits) = (0, 0, Vec::new());
    for (n, chunk) in topics.chunks(BATCH).enumerate() {
        let id = format!("b{n}");
        flood.send_command(&sub(&id, chunk.iter().map(|t| &t[..]).collect()));
        match Reply::parse(&flood.recv_non_noop(WAIT).expect("answer"), &Limits::default()) {
            Ok(Reply::Ok { .. }) => ok += 1,
            Ok(Reply::Error { message, .. }) => {
                assert!(String::from_utf8_lossy(message).contains("over the limit of 10000 per client"));
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
        if n % 10 == 0 {
            waits.push(witness.check(&format!("subs {n}")));
        }
    }
    assert_eq!((ok, refused), (10, 90), "10 000 accepted, the rest refused");
    report("good client while one client floods 100 SUBs of 1000 topics (limit 10 000)", &waits);

    // Limit raised: the broker holds all 100 000 and stays responsive;
    // forgetting them all at once (DISCONNECT) is measured too.
    let broker = Mc0d::start_args(&["--max-subscriptions", "100000"]);
    let witness = Witness::new(&broker, &ctx);
    let flood = broker.client(&ctx);
    flood.handshake(60_000);
    let start = Instant::now();
    let mut waits = Vec::new();
    for (n, chunk) in topics.chunks(BATCH).enumerate() {
        flood.call(&sub(&format!("b{n}"), chunk.iter().map(|t| &t[..]).collect()));
        if n % 10 == 0 {
            waits.push(witness.check(&format!("big subs {n}")));
        }
    }
    eprintln!("MEASURE 100 000 subscriptions by one client took {:?}", start.elapsed());
    report("good client during 100 000 subscriptions (limit raised)", &waits);
    witness.publisher.call(&put(b"mcollective topic 099999", "last", b"x"));
    assert_eq!(flood.expect_message().topic, b"mcollective topic 099999");
    let start = Instant::now();
    flood.send_command(&Command::Disconnect { id: None });
    let wait = witness.check("after dropping 100 000");
    eprintln!("MEASURE DISCONNECT of 100 000 subscriptions + good round trip: {:?}", start.elapsed());
    assert!(wait < WAIT);
}

#[test]
fn a_client_that_floods_and_never_reads_does_not_slow_the_others() {
    const FLOOD: usize = 20_000;
    // Small queues, so that it is over both bounds (libzmq's, in messages,
    // and mc0d's own buffer, in bytes) well within the flood.
    let broker = Mc0d::start_args(&["--sndhwm", "100", "--client-buffer", "1048576", "--status-interval", "1"]);
    let ctx = zmq::Context::new();
    let witness = Witness::new(&broker, &ctx);
    let baseline: Vec<Duration> = (0..10).map(|i| witness.check(&format!("base {i}"))).collect();
    report("good client, idle broker", &baseline);
    // Asks for an OK on every PUT, subscribes to its own topic, and never
    // reads: its replies pile up until the broker drops them.
    let flood = Client::connect_with(&ctx, &broker.endpoint(), broker.server_public.as_ref(), None, |s| {
        s.set_rcvhwm(1).unwrap();
        s.set_rcvbuf(4096).unwrap();
        s.set_sndhwm(100_000).unwrap();
    });
    flood.handshake(60_000);
    flood.call(&sub("s", vec![b"self"]));
    let body = vec![0x42u8; 1024];
    let flooder = std::thread::spawn(move || {
        for i in 0..FLOOD {
            let id = i.to_string();
            flood.send_command(&Command::Put {
                topic: b"self",
                headers: vec![],
                id: Some(id.as_bytes()),
                body: vec![&body],
            });
        }
        flood
    });
    let mut waits = Vec::new();
    while !flooder.is_finished() {
        waits.push(witness.check(&format!("flood {}", waits.len())));
    }
    let _flood = flooder.join().unwrap();
    waits.push(witness.check("after the flood"));
    report("good client while another floods 20 000 PUTs and never reads", &waits);
    let drops = broker.log.wait_for(WAIT, |l| l.contains("status:") && !l.contains("full_drops=0"));
    assert!(drops.is_some(), "the unread replies were dropped and counted:\n{}", broker.log.text());
}
