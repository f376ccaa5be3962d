//! Property-based fuzzing of the broker's command handling: random (and
//! randomly broken) messages from a handful of clients, keys and
//! connections, heartbeat time jumps, closed connections and allowlist
//! changes (keys, names, roles) are fed to [`Engine`] — the broker's state
//! machine, without a socket — and every reply and delivery is checked
//! against a simple model of what the broker must do: sessions tied to their
//! key, the identity and role rules (enforced, or only counted with
//! `--identity-check log`), the sender stamp, and no delivery to a session
//! whose connection closed until it speaks again. Bounded (a few hundred
//! cases, well under a second each), so it runs in every `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::keys::{key_to_z85, Key};
use mc0::log::Level;
use mc0::protocol::{Command, Limits, Reply, NOT_CONNECTED};
use mc0d::auth::allowlist::Allowlist;
use mc0d::auth::allowlist::Role;
use mc0d::cluster::payload;
use mc0d::engine::acl::{self, Actor, Policy};
use mc0d::engine::ToCluster;
use mc0d::{Config, Conn, Engine, IdentityCheck, Origin, Transport, ACCESS_DENIED, IMPOSTOR};
use proptest::prelude::*;

/// Records every send (never drops) and reports the connections a test
/// closed, whenever the engine asks.
#[derive(Default)]
struct Recorder {
    sent: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    closed: Vec<Conn>,
}

impl Transport for Recorder {
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error> {
        self.sent.push((rid.to_vec(), frames.to_vec()));
        Ok(())
    }
    fn lost_connections(&mut self, lost: &mut Vec<Conn>, _all: bool) {
        lost.append(&mut self.closed);
    }
}

const MAX_SUBS: usize = 4;
const MAX_BODY: usize = 24;
/// The agent node keys may publish to.
const NODE_AGENT: &str = "reg";

fn config(check: IdentityCheck) -> Config {
    let mut c = Config {
        log_level: Level::Error,
        limits: Limits { max_frame_size: 64, max_frames: 12, max_headers: 3, max_topic_len: 14 },
        max_subscriptions: MAX_SUBS,
        identity_check: check,
        node_publish_agents: vec![NODE_AGENT.into()],
        ..Config::default()
    };
    c.max_body_size = MAX_BODY;
    c
}

/// Routing ids: the first three are the identities of users 0-2 (one with
/// nothing after it), the last claims nobody's.
const RIDS: [&str; 4] = ["n0 1", "n1 1", "n2", "x 1"];

/// Three listable keys (users 0-2, named "n0".."n2" when named) and an
/// unlisted one (3); 4 means "no User-Id" (no CURVE).
fn user_key(user: u8) -> Option<String> {
    (user < 4).then(|| key_to_z85(&[user + 1; 32]))
}

fn name(user: u8) -> String {
    format!("n{user}")
}

