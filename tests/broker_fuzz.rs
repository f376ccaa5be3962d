//! Property-based fuzzing of the broker's command handling: random (and
//! randomly broken) messages from a handful of clients and keys, heartbeat
//! time jumps and allowlist revocations are fed to [`Engine`] — the broker's
//! state machine, without a socket — and every reply is checked against a
//! simple model of what the broker must do. Bounded (a few hundred cases,
//! well under a second each), so it runs in every `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::broker::allowlist::Allowlist;
use mc0::broker::{Config, Engine, Transport, ACCESS_DENIED};
use mc0::keys::{key_to_z85, Key};
use mc0::log::Level;
use mc0::protocol::{Command, Limits, Reply, NOT_CONNECTED};
use proptest::prelude::*;

/// Records every send; never drops.
#[derive(Default)]
struct Recorder(Vec<(Vec<u8>, Vec<Vec<u8>>)>);

impl Transport for Recorder {
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
        self.0.push((rid.to_vec(), frames.to_vec()));
        Ok(())
    }
}

const MAX_SUBS: usize = 4;
const MAX_BODY: usize = 24;

fn config() -> Config {
    let mut c = Config {
        log_level: Level::Error,
        limits: Limits { max_frame_size: 64, max_frames: 12, max_headers: 3, max_topic_len: 6 },
        max_subscriptions: MAX_SUBS,
        ..Config::default()
    };
    c.max_body_size = MAX_BODY;
    c
}

/// Three listed keys (users 0-2) and an unlisted one (3); 4 means "no
/// User-Id".
fn user_key(user: u8) -> Option<String> {
    (user < 4).then(|| key_to_z85(&[user + 1; 32]))
}

fn allowlist(listed: &[u8]) -> Arc<Allowlist> {
    let keys: Vec<Key> = listed.iter().map(|&u| [u + 1; 32]).collect();
    Arc::new(Allowlist::from_keys(keys.iter().map(|k| (k, None))))
}

#[derive(Debug, Clone)]
enum Op {
    /// A message from routing id `rid` over a connection authenticated as
    /// `user`.
    Msg { rid: u8, user: u8, frames: Vec<Vec<u8>> },
    /// Time jumps far past every TTL: heartbeats, then expiry of everyone.
    Jump,
    /// The allowlist becomes exactly these of the users 0-2.
    Relist(Vec<u8>),
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"".to_vec()),
        Just(b"ID".to_vec()),
        Just(b"TOPIC".to_vec()),
        Just(b"TTL".to_vec()),
        Just(b"VERSION".to_vec()),
        Just(b"X-A".to_vec()),
        Just(b"a".to_vec()),
        Just(b"b".to_vec()),
        Just(b"CONNECT".to_vec()),
        Just(b"SUB".to_vec()),
        Just(b"PUT".to_vec()),
        Just(b"60000".to_vec()),
        prop::collection::vec(any::<u8>(), 0..80),
    ]
}

fn topic() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        Just(&b"a"[..]),
        Just(&b"b"[..]),
        Just(&b"c"[..]),
        Just(&b"d"[..]),
        Just(&b"e"[..]),
        Just(&b"long-topic"[..])
    ]
}

/// Mostly well-formed commands (so sessions and subscriptions build up),
/// some with limits broken, some arbitrary frames.
fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let id = prop::option::of(prop_oneof![Just(&b"1"[..]), Just(&b"2"[..])]);
    let topics = prop::collection::vec(topic(), 0..7);
    let command =
        (0..6u8, id, topics, 0..40usize, 0..5usize, 0..3u8).prop_map(|(verb, id, topics, body, hdrs, ttl)| {
            let ttl_ms = [1000, 60_000, 0][ttl as usize];
            let body = vec![b'x'; body];
            let headers: Vec<(&[u8], &[u8])> = (0..hdrs).map(|_| (&b"X-H"[..], &b"v"[..])).collect();
            let cmd = match verb {
                0 => Command::Connect { version: b"0.3", ttl_ms, id },
                1 => Command::Disconnect { id },
                2 => Command::Sub { id, topics },
                3 => Command::Unsub { id, topics },
                4 => Command::Put { topic: topics.first().copied().unwrap_or(b"a"), headers, id, body: vec![&body] },
                _ => Command::Noop { id },
            };
            cmd.to_frames()
        });
    let random = || prop::collection::vec(token(), 0..16);
    let delimited = random().prop_map(|mut f| {
        f.insert(0, vec![]);
        f
    });
    prop_oneof![6 => command, 2 => random(), 2 => delimited]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..4u8, 0..5u8, frames()).prop_map(|(rid, user, frames)| Op::Msg { rid, user, frames }),
        1 => Just(Op::Jump),
        1 => prop::collection::btree_set(0..3u8, 0..3).prop_map(|s| Op::Relist(s.into_iter().collect())),
    ]
}

