//! Queues and message expiry in the real `mc0d` over CURVE on loopback:
//! messages kept while no consumer runs, competing consumers, redelivery
//! of what a consumer that died held, bounds, and `EXPIRES-IN`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{run_mc0d, Client, Mc0d, Message, TempDir, WAIT};
use mc0::protocol::{Command, DELIVERY, EXPIRES_IN, QUEUE, QUEUE_DELIVERY, REDELIVERED};

const TOPIC: &str = "mcollective reply client1 async";

fn sub_queue<'a>(id: &'a str, name: &'a str) -> Command<'a> {
    Command::Sub {
        id: Some(id.as_bytes()),
        queue: Some(name.as_bytes()),
        compact: false,
        topics: vec![TOPIC.as_bytes()],
    }
}

fn put<'a>(id: &'a str, body: &'a [u8], headers: Vec<(&'a [u8], &'a [u8])>) -> Command<'a> {
    Command::Put { topic: TOPIC.as_bytes(), headers, id: Some(id.as_bytes()), body: vec![body] }
}

fn header<'m>(m: &'m Message, name: &str) -> Option<&'m [u8]> {
    m.headers.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| &v[..])
}

fn delivery(m: &Message) -> u64 {
    std::str::from_utf8(header(m, DELIVERY).expect("a DELIVERY header")).unwrap().parse().unwrap()
}

fn consumer(broker: &Mc0d, ctx: &zmq::Context) -> Client {
    let c = broker.client(ctx);
    c.handshake(30_000);
    c.call(&sub_queue("q", "async"));
    c
}

/// A queue delivery's raw frames, waited for.
fn delivery_frames(c: &Client) -> Vec<Vec<u8>> {
    c.recv_non_noop(Duration::from_secs(5)).expect("a delivery")
}

/// An mc0d with the queue `async` of [`TOPIC`] declared (and `extra`
/// arguments), and a publisher.
fn queue_and_publisher(extra: &[&str]) -> (Mc0d, zmq::Context, Client) {
    let broker = Mc0d::start_args(&[&["--queue", &format!("{TOPIC}=async")][..], extra].concat());
    let ctx = zmq::Context::new();
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    (broker, ctx, publisher)
}

fn declared_queue_and_publisher() -> (Mc0d, zmq::Context, Client) {
    queue_and_publisher(&[])
}

/// Who writes mc0d's queue journal (`--queue-writer`), with what mc0d
/// logs for it.
#[derive(Clone, Copy)]
enum Writer {
    Aio,
    Thread,
}

/// [`queue_and_publisher`] with `--queue-dir` in a new dir (returned with
/// the queue dir, to keep it alive) and the journal written by `writer`.
fn durable_queue_and_publisher(tag: &str, writer: Writer) -> (TempDir, String, Mc0d, zmq::Context, Client) {
    // On the disk the workspace is on, never tmpfs: `aio` needs O_DIRECT.
    let dir = TempDir::new_in(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), tag);
    let queue_dir = dir.path().join("queues").to_str().unwrap().to_string();
    let (who, logged) = match writer {
        Writer::Aio => ("aio", "queue store journal written O_DIRECT through Linux AIO by the socket thread"),
        Writer::Thread => ("thread", "queue store journal written and fdatasynced by a store thread"),
    };
    let (broker, ctx, publisher) = queue_and_publisher(&["--queue-dir", &queue_dir, "--queue-writer", who]);
    assert!(broker.log.wait_for(WAIT, |l| l.contains(logged)).is_some(), "{}", broker.log.text());
    (dir, queue_dir, broker, ctx, publisher)
}

fn nothing_more(c: &Client) {
    assert!(c.recv_non_noop(Duration::from_millis(300)).is_none(), "nothing more");
}