/// What a topic addresses, written out by hand (the engine parses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    Agent(&'static str),
    Node(&'static str),
    Reply(&'static str),
}

const TOPICS: [(&str, Kind); 8] = [
    ("t", Kind::Other),
    ("c a", Kind::Agent("a")),
    ("c reg", Kind::Agent("reg")),
    ("c nodes n0", Kind::Node("n0")),
    ("c nodes n1", Kind::Node("n1")),
    ("c reply n0 1", Kind::Reply("n0")),
    ("c reply n2 1", Kind::Reply("n2")),
    // Over the topic length limit.
    ("long-topic-name", Kind::Other),
];

fn kind(topic: &[u8]) -> Kind {
    TOPICS.iter().find(|(t, _)| t.as_bytes() == topic).map_or(Kind::Other, |(_, k)| *k)
}

/// How a user is listed: role, and whether with its name.
type Listing = BTreeMap<u8, (Role, bool)>;

fn allowlist(listing: &Listing) -> Arc<Allowlist> {
    let keys: Vec<(Key, u8, Role, bool)> = listing.iter().map(|(&u, &(r, named))| ([u + 1; 32], u, r, named)).collect();
    let names: Vec<String> = keys.iter().map(|(_, u, _, _)| name(*u)).collect();
    let entries = keys.iter().zip(&names).map(|((k, _, r, named), n)| (k, named.then_some(n.as_str()), *r));
    Arc::new(Allowlist::from_keys(entries).expect("valid list"))
}

#[derive(Debug, Clone)]
enum Op {
    /// A message from routing id `RIDS[rid]` over connection `rid * 10 +
    /// conn` (a connection carries one routing id), authenticated as `user`.
    Msg { rid: u8, conn: u8, user: u8, frames: Vec<Vec<u8>> },
    /// Time jumps far past every TTL: heartbeats, then expiry of everyone.
    Jump,
    /// That connection closed (reported to the engine when it asks).
    Close { rid: u8, conn: u8 },
    /// The allowlist becomes exactly this.
    Relist(Listing),
    /// The connection closes and its client comes back on a new one with
    /// the same number (the kernel reuses the lowest free descriptor),
    /// CONNECTs and subscribes to `topic`.
    Reconnect { rid: u8, conn: u8, topic: &'static [u8] },
    /// The client speaks on its other connection, the first one's close is
    /// reported late, and it speaks again on a connection with the first
    /// one's number.
    Return { rid: u8 },
}

impl Op {
    /// The steps of a [`Op::Reconnect`]; other ops as they are.
    fn steps(self) -> Vec<Op> {
        let noop = || Command::Noop { id: None }.to_frames();
        match self {
            Op::Reconnect { rid, conn, topic } => {
                let connect = Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"c") }.to_frames();
                let sub = Command::Sub { id: Some(b"s"), queue: None, compact: false, topics: vec![topic] }.to_frames();
                vec![
                    Op::Close { rid, conn },
                    Op::Msg { rid, conn, user: rid, frames: connect },
                    Op::Msg { rid, conn, user: rid, frames: sub },
                ]
            }
            Op::Return { rid } => vec![
                Op::Msg { rid, conn: 1, user: rid, frames: noop() },
                Op::Close { rid, conn: 0 },
                Op::Msg { rid, conn: 0, user: rid, frames: noop() },
            ],
            op => vec![op],
        }
    }
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"".to_vec()),
        Just(b"ID".to_vec()),
        Just(b"TOPIC".to_vec()),
        Just(b"TTL".to_vec()),
        Just(b"VERSION".to_vec()),
        Just(b"X-A".to_vec()),
        Just(b"SENDER".to_vec()),
        Just(b"c nodes n0".to_vec()),
        Just(b"CONNECT".to_vec()),
        Just(b"SUB".to_vec()),
        Just(b"PUT".to_vec()),
        Just(b"60000".to_vec()),
        prop::collection::vec(any::<u8>(), 0..80),
    ]
}

fn topic() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(TOPICS.iter().map(|(t, _)| t.as_bytes()).collect::<Vec<_>>())
}

/// Mostly well-formed commands (so sessions and subscriptions build up),
/// some with limits broken or forged stamps, some arbitrary frames.
fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let id = prop::option::of(prop_oneof![Just(&b"1"[..]), Just(&b"2"[..])]);
    let topics = prop::collection::vec(topic(), 0..7);
    let header = prop::sample::select(vec![&b"X-H"[..], b"SENDER", b"SENDER-KEY"]);
    let headers = prop::collection::vec(header, 0..4);
    let command = (0..6u8, id, topics, 0..40usize, headers, 0..3u8).prop_map(|(verb, id, topics, body, hdrs, ttl)| {
        let ttl_ms = [1000, 60_000, 0][ttl as usize];
        let body = vec![b'x'; body];
        let headers: Vec<(&[u8], &[u8])> = hdrs.iter().map(|h| (*h, &b"v"[..])).collect();
        let cmd = match verb {
            0 => Command::Connect { version: b"0.3", ttl_ms, id },
            1 => Command::Disconnect { id },
            2 => Command::Sub { id, queue: None, compact: false, topics },
            3 => Command::Unsub { id, queue: None, topics },
            4 => Command::Put { topic: topics.first().copied().unwrap_or(b"t"), headers, id, body: vec![&body] },
            _ => Command::Noop { id },
        };
        cmd.to_frames()
    });
    let random = || prop::collection::vec(token(), 0..16);
    let delimited = random().prop_map(|mut f| {
        f.insert(0, vec![]);
        f
    });
    prop_oneof![8 => command, 1 => random(), 1 => delimited]
}

fn listing() -> impl Strategy<Value = Listing> {
    let role = prop::sample::select(vec![Role::Any, Role::Node, Role::Client]);
    let named = prop::bool::weighted(0.85);
    prop::collection::btree_map(0..3u8, (role, named), 0..4)
}

