//! Unit tests of the engine over a recording transport.

use super::*;
use mc0::keys::key_to_z85;
use mc0::protocol::IMPOSTOR;

/// Records every send; never drops.
#[derive(Default)]
struct Recorder(Vec<(Vec<u8>, Vec<Vec<u8>>)>);

impl Transport for Recorder {
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
        self.0.push((rid.to_vec(), frames.to_vec()));
        Ok(())
    }
}

fn message(rid: &[u8], command: Command<'_>) -> Vec<Vec<u8>> {
    let mut frames = vec![rid.to_vec()];
    frames.extend(command.to_frames());
    frames
}

fn parse(frames: &[Vec<u8>]) -> Reply<'_> {
    Reply::parse(frames, &Limits::default()).unwrap()
}

#[test]
fn messages_carry_the_senders_stamp_and_never_a_forged_one() {
    let config = Config { log_level: Level::Error, ..Config::default() };
    let mut engine = Engine::new(Recorder::default(), &config);
    let key = mc0::keys::KeyPair::generate().unwrap().public;
    let list = Allowlist::from_keys([(&key, Some("web1"), acl::Role::Any)]).unwrap();
    engine.set_allowlist(Some(Arc::new(list)), Instant::now());
    let z85 = key_to_z85(&key);
    let from = Origin { user: Some(&z85), conn: Some(3) };
    let now = Instant::now();
    engine.handle(&message(b"web1 1 1", Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), from, now);
    engine.handle(
        &message(b"web1 1 1", Command::Sub { id: None, queue: None, compact: false, topics: vec![b"t"] }),
        from,
        now,
    );
    let forged: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"admin"), (b"X-A", b"1"), (b"SENDER-KEY", b"forged")];
    let put = Command::Put { topic: b"t", headers: forged, id: None, body: vec![b"x"] };
    engine.handle(&message(b"web1 1 1", put), from, now);
    let (_, frames) = engine.transport().0.last().expect("delivered");
    let Reply::Message { headers, .. } = parse(frames) else { panic!("not a MESSAGE") };
    let want: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"web1"), (b"X-A", b"1")];
    assert_eq!(headers, want, "with an allowlist, the name alone");

    // Open mode: the key alone.
    engine.set_allowlist(None, now);
    let forged: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"admin"), (b"X-A", b"1")];
    engine.handle(
        &message(b"web1 1 1", Command::Put { topic: b"t", headers: forged, id: None, body: vec![b"x"] }),
        from,
        now,
    );
    let (_, frames) = engine.transport().0.last().expect("delivered");
    let Reply::Message { headers, .. } = parse(frames) else { panic!("not a MESSAGE") };
    let want: Vec<(&[u8], &[u8])> = vec![(b"SENDER-KEY", z85.as_bytes()), (b"X-A", b"1")];
    assert_eq!(headers, want, "in open mode, the key alone");
}

#[test]
fn a_lost_connection_gets_nothing_until_its_session_speaks_again() {
    /// Reports the connections it is told about as lost.
    #[derive(Default)]
    struct Losing(Recorder, Vec<Conn>);
    impl Transport for Losing {
        fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
            self.0.deliver(rid, frames)
        }
        fn lost_connections(&mut self, lost: &mut Vec<Conn>, _all: bool) {
            lost.append(&mut self.1);
        }
    }
    let config = Config { log_level: Level::Error, ..Config::default() };
    let mut engine = Engine::new(Losing::default(), &config);
    let now = Instant::now();
    let on = |conn| Origin { user: Some("key-a"), conn: Some(conn) };
    let other = Origin { user: Some("key-b"), conn: Some(9) };
    let put = || message(b"pub", Command::Put { topic: b"t", headers: vec![], id: None, body: vec![b"x"] });
    engine.handle(&message(b"a", Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), on(5), now);
    engine.handle(
        &message(b"a", Command::Sub { id: None, queue: None, compact: false, topics: vec![b"t"] }),
        on(5),
        now,
    );
    engine.handle(&message(b"pub", Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), other, now);
    engine.transport_mut().1.push(5);
    engine.handle(&put(), other, now);
    assert_eq!(engine.stats().delivered, 0, "the lost connection's routing id gets nothing");
    assert_eq!(engine.stats().drops, 1);
    // Another key on that routing id is refused, the session kept.
    engine.handle(&message(b"a", Command::Noop { id: Some(b"n") }), other, now);
    let (to, frames) = engine.transport().0 .0.last().unwrap();
    assert_eq!((&to[..], parse(frames)), (&b"a"[..], Reply::Error { message: IMPOSTOR.as_bytes(), id: Some(b"n") }));
    assert_eq!(engine.stats().impostors, 1);
    // Its own key, from a new connection: served again.
    engine.handle(&message(b"a", Command::Noop { id: None }), on(6), now);
    engine.handle(&put(), other, now);
    assert_eq!(engine.stats().delivered, 1);
    engine.check_invariants().unwrap();
}