#[test]
fn declared_queue_keeps_messages_until_a_consumer_acknowledges_them() {
    let (broker, ctx, publisher) = declared_queue_and_publisher();
    let plain = broker.client(&ctx);
    plain.handshake(30_000);
    plain.call(&Command::Sub { id: Some(b"s"), queue: None, compact: false, topics: vec![TOPIC.as_bytes()] });
    for (id, body) in [("p1", b"one"), ("p2", b"two")] {
        publisher.call(&put(id, body, vec![(b"X-REPLY-TO", b"elsewhere")]));
    }
    // A plain subscriber gets plain MESSAGEs: nothing of the queue's.
    for body in [b"one", b"two"] {
        let m = plain.expect_message();
        assert_eq!(m.body, vec![body.to_vec()]);
        for name in [QUEUE, DELIVERY, REDELIVERED] {
            assert!(header(&m, name).is_none(), "{name} reached a plain subscriber: {m:?}");
        }
    }

    // The first consumer takes both and dies without acknowledging.
    let first = consumer(&broker, &ctx);
    let got: Vec<Message> = (0..2).map(|_| first.expect_message()).collect();
    assert_eq!(got[0].body, vec![b"one".to_vec()]);
    assert_eq!(header(&got[0], QUEUE), Some(&b"async"[..]));
    assert_eq!(header(&got[0], "X-REPLY-TO"), Some(&b"elsewhere"[..]));
    assert!(header(&got[0], REDELIVERED).is_none());
    drop(first);

    // The next consumer gets both again, marked; it acknowledges the first.
    let second = consumer(&broker, &ctx);
    let again: Vec<Message> = (0..2).map(|_| second.expect_message()).collect();
    assert_eq!(again.iter().map(|m| m.body[0].clone()).collect::<Vec<_>>(), vec![b"one".to_vec(), b"two".to_vec()]);
    for m in &again {
        assert_eq!(header(m, REDELIVERED), Some(&b"1"[..]), "{m:?}");
    }
    second.call(&Command::Ack { id: Some(b"a"), deliveries: vec![delivery(&again[0])] });
    second.call(&Command::Disconnect { id: Some(b"bye") });

    // Only the unacknowledged one comes back.
    let third = consumer(&broker, &ctx);
    let m = third.expect_message();
    assert_eq!(m.body, vec![b"two".to_vec()]);
    third.call(&Command::Ack { id: Some(b"a"), deliveries: vec![delivery(&m)] });
    nothing_more(&third);
}

/// The compact form: a consumer that asks (`COMPACT 1`) gets the queue's
/// name and the delivery id in one header, one that does not gets exactly
/// the classic frames; ACK takes several ids in one frame, mixed with one
/// id per frame, and a bad list gets an ERROR naming the bad value.
#[test]
fn compact_deliveries_for_a_consumer_that_asks_and_ack_id_lists() {
    let (broker, ctx, publisher) = declared_queue_and_publisher();
    for (id, body) in [("p1", b"one"), ("p2", b"two"), ("p3", b"six")] {
        publisher.call(&put(id, body, vec![]));
    }

    // Without the ask: `QUEUE name DELIVERY n` right after TOPIC, as before.
    let classic = consumer(&broker, &ctx);
    for body in [b"one", b"two", b"six"] {
        let frames = delivery_frames(&classic);
        let head: [&[u8]; 7] =
            [b"", b"MESSAGE", b"TOPIC", TOPIC.as_bytes(), QUEUE.as_bytes(), b"async", DELIVERY.as_bytes()];
        assert_eq!(frames[..7], head.map(<[u8]>::to_vec), "{frames:?}");
        assert_eq!(frames[frames.len() - 2..], [b"".to_vec(), body.to_vec()], "{frames:?}");
        assert!(!frames.contains(&QUEUE_DELIVERY.as_bytes().to_vec()), "{frames:?}");
    }
    classic.call(&Command::Disconnect { id: Some(b"bye") });

    // With it: `QUEUE-DELIVERY "n name"` instead, nothing else changed.
    let compact = broker.client(&ctx);
    compact.handshake(30_000);
    let ask = Command::Sub { id: Some(b"q"), queue: Some(b"async"), compact: true, topics: vec![TOPIC.as_bytes()] };
    compact.call(&ask);
    let mut ids = Vec::new();
    for body in [b"one", b"two", b"six"] {
        let frames = delivery_frames(&compact);
        let head: [&[u8]; 5] = [b"", b"MESSAGE", b"TOPIC", TOPIC.as_bytes(), QUEUE_DELIVERY.as_bytes()];
        assert_eq!(frames[..5], head.map(<[u8]>::to_vec), "{frames:?}");
        let (id, name) = mc0::protocol::parse_queue_delivery(&frames[5]).expect("id and name");
        assert_eq!(name, b"async");
        assert_eq!(frames[6..8], [REDELIVERED.as_bytes().to_vec(), b"1".to_vec()], "{frames:?}");
        assert_eq!(frames[frames.len() - 2..], [b"".to_vec(), body.to_vec()], "{frames:?}");
        for classic_only in [QUEUE, DELIVERY] {
            assert!(!frames.contains(&classic_only.as_bytes().to_vec()), "{classic_only} in {frames:?}");
        }
        ids.push(id.to_vec());
    }

    // A malformed list is refused whole, naming the bad value.
    for (bad, named) in
        [(format!("{} x", str(&ids[0])), "\"x\""), (format!("{}  {}", str(&ids[0]), str(&ids[1])), "  ")]
    {
        compact.send(&[&b""[..], b"ACK", b"ID", b"bad", b"", bad.as_bytes()]);
        let (text, id) = compact.expect_error();
        assert_eq!(id.as_deref(), Some("bad"));
        assert!(text.contains("DELIVERY") && text.contains(named), "{text}");
    }
    // Two ids in one frame, the third in a frame of its own.
    let listed = [ids[0].clone(), b" ".to_vec(), ids[1].clone()].concat();
    compact.send(&[&b""[..], b"ACK", b"ID", b"a", b"", &listed, &ids[2]]);
    compact.expect_ok("a");
    compact.call(&Command::Disconnect { id: Some(b"bye") });

    // Acknowledged: nothing comes back to the next consumer.
    let next = consumer(&broker, &ctx);
    nothing_more(&next);
}