fn conn() -> impl Strategy<Value = u8> {
    prop_oneof![6 => Just(0u8), 1 => Just(1u8)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..4u8, conn(), prop::option::weighted(0.15, 0..5u8), frames())
            // Mostly the key whose identity the routing id claims, over the
            // connection it last used, so sessions last and grow.
            .prop_map(|(rid, conn, user, frames)| Op::Msg { rid, conn, user: user.unwrap_or(rid), frames }),
        1 => Just(Op::Jump),
        3 => (0..4u8, conn()).prop_map(|(rid, conn)| Op::Close { rid, conn }),
        2 => (0..4u8, conn(), topic()).prop_map(|(rid, conn, topic)| Op::Reconnect { rid, conn, topic }),
        2 => (0..4u8).prop_map(|rid| Op::Return { rid }),
        1 => listing().prop_map(Op::Relist),
    ]
}

/// A session in the model.
#[derive(Debug, Clone)]
struct Session {
    key: Option<String>,
    /// The name its key was listed under at CONNECT.
    identity: Option<String>,
    conn: Conn,
    lost: bool,
    topics: BTreeSet<Vec<u8>>,
}

/// A PUT's expected fan-out: topic, recipients, headers, body.
type Fanout = Option<(Vec<u8>, BTreeSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>)>;

/// What the broker must know, per routing id, and the counters it must keep.
#[derive(Default)]
struct Model {
    sessions: BTreeMap<Vec<u8>, Session>,
    /// Closed connections the engine has not asked about yet.
    closed: Vec<Conn>,
    violations: u64,
    impostors: u64,
    drops: u64,
}

impl Model {
    fn topics(&self) -> usize {
        self.sessions.values().flat_map(|s| s.topics.iter()).collect::<BTreeSet<_>>().len()
    }
    fn subscribers<'a>(&'a self, topic: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Session)> {
        self.sessions.iter().filter(move |(_, s)| s.topics.contains(topic))
    }
    /// The engine takes note of closed connections.
    fn take_closed(&mut self) {
        for conn in std::mem::take(&mut self.closed) {
            for s in self.sessions.values_mut().filter(|s| s.conn == conn) {
                s.lost = true;
            }
        }
    }
}