#[test]
fn a_heartbeat_read_late_still_keeps_its_client() {
    let config = Config { log_level: Level::Error, ..Config::default() };
    let mut engine = Engine::new(Recorder::default(), &config);
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let connect = |rid| message(rid, Command::Connect { version: b"test", ttl_ms: 1000, id: None });
    let sub = |rid| message(rid, Command::Sub { id: None, queue: None, compact: false, topics: vec![b"t"] });
    for rid in [b"late", b"mute"] {
        engine.handle(&connect(rid), Origin::default(), t0);
        engine.handle(&sub(rid), Origin::default(), t0);
    }
    // The broker stalled until 1.2 TTL. "late" sent its NOOP at 0.9 TTL,
    // still unread; the input was last drained at 0.9 TTL.
    engine.tick_drained(ms(1200), ms(900));
    assert_eq!(engine.stats().clients, 2, "nobody expired before the backlog is read");
    let noops = engine.transport().0.iter().filter(|(_, f)| Reply::parse(f, &Limits::default()) == Ok(Reply::Noop));
    assert_eq!(noops.count(), 2, "heartbeats are not held back");
    // The backlog is read in the same iteration, and the socket found
    // empty at 1.2 TTL: only the client that stayed silent expires.
    engine.handle(&message(b"late", Command::Noop { id: None }), Origin::default(), ms(1200));
    engine.tick_drained(ms(1200), ms(1200));
    let stats = engine.stats();
    assert_eq!((stats.clients, stats.topics), (1, 1), "{stats}");
    engine.handle(
        &message(b"late", Command::Put { topic: b"t", headers: vec![], id: None, body: vec![b"x"] }),
        Origin::default(),
        ms(1300),
    );
    assert_eq!(engine.stats().delivered, 1, "still subscribed");
    engine.check_invariants().unwrap();
}

/// With a store, a PUT's OK waits for the write and its message for the
/// consumer; a failed write refuses the PUT and the message goes nowhere.
#[test]
fn with_a_store_the_ok_and_the_delivery_wait_for_the_write() {
    let config = Config { log_level: Level::Error, ..Config::default() };
    let mut engine = Engine::new(Recorder::default(), &config);
    let now = Instant::now();
    engine.use_store(Vec::new(), now);
    let from = Origin::default();
    for rid in [&b"consumer"[..], b"pub"] {
        engine.handle(&message(rid, Command::Connect { version: b"0.3", ttl_ms: 60_000, id: None }), from, now);
    }
    engine.handle(
        &message(b"consumer", Command::Sub { id: None, queue: Some(b"q"), compact: false, topics: vec![b"t"] }),
        from,
        now,
    );
    let put = |id: &'static [u8]| {
        message(b"pub", Command::Put { topic: b"t", headers: vec![], id: Some(id), body: vec![b"x"] })
    };
    let sent = |engine: &Engine<Recorder>| engine.transport().0.len();
    let before = sent(&engine);
    engine.handle(&put(b"1"), from, now);
    assert_eq!(sent(&engine), before, "neither the OK nor the delivery before the write");
    let (n, batch) = engine.take_store_batch().expect("a batch to write");
    assert_eq!(batch.puts.len(), 1);
    assert!(engine.take_store_batch().is_none(), "handed over once");
    engine.store_committed(n, Ok(()), now);
    let replies: Vec<(&[u8], Reply<'_>)> =
        engine.transport().0[before..].iter().map(|(r, f)| (&r[..], parse(f))).collect();
    assert!(
        matches!(replies[..], [(b"pub", Reply::Ok { id: b"1" }), (b"consumer", Reply::Message { .. })]),
        "{replies:?}"
    );

    let before = sent(&engine);
    engine.handle(&put(b"2"), from, now);
    let (n, _) = engine.take_store_batch().expect("a batch to write");
    engine.store_committed(n, Err("disk full".into()), now);
    let replies: Vec<(&[u8], Reply<'_>)> =
        engine.transport().0[before..].iter().map(|(r, f)| (&r[..], parse(f))).collect();
    match &replies[..] {
        [(b"pub", Reply::Error { message, id: Some(b"2") })] => {
            assert_eq!(*message, &b"not stored: disk full"[..]);
        }
        other => panic!("one ERROR to the publisher, nothing to the consumer: {other:?}"),
    }
    assert_eq!(engine.stats().queued, 1, "only the delivered one is held");
}