fn str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn two_consumers_share_a_queue_none_twice_none_lost() {
    let broker = Mc0d::start();
    let ctx = zmq::Context::new();
    let consumers = [consumer(&broker, &ctx), consumer(&broker, &ctx)];
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    let bodies: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        publisher.call(&put(&i.to_string(), body.as_bytes(), vec![]));
    }
    let mut seen = HashSet::new();
    for c in &consumers {
        let mut mine = 0;
        while let Some(frames) = c.recv_non_noop(Duration::from_millis(500)) {
            let m = Message::from_frames(&frames);
            assert!(seen.insert(m.body[0].clone()), "delivered twice: {m:?}");
            // No ID: later deliveries may already be on their way.
            c.send_command(&Command::Ack { id: None, deliveries: vec![delivery(&m)] });
            mine += 1;
        }
        assert_eq!(mine, 20, "round robin shares evenly");
    }
    assert_eq!(seen.len(), bodies.len(), "none lost");
}

#[test]
fn full_queue_refuses_with_the_queue_and_limit_and_expired_messages_are_never_delivered() {
    let broker = Mc0d::start_args(&["--queue", &format!("{TOPIC}=async"), "--queue-max-messages", "2"]);
    let ctx = zmq::Context::new();
    let publisher = broker.client(&ctx);
    publisher.handshake(30_000);
    publisher.call(&put("p1", b"short-lived", vec![(EXPIRES_IN.as_bytes(), b"100")]));
    publisher.call(&put("p2", b"kept", vec![(EXPIRES_IN.as_bytes(), b"60000")]));
    publisher.send_command(&put("p3", b"over", vec![]));
    let (text, id) = publisher.expect_error();
    assert_eq!(id.as_deref(), Some("p3"));
    assert!(text.contains("\"async\"") && text.contains("limit of 2"), "{text}");
    // The broker removes the expired one within its sweep (1 s), logged.
    broker.log.wait_for(Duration::from_secs(5), |l| l.contains("1 queued messages expired")).expect("expiry logged");
    let c = consumer(&broker, &ctx);
    let m = c.expect_message();
    assert_eq!(m.body, vec![b"kept".to_vec()]);
    let left: u64 = std::str::from_utf8(header(&m, EXPIRES_IN).expect("time left")).unwrap().parse().unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
    nothing_more(&c);
    // Room again: the expired one is gone, the delivered one is held.
    publisher.call(&put("p4", b"fits", vec![]));
}

#[test]
fn stored_messages_survive_kill_9_and_acknowledged_ones_stay_gone_aio() {
    stored_messages_survive_kill_9_and_acknowledged_ones_stay_gone(Writer::Aio);
}

#[test]
fn stored_messages_survive_kill_9_and_acknowledged_ones_stay_gone_thread() {
    stored_messages_survive_kill_9_and_acknowledged_ones_stay_gone(Writer::Thread);
}

fn stored_messages_survive_kill_9_and_acknowledged_ones_stay_gone(writer: Writer) {
    let (_dir, _, mut broker, ctx, publisher) = durable_queue_and_publisher("queue-dir", writer);
    for (id, body) in [("p1", b"one"), ("p2", b"two"), ("p3", b"six")] {
        // The OK says it is on disk.
        publisher.call(&put(id, body, vec![(EXPIRES_IN.as_bytes(), b"600000")]));
    }
    broker.restart(); // SIGKILL, then the same arguments
    let c = consumer(&broker, &ctx);
    let got: Vec<Message> = (0..3).map(|_| c.expect_message()).collect();
    assert_eq!(
        got.iter().map(|m| m.body[0].clone()).collect::<Vec<_>>(),
        vec![b"one".to_vec(), b"two".to_vec(), b"six".to_vec()]
    );
    assert!(got.iter().all(|m| header(m, EXPIRES_IN).is_some()), "the expiry survives too");
    c.call(&Command::Ack { id: Some(b"a"), deliveries: got.iter().take(2).map(delivery).collect() });
    broker.restart();
    let c = consumer(&broker, &ctx);
    assert_eq!(c.expect_message().body, vec![b"six".to_vec()], "only the unacknowledged one is back");
    nothing_more(&c);
}