/// The reply a sender must get (besides deliveries), as (verb, message, id).
type Expected = Option<(&'static str, Option<String>, Option<Vec<u8>>)>;

/// The model's own verdicts on the identity and role rules.
fn connect_allowed(rid: &[u8], identity: Option<&str>) -> bool {
    identity.is_some_and(|n| rid == n.as_bytes() || rid.starts_with(format!("{n} ").as_bytes()))
}

fn subscribe_allowed(topic: &[u8], identity: Option<&str>) -> bool {
    match kind(topic) {
        Kind::Node(owner) | Kind::Reply(owner) => identity == Some(owner),
        Kind::Agent(_) | Kind::Other => true,
    }
}

fn publish_allowed(topic: &[u8], role: Role) -> bool {
    match (role, kind(topic)) {
        (Role::Any, _) => true,
        (Role::Client, k) => !matches!(k, Kind::Reply(_)),
        (Role::Node, Kind::Reply(_)) => true,
        (Role::Node, Kind::Agent(a)) => a == NODE_AGENT,
        (Role::Node, _) => false,
    }
}

/// A verdict of the model, checked against the rules' own, and what
/// `--identity-check` makes of it: None to go ahead, or the error text.
fn judge(check: IdentityCheck, violations: &mut u64, allowed: bool, rules: Result<(), acl::Denial>) -> Option<String> {
    assert_eq!(allowed, rules.is_ok(), "model and rules disagree: {rules:?}");
    let denial = rules.err()?;
    *violations += 1;
    (check == IdentityCheck::Enforce).then_some(denial.0)
}

fn run(ops: Vec<Op>, with_allowlist: bool, check: IdentityCheck) -> Result<(), TestCaseError> {
    run_in(ops, with_allowlist, check, false)
}

/// [`run`], the engine a cluster member when `clustered`: then after every
/// step its NATS interest (the changes it reported, applied in order) must
/// be exactly the topics with at least one local subscriber, and each
/// accepted PUT must be handed over for exactly one publish.
fn run_in(ops: Vec<Op>, with_allowlist: bool, check: IdentityCheck, clustered: bool) -> Result<(), TestCaseError> {
    let config = config(check);
    let limits = config.limits;
    let policy = Policy::new([NODE_AGENT]);
    let mut engine = Engine::new(Recorder::default(), &config);
    if clustered {
        engine.join_cluster(usize::MAX);
    }
    let mut interest: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut listing: Listing = (0..3).map(|u| (u, (Role::Any, true))).collect();
    if with_allowlist {
        engine.set_allowlist(Some(allowlist(&listing)), Instant::now());
    }
    let mut model = Model::default();
    let mut now = Instant::now();
    for op in ops.into_iter().flat_map(Op::steps) {
        engine.transport_mut().sent.clear();
        let mut expect_publish: Option<Vec<u8>> = None;
        match op {
            Op::Msg { rid: r, conn, user, frames } => {
                now += Duration::from_millis(1);
                let rid = RIDS[r as usize].as_bytes().to_vec();
                let conn = Conn::from(r * 10 + conn);
                let key = user_key(user);
                let mut message = vec![rid.clone()];
                message.extend(frames.iter().cloned());
                engine.handle(&message, Origin { user: key.as_deref(), conn: Some(conn) }, now);
                let sent = std::mem::take(&mut engine.transport_mut().sent);

                let listed = if with_allowlist { listing.get(&user).filter(|_| user < 3).copied() } else { None };
                let authorized = !with_allowlist || listed.is_some();
                let identity = listed.and_then(|(_, named)| named.then(|| name(user)));
                let actor = listed.map(|(role, _)| (identity.clone(), role));
                let relaxed = Limits { max_frames: usize::MAX, ..limits };
                let lenient_id = || mc0::protocol::split(&frames, &relaxed).ok().and_then(|e| Command::id_of(&e));
                let owner = model.sessions.get(&rid).map(|s| s.key.clone());
                let mut deliveries: Fanout = None;
                let expected: Expected = if frames.is_empty() {
                    None
                } else if !authorized {
                    Some(("ERROR", Some(ACCESS_DENIED.into()), lenient_id().map(<[u8]>::to_vec)))
                } else if owner.as_ref().is_some_and(|k| *k != key) {
                    model.impostors += 1;
                    Some(("ERROR", Some(IMPOSTOR.into()), lenient_id().map(<[u8]>::to_vec)))
                } else {
                    if let Some(s) = model.sessions.get_mut(&rid) {
                        if s.conn != conn || s.lost {
                            model.take_closed();
                            let s = model.sessions.get_mut(&rid).unwrap();
                            s.conn = conn;
                            s.lost = false;
                        }
                    }
                    match Command::parse(&frames, &limits) {
                        Err(e) => {
                            let id = mc0::protocol::split(&frames, &limits).ok().and_then(|e| Command::id_of(&e));
                            Some(("ERROR", Some(e.to_string()), id.map(<[u8]>::to_vec)))
                        }
                        Ok(cmd) => {
                            let id = cmd.id().map(<[u8]>::to_vec);
                            let known = model.sessions.contains_key(&rid);
                            let ok = |id: Option<Vec<u8>>| id.map(|i| ("OK", None, Some(i)));
                            let err = |m: String| Some(("ERROR", Some(m), cmd.id().map(<[u8]>::to_vec)));
                            let judge = |violations: &mut u64, allowed, rules| judge(check, violations, allowed, rules);
                            fn as_actor((identity, role): &(Option<String>, Role)) -> Actor<'_> {
                                Actor { identity: identity.as_deref(), role: *role }
                            }
                            match cmd {
                                Command::Connect { .. } => {
                                    let refusal = actor.as_ref().and_then(|a| {
                                        let allowed = connect_allowed(&rid, a.0.as_deref());
                                        judge(&mut model.violations, allowed, acl::check_connect(as_actor(a), &rid))
                                    });
                                    match refusal {
                                        Some(text) => err(text),
                                        None => {
                                            model.take_closed();
                                            let session = Session {
                                                key: key.clone(),
                                                identity: identity.clone(),
                                                conn,
                                                lost: false,
                                                topics: BTreeSet::new(),
                                            };
                                            model.sessions.insert(rid.clone(), session);
                                            ok(id)
                                        }
                                    }
                                }
                                _ if !known => err(NOT_CONNECTED.into()),
                                Command::Disconnect { .. } => {
                                    model.sessions.remove(&rid);
                                    ok(id)
                                }
                                // Without queues no delivery is held: nothing to do.
                                Command::Ack { .. } => ok(id),
                                Command::Sub { ref topics, .. } => {
                                    let held = &model.sessions[&rid].topics;
                                    let new: BTreeSet<Vec<u8>> =
                                        topics.iter().filter(|t| !held.contains(**t)).map(|t| t.to_vec()).collect();
                                    if held.len() + new.len() > MAX_SUBS {
                                        err(format!(
                                            "too many subscriptions: {} held + {} new, over the limit of {MAX_SUBS} per client",
                                            held.len(),
                                            new.len()
                                        ))
                                    } else {
                                        let refusal = actor.as_ref().and_then(|a| {
                                            let allowed = new.iter().all(|t| subscribe_allowed(t, a.0.as_deref()));
                                            let rules =
                                                new.iter().try_for_each(|t| acl::check_subscribe(as_actor(a), t));
                                            judge(&mut model.violations, allowed, rules)
                                        });
                                        match refusal {
                                            Some(text) => err(text),
                                            None => {
                                                model.sessions.get_mut(&rid).unwrap().topics.extend(new);
                                                ok(id)
                                            }
                                        }
                                    }
                                }
                                Command::Unsub { ref topics, .. } => {
                                    let held = &mut model.sessions.get_mut(&rid).unwrap().topics;
                                    for t in topics {
                                        held.remove(*t);
                                    }
                                    ok(id)
                                }
                                Command::Put { topic, ref headers, ref body, .. } => {
                                    let size: usize = body.iter().map(|b| b.len()).sum();
                                    // The size limit comes first: no verdict is taken on an oversized PUT.
                                    let mut refusal = || {
                                        actor.as_ref().and_then(|a| {
                                            let rules = acl::check_publish(as_actor(a), topic, &policy);
                                            judge(&mut model.violations, publish_allowed(topic, a.1), rules)
                                        })
                                    };
                                    if size > MAX_BODY {
                                        err(format!("body is {size} bytes, over the limit of {MAX_BODY}"))
                                    } else if let Some(text) = refusal() {
                                        err(text)
                                    } else {
                                        if model.subscribers(topic).next().is_some() {
                                            model.take_closed();
                                        }
                                        let (lost, to): (Vec<_>, Vec<_>) =
                                            model.subscribers(topic).partition(|(_, s)| s.lost);
                                        let to: BTreeSet<Vec<u8>> =
                                            to.into_iter().map(|(sub, _)| sub.clone()).collect();
                                        model.drops += lost.len() as u64;
                                        // One header: the name if the key has one, else the key.
                                        let stamp = match (&identity, &key) {
                                            (Some(n), _) => Some((b"SENDER".to_vec(), n.as_bytes().to_vec())),
                                            (None, Some(k)) => Some((b"SENDER-KEY".to_vec(), k.as_bytes().to_vec())),
                                            (None, None) => None,
                                        };
                                        let mut stamped: Vec<(Vec<u8>, Vec<u8>)> = stamp.into_iter().collect();
                                        stamped.extend(
                                            headers
                                                .iter()
                                                .filter(|(h, _)| *h != b"SENDER" && *h != b"SENDER-KEY")
                                                .map(|(h, v)| (h.to_vec(), v.to_vec())),
                                        );
                                        deliveries = Some((topic.to_vec(), to, stamped, body.concat()));
                                        ok(id)
                                    }
                                }
                                Command::Noop { .. } => ok(id),
                            }
                        }
                    }
                };
                expect_publish = deliveries.as_ref().map(|(topic, ..)| topic.clone());
                check_sends(&sent, &rid, expected, deliveries)?;
            }
            Op::Jump => {
                now += Duration::from_secs(3600);
                engine.tick(now);
                model.take_closed();
                let sent = std::mem::take(&mut engine.transport_mut().sent);
                for (to, frames) in &sent {
                    prop_assert!(model.sessions.contains_key(to), "NOOP to a stranger {to:?}");
                    prop_assert_eq!(Reply::parse(frames, &Limits::default()), Ok(Reply::Noop));
                }
                prop_assert_eq!(sent.len(), model.sessions.len(), "one NOOP per session before expiry");
                model.sessions.clear();
            }
            Op::Close { rid, conn } => {
                let conn = Conn::from(rid * 10 + conn);
                engine.transport_mut().closed.push(conn);
                model.closed.push(conn);
            }
            Op::Reconnect { .. } | Op::Return { .. } => unreachable!("expanded by Op::steps"),
            Op::Relist(new) => {
                if !with_allowlist {
                    continue;
                }
                listing = new;
                let dropped = engine.set_allowlist(Some(allowlist(&listing)), now);
                let before = model.sessions.len();
                model.sessions.retain(|_, s| {
                    (0..3u8).any(|u| {
                        user_key(u) == s.key
                            && listing.get(&u).is_some_and(|(_, named)| named.then(|| name(u)) == s.identity)
                    })
                });
                prop_assert_eq!(dropped, before - model.sessions.len());
                let sent = std::mem::take(&mut engine.transport_mut().sent);
                prop_assert_eq!(sent.len(), dropped, "each dropped session is told once");
                for (to, frames) in &sent {
                    prop_assert!(!model.sessions.contains_key(to));
                    let denied = Reply::Error { message: ACCESS_DENIED.as_bytes(), id: None };
                    prop_assert_eq!(Reply::parse(frames, &Limits::default()), Ok(denied));
                }
            }
        }
        engine.check_invariants().map_err(TestCaseError::fail)?;
        let mut work = Vec::new();
        engine.take_cluster_work(|w| work.push(w));
        let mut published = Vec::new();
        for w in work {
            match w {
                ToCluster::Interest(topic, true) => prop_assert!(interest.insert(topic.to_vec()), "interest twice"),
                ToCluster::Interest(topic, false) => prop_assert!(interest.remove(&topic[..]), "dropped unheld"),
                ToCluster::Publish(topic, bytes) => {
                    let frames = payload::decode(&bytes).ok_or_else(|| TestCaseError::fail("bad payload"))?;
                    match Reply::parse(&frames, &Limits::default()) {
                        Ok(Reply::Message { topic: t, .. }) => prop_assert_eq!(t, &topic[..]),
                        other => prop_assert!(false, "published {other:?}"),
                    }
                    published.push(topic.to_vec());
                }
            }
        }
        if clustered {
            let held: BTreeSet<Vec<u8>> = model.sessions.values().flat_map(|s| s.topics.iter().cloned()).collect();
            prop_assert_eq!(&interest, &held, "NATS interest = topics with a local subscriber");
            prop_assert_eq!(published, expect_publish.into_iter().collect::<Vec<_>>(), "one publish per PUT");
        } else {
            prop_assert!(interest.is_empty() && published.is_empty(), "cluster work without a cluster");
        }
        let stats = engine.stats();
        prop_assert_eq!(stats.clients, model.sessions.len(), "client count");
        prop_assert_eq!(stats.topics, model.topics(), "topic count");
        prop_assert_eq!(stats.violations, model.violations, "violations");
        prop_assert_eq!(stats.impostors, model.impostors, "impostors");
        prop_assert_eq!(stats.drops, model.drops, "drops (deliveries to lost connections)");
    }
    Ok(())
}