/// A session in the model: the key it was opened with and its topics.
type Session = (Option<String>, BTreeSet<Vec<u8>>);

/// A PUT's expected fan-out: topic, subscribers, body.
type Fanout = Option<(Vec<u8>, BTreeSet<Vec<u8>>, Vec<u8>)>;

/// What the broker must know, per routing id.
#[derive(Default)]
struct Model {
    sessions: BTreeMap<Vec<u8>, Session>,
}

impl Model {
    fn topics(&self) -> usize {
        self.sessions.values().flat_map(|(_, t)| t.iter()).collect::<BTreeSet<_>>().len()
    }
    fn subscribers(&self, topic: &[u8]) -> BTreeSet<Vec<u8>> {
        self.sessions.iter().filter(|(_, (_, t))| t.contains(topic)).map(|(r, _)| r.clone()).collect()
    }
}

/// The reply a sender must get (besides deliveries), as (verb, message, id).
type Expected = Option<(&'static str, Option<String>, Option<Vec<u8>>)>;

fn run(ops: Vec<Op>, with_allowlist: bool) -> Result<(), TestCaseError> {
    let mut engine = Engine::new(Recorder::default(), &config());
    let mut listed: Vec<u8> = vec![0, 1, 2];
    if with_allowlist {
        engine.set_allowlist(Some(allowlist(&listed)), Instant::now());
    }
    let mut model = Model::default();
    let mut now = Instant::now();
    let limits = config().limits;
    for op in ops {
        engine.transport_mut().0.clear();
        match op {
            Op::Msg { rid, user, frames } => {
                now += Duration::from_millis(1);
                let rid = vec![b'r', rid];
                let key = user_key(user);
                let mut message = vec![rid.clone()];
                message.extend(frames.iter().cloned());
                engine.handle(&message, key.as_deref(), now);
                let sent = std::mem::take(&mut engine.transport_mut().0);

                let session_key = if with_allowlist { key.clone() } else { None };
                let authorized = !with_allowlist || (user < 3 && listed.contains(&user));
                let mut deliveries: Fanout = None;
                let expected: Expected = if frames.is_empty() {
                    None
                } else if !authorized {
                    let relaxed = Limits { max_frames: usize::MAX, ..limits };
                    let id = mc0::protocol::split(&frames, &relaxed).ok().and_then(|e| Command::id_of(&e));
                    Some(("ERROR", Some(ACCESS_DENIED.into()), id.map(<[u8]>::to_vec)))
                } else {
                    match Command::parse(&frames, &limits) {
                        Err(e) => {
                            let id = mc0::protocol::split(&frames, &limits).ok().and_then(|e| Command::id_of(&e));
                            Some(("ERROR", Some(e.to_string()), id.map(<[u8]>::to_vec)))
                        }
                        Ok(cmd) => {
                            let id = cmd.id().map(<[u8]>::to_vec);
                            let known = model.sessions.get(&rid).is_some_and(|(k, _)| *k == session_key);
                            let ok = |id: Option<Vec<u8>>| id.map(|i| ("OK", None, Some(i)));
                            let err = |m: String| Some(("ERROR", Some(m), cmd.id().map(<[u8]>::to_vec)));
                            match cmd {
                                Command::Connect { .. } => {
                                    model.sessions.insert(rid.clone(), (session_key, BTreeSet::new()));
                                    ok(id)
                                }
                                _ if !known => err(NOT_CONNECTED.into()),
                                Command::Disconnect { .. } => {
                                    model.sessions.remove(&rid);
                                    ok(id)
                                }
                                Command::Sub { ref topics, .. } => {
                                    let held = &mut model.sessions.get_mut(&rid).unwrap().1;
                                    let new: BTreeSet<Vec<u8>> =
                                        topics.iter().filter(|t| !held.contains(**t)).map(|t| t.to_vec()).collect();
                                    if held.len() + new.len() > MAX_SUBS {
                                        err(format!(
                                            "too many subscriptions: {} held + {} new, over the limit of {MAX_SUBS} per client",
                                            held.len(),
                                            new.len()
                                        ))
                                    } else {
                                        held.extend(new);
                                        ok(id)
                                    }
                                }
                                Command::Unsub { ref topics, .. } => {
                                    let held = &mut model.sessions.get_mut(&rid).unwrap().1;
                                    for t in topics {
                                        held.remove(*t);
                                    }
                                    ok(id)
                                }
                                Command::Put { topic, ref body, .. } => {
                                    let size: usize = body.iter().map(|b| b.len()).sum();
                                    if size > MAX_BODY {
                                        err(format!("body is {size} bytes, over the limit of {MAX_BODY}"))
                                    } else {
                                        deliveries = Some((topic.to_vec(), model.subscribers(topic), body.concat()));
                                        ok(id)
                                    }
                                }
                                Command::Noop { .. } => ok(id),
                            }
                        }
                    }
                };
                check_sends(&sent, &rid, expected, deliveries)?;
            }
            Op::Jump => {
                now += Duration::from_secs(3600);
                engine.tick(now);
                let sent = std::mem::take(&mut engine.transport_mut().0);
                for (to, frames) in &sent {
                    prop_assert!(model.sessions.contains_key(to), "NOOP to a stranger {to:?}");
                    prop_assert_eq!(Reply::parse(frames, &Limits::default()), Ok(Reply::Noop));
                }
                prop_assert_eq!(sent.len(), model.sessions.len(), "one NOOP per session before expiry");
                model.sessions.clear();
            }
            Op::Relist(keep) => {
                if !with_allowlist {
                    continue;
                }
                listed = keep;
                let dropped = engine.set_allowlist(Some(allowlist(&listed)), now);
                let before = model.sessions.len();
                let keys: Vec<Option<String>> = listed.iter().map(|&u| user_key(u)).collect();
                model.sessions.retain(|_, (k, _)| keys.contains(k));
                prop_assert_eq!(dropped, before - model.sessions.len());
                let sent = std::mem::take(&mut engine.transport_mut().0);
                prop_assert_eq!(sent.len(), dropped, "each dropped session is told once");
                for (to, frames) in &sent {
                    prop_assert!(!model.sessions.contains_key(to));
                    let denied = Reply::Error { message: ACCESS_DENIED.as_bytes(), id: None };
                    prop_assert_eq!(Reply::parse(frames, &Limits::default()), Ok(denied));
                }
            }
        }
        engine.check_invariants().map_err(TestCaseError::fail)?;
        let stats = engine.stats();
        prop_assert_eq!(stats.clients, model.sessions.len(), "client count");
        prop_assert_eq!(stats.topics, model.topics(), "topic count");
    }
    Ok(())
}

/// Exactly the expected reply to the sender, and MESSAGE copies to exactly
/// the model's subscribers (which may include the sender).
fn check_sends(
    sent: &[(Vec<u8>, Vec<Vec<u8>>)],
    sender: &[u8],
    expected: Expected,
    deliveries: Fanout,
) -> Result<(), TestCaseError> {
    let mut replies = Vec::new();
    let mut got_to = BTreeSet::new();
    for (to, frames) in sent {
        match Reply::parse(frames, &Limits::default()) {
            Ok(Reply::Message { topic, body, .. }) => {
                let (want_topic, _, want_body) = deliveries.as_ref().expect("MESSAGE only for a PUT");
                prop_assert_eq!(topic, &want_topic[..]);
                prop_assert_eq!(body.concat(), want_body.clone());
                prop_assert!(got_to.insert(to.clone()), "one copy per subscriber");
            }
            Ok(Reply::Ok { id }) => {
                prop_assert_eq!(&to[..], sender);
                replies.push(("OK", None, Some(id.to_vec())));
            }
            Ok(Reply::Error { message, id }) => {
                prop_assert_eq!(&to[..], sender);
                replies.push(("ERROR", Some(String::from_utf8_lossy(message).into_owned()), id.map(<[u8]>::to_vec)));
            }
            other => prop_assert!(false, "unexpected send {:?}", other),
        }
    }
    prop_assert_eq!(got_to, deliveries.map(|d| d.1).unwrap_or_default(), "delivered to exactly the subscribers");
    prop_assert_eq!(replies, expected.into_iter().collect::<Vec<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model_without_an_allowlist(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, false)?;
    }

    #[test]
    fn engine_matches_the_model_with_an_allowlist(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, true)?;
    }

    /// Anything at all, in frames of any shape: never a panic, at most one
    /// reply, tables consistent.
    #[test]
    fn arbitrary_frames_never_break_the_engine(
        messages in prop::collection::vec((0..3u8, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20)), 1..60)
    ) {
        let mut engine = Engine::new(Recorder::default(), &config());
        let now = Instant::now();
        for (rid, frames) in messages {
            let mut message = vec![vec![rid]];
            message.extend(frames);
            engine.transport_mut().0.clear();
            engine.handle(&message, None, now);
            let replies = engine.transport().0.iter().filter(|(to, _)| to[..] == [rid]).count();
            prop_assert!(replies <= 1, "{} replies", replies);
            engine.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