/// Many PUTs in flight: they are written in a few journal records (group
/// commit), and every answered one is on disk. They hold more than the
/// 16 MiB journal, so a checkpoint into redb comes on the way.
#[test]
fn pipelined_puts_are_on_disk_once_answered_aio() {
    pipelined_puts_are_on_disk_once_answered(Writer::Aio);
}

#[test]
fn pipelined_puts_are_on_disk_once_answered_thread() {
    pipelined_puts_are_on_disk_once_answered(Writer::Thread);
}

fn pipelined_puts_are_on_disk_once_answered(writer: Writer) {
    let (_dir, _, mut broker, ctx, publisher) = durable_queue_and_publisher("queue-dir-pipelined", writer);
    const N: usize = 500;
    let ids: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let body = |id: &str| format!("{id:x<40000}").into_bytes();
    for id in &ids {
        publisher.send_command(&put(id, &body(id), vec![]));
    }
    for id in &ids {
        publisher.expect_ok(id);
    }
    broker.restart(); // SIGKILL, then the same arguments
    let c = consumer(&broker, &ctx);
    let got: Vec<Vec<u8>> = (0..N).map(|_| c.expect_message().body[0].clone()).collect();
    assert!(got == ids.iter().map(|id| body(id)).collect::<Vec<_>>(), "all, in order");
    nothing_more(&c);
}

#[test]
fn a_corrupt_or_unreadable_queue_dir_stops_the_start_naming_the_file() {
    let dir = TempDir::new("queue-dir-bad");
    let file = dir.path().join("queues.redb");
    let garbage = b"this is not a redb file, and must stay as it is".repeat(100);
    std::fs::write(&file, &garbage).unwrap();
    let queue_dir = dir.path().to_str().unwrap();
    let (status, _, stderr) = run_mc0d(&["--no-curve", "--queue-dir", queue_dir], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(file.to_str().unwrap()), "names the file: {stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "nothing overwritten");

    // A journal that is not ours.
    let dir = TempDir::new("queue-dir-bad-journal");
    let journal = dir.path().join("queues.journal");
    std::fs::write(&journal, &garbage).unwrap();
    let (status, _, stderr) =
        run_mc0d(&["--no-curve", "--queue-dir", dir.path().to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(journal.to_str().unwrap()), "names the journal: {stderr}");
    assert_eq!(std::fs::read(&journal).unwrap(), garbage, "nothing overwritten");

    // A queue dir that is a file.
    let not_dir = dir.path().join("plain-file");
    std::fs::write(&not_dir, b"x").unwrap();
    let (status, _, stderr) =
        run_mc0d(&["--no-curve", "--queue-dir", not_dir.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plain-file"), "names it: {stderr}");
}

/// A PUT's journal record is synced before the next record is written,
/// so a crash cannot leave it damaged with an intact record behind it. A
/// record damaged later stops the start instead of being read up to and
/// overwritten (which would lose the messages behind it).
#[test]
fn a_journal_damaged_before_its_last_record_stops_the_start_and_stays_as_it_was() {
    let (_dir, queue_dir, mut broker, _ctx, publisher) = durable_queue_and_publisher("queue-dir-damaged", Writer::Aio);
    let first = b"the first answered PUT, one journal record";
    // Awaited one by one: each is its own record.
    publisher.call(&put("p1", first, vec![]));
    publisher.call(&put("p2", b"the second", vec![]));
    broker.kill();

    let journal = std::path::Path::new(&queue_dir).join("queues.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = bytes.windows(first.len()).position(|w| w == first).expect("the first PUT's body is in the journal");
    bytes[at] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    let (status, _, stderr) = run_mc0d(&["--no-curve", "--queue-dir", &queue_dir], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(journal.to_str().unwrap()), "names the journal: {stderr}");
    assert!(stderr.contains("damaged"), "says what is wrong: {stderr}");
    assert_eq!(std::fs::read(&journal).unwrap(), bytes, "nothing overwritten");
}