/// Exactly the expected reply to the sender, and MESSAGE copies, with the
/// expected stamp and headers, to exactly the expected recipients (which may
/// include the sender).
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
            Ok(Reply::Message { topic, headers, body }) => {
                let (want_topic, _, want_headers, want_body) = deliveries.as_ref().expect("MESSAGE only for a PUT");
                prop_assert_eq!(topic, &want_topic[..]);
                let headers: Vec<(Vec<u8>, Vec<u8>)> = headers.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                prop_assert_eq!(&headers, want_headers);
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
    prop_assert_eq!(got_to, deliveries.map(|d| d.1).unwrap_or_default(), "delivered to exactly the recipients");
    prop_assert_eq!(replies, expected.into_iter().collect::<Vec<_>>());
    Ok(())
}

/// One step of [`interest_run`]; clients are `RIDS[0..3]`, topics
/// `QTOPICS`.
#[derive(Debug, Clone)]
enum Step {
    Connect(u8),
    Disconnect(u8),
    /// A plain SUB, or (`queue`) membership of the topic's queue `q`.
    Sub {
        rid: u8,
        topic: u8,
        queue: bool,
    },
    Unsub {
        rid: u8,
        topic: u8,
        queue: bool,
    },
    Put {
        rid: u8,
        topic: u8,
    },
    /// The same as a PUT on another broker: a message from NATS.
    FromCluster(u8),
    /// Seconds pass (at least one, so the queues' sweep runs) and the
    /// engine ticks.
    Advance(u64),
}

const QTOPICS: [&[u8]; 3] = [b"t0", b"t1", b"t2"];
/// A session's plain topics, or the topics of the queues it is a member of.
type Topics = BTreeSet<&'static [u8]>;
/// Declared on the command line: kept whatever happens.
const DECLARED: &[u8] = b"td";
const QUEUE_IDLE: Duration = Duration::from_secs(3);

fn step() -> impl Strategy<Value = Step> {
    let (rid, topic) = (0..3u8, 0..3u8);
    prop_oneof![
        2 => rid.clone().prop_map(Step::Connect),
        1 => rid.clone().prop_map(Step::Disconnect),
        4 => (rid.clone(), topic.clone(), any::<bool>()).prop_map(|(rid, topic, queue)| Step::Sub { rid, topic, queue }),
        3 => (rid.clone(), topic.clone(), any::<bool>()).prop_map(|(rid, topic, queue)| Step::Unsub { rid, topic, queue }),
        1 => (rid, topic.clone()).prop_map(|(rid, topic)| Step::Put { rid, topic }),
        1 => topic.prop_map(Step::FromCluster),
        2 => (1..5u64).prop_map(Step::Advance),
    ]
}

/// A queue in the interest model.
#[derive(Debug)]
struct ModelQueue {
    /// Last time it gained or lost a member, or was left.
    used: Instant,
    /// It got a message; nobody acknowledges here, so it is never empty again.
    kept: bool,
}

/// A cluster member's NATS interest against a model: after every step it is
/// exactly the topics with a local subscriber or a queue, a queue keeping
/// its topic's interest while no consumer is connected and until it is
/// forgotten (undeclared, empty, without members for the idle time); a
/// message from NATS goes into the topic's queue (to a member if one is
/// connected) and never back to NATS.
fn interest_run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut config = config(IdentityCheck::Enforce);
    config.queues = vec![(String::from_utf8(DECLARED.to_vec()).unwrap(), "q".into())];
    config.queue_limits.idle = QUEUE_IDLE;
    let mut engine = Engine::new(Recorder::default(), &config);
    engine.join_cluster(usize::MAX);
    // After the engine's own clock reading: its first sweep is due within a second.
    let mut now = Instant::now();
    let mut interest: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut sessions: BTreeMap<u8, (Topics, Topics)> = BTreeMap::new();
    let mut queues: BTreeMap<&'static [u8], ModelQueue> = BTreeMap::new();
    queues.insert(DECLARED, ModelQueue { used: now, kept: true });
    let message = |topic: &[u8]| Reply::Message { topic, headers: vec![], body: vec![b"m"] }.to_frames();
    for step in steps {
        engine.transport_mut().sent.clear();
        let mut from_cluster = false;
        let send = |engine: &mut Engine<Recorder>, now: &mut Instant, rid: u8, command: Command<'_>| {
            *now += Duration::from_millis(1);
            let mut frames = vec![RIDS[rid as usize].as_bytes().to_vec()];
            frames.extend(command.to_frames());
            let key = user_key(rid);
            engine.handle(&frames, Origin { user: key.as_deref(), conn: Some(Conn::from(rid)) }, *now);
        };
        // A session ending (or re-CONNECTing) leaves its queues.
        let leave_all = |queues: &mut BTreeMap<&'static [u8], ModelQueue>, member_of: &Topics, now: Instant| {
            for topic in member_of {
                queues.get_mut(topic).expect("a member's queue exists").used = now;
            }
        };
        match step {
            Step::Connect(rid) => {
                send(&mut engine, &mut now, rid, Command::Connect { version: b"0.3", ttl_ms: 86_400_000, id: None });
                if let Some((_, member_of)) = sessions.insert(rid, Default::default()) {
                    leave_all(&mut queues, &member_of, now);
                }
            }
            Step::Disconnect(rid) => {
                send(&mut engine, &mut now, rid, Command::Disconnect { id: None });
                if let Some((_, member_of)) = sessions.remove(&rid) {
                    leave_all(&mut queues, &member_of, now);
                }
            }
            Step::Sub { rid, topic, queue } => {
                let topic = QTOPICS[topic as usize];
                let name: Option<&[u8]> = queue.then_some(b"q");
                send(
                    &mut engine,
                    &mut now,
                    rid,
                    Command::Sub { id: None, queue: name, compact: false, topics: vec![topic] },
                );
                if let Some((plain, member_of)) = sessions.get_mut(&rid) {
                    if queue {
                        member_of.insert(topic);
                        queues.entry(topic).or_insert(ModelQueue { used: now, kept: false }).used = now;
                    } else {
                        plain.insert(topic);
                    }
                }
            }
            Step::Unsub { rid, topic, queue } => {
                let topic = QTOPICS[topic as usize];
                let name: Option<&[u8]> = queue.then_some(b"q");
                send(&mut engine, &mut now, rid, Command::Unsub { id: None, queue: name, topics: vec![topic] });
                if let Some((plain, member_of)) = sessions.get_mut(&rid) {
                    if queue {
                        member_of.remove(topic);
                        if let Some(q) = queues.get_mut(topic) {
                            q.used = now;
                        }
                    } else {
                        plain.remove(topic);
                    }
                }
            }
            Step::Put { rid, topic } => {
                let topic = QTOPICS[topic as usize];
                send(&mut engine, &mut now, rid, Command::Put { topic, headers: vec![], id: None, body: vec![b"m"] });
                if let (true, Some(q)) = (sessions.contains_key(&rid), queues.get_mut(topic)) {
                    q.kept = true;
                }
            }
            Step::FromCluster(topic) => {
                let topic = QTOPICS[topic as usize];
                now += Duration::from_millis(1);
                engine.deliver_from_cluster(topic, message(topic), now);
                if let Some(q) = queues.get_mut(topic) {
                    q.kept = true;
                }
                from_cluster = true;
            }
            Step::Advance(secs) => {
                now += Duration::from_secs(secs);
                engine.tick(now);
                let members: BTreeSet<&[u8]> = sessions.values().flat_map(|(_, m)| m.iter().copied()).collect();
                queues.retain(|topic, q| {
                    q.kept || members.contains(topic) || now.saturating_duration_since(q.used) < QUEUE_IDLE
                });
            }
        }
        engine.check_invariants().map_err(TestCaseError::fail)?;
        if from_cluster {
            // A connected member of the topic's queue got it, marked as a queue delivery.
            let topic = match step {
                Step::FromCluster(t) => QTOPICS[t as usize],
                _ => unreachable!(),
            };
            let member = sessions.values().any(|(_, m)| m.contains(topic));
            let queued = engine.transport().sent.iter().any(|(_, frames)| frames.iter().any(|f| f == b"QUEUE"));
            prop_assert_eq!(queued, member, "a message from NATS reaches the queue's member");
        }
        let mut work = Vec::new();
        engine.take_cluster_work(|w| work.push(w));
        for w in work {
            match w {
                ToCluster::Interest(topic, true) => prop_assert!(interest.insert(topic.to_vec()), "interest twice"),
                ToCluster::Interest(topic, false) => prop_assert!(interest.remove(&topic[..]), "dropped unheld"),
                ToCluster::Publish(topic, _) => {
                    prop_assert!(!from_cluster, "a message from NATS went back to NATS: {:?}", topic)
                }
            }
        }
        let expected: BTreeSet<Vec<u8>> =
            sessions.values().flat_map(|(plain, _)| plain.iter()).chain(queues.keys()).map(|t| t.to_vec()).collect();
        prop_assert_eq!(&interest, &expected, "NATS interest = topics with a local subscriber or a queue");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model_without_an_allowlist(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, false, IdentityCheck::Enforce)?;
    }

    #[test]
    fn engine_matches_the_model_with_an_allowlist(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, true, IdentityCheck::Enforce)?;
    }

    #[test]
    fn engine_matches_the_model_in_a_cluster(ops in prop::collection::vec(op(), 1..120)) {
        run_in(ops, true, IdentityCheck::Enforce, true)?;
    }

    #[test]
    fn cluster_interest_follows_subscribers_and_queues(steps in prop::collection::vec(step(), 1..60)) {
        interest_run(steps)?;
    }

    #[test]
    fn engine_matches_the_model_when_identity_checks_only_log(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, true, IdentityCheck::Log)?;
    }

    /// Anything at all, in frames of any shape: never a panic, at most one
    /// reply, tables consistent.
    #[test]
    fn arbitrary_frames_never_break_the_engine(
        messages in prop::collection::vec((0..3u8, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20)), 1..60)
    ) {
        let mut engine = Engine::new(Recorder::default(), &config(IdentityCheck::Enforce));
        let now = Instant::now();
        for (rid, frames) in messages {
            let mut message = vec![vec![rid]];
            message.extend(frames);
            engine.transport_mut().sent.clear();
            engine.handle(&message, Origin::default(), now);
            let replies = engine.transport().sent.iter().filter(|(to, _)| to[..] == [rid]).count();
            prop_assert!(replies <= 1, "{} replies", replies);
            engine.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
