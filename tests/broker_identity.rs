//! One key cannot act as another node (issue 9), against the real `mc0d`
//! over CURVE: a routing id stays with the connection and key that hold it
//! (also without an allowlist), and with `--authorized-keys` the name a key
//! is listed under is the only MCollective identity it may use: as routing
//! id, for node and reply topics, in the `SENDER` stamp every MESSAGE
//! carries (`SENDER-KEY` instead in open mode, never both). Roles
//! (`nodes/`, `clients/`) limit what a key may publish. Every scenario
//! checks that the legitimate parties still get everything.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{authorize, routing_id, Client, Mc0d, Mc0dOptions, Message, Monitor, TempDir, PROBE, WAIT};
use mc0::connector::Config;
use mc0::connector::{Connector, ErrorKind};
use mc0::keys::{key_to_z85, KeyPair};
use mc0::protocol::IMPOSTOR;
use mc0::protocol::{Command, NOT_CONNECTED};

/// Long enough for a message that is on its way to arrive; used where
/// nothing may arrive.
const SILENCE: Duration = Duration::from_millis(700);
const REQUESTS: usize = 10;

/// How the allowlist directory is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Every key directly in the directory: either role.
    Flat,
    /// `nodes/nodeA`, `nodes/nodeB`, `clients/admin`.
    Roles,
}

/// nodeA, nodeB (MCollective servers) and admin (an `mco` user), with a
/// broker listing them.
struct Fleet {
    broker: Mc0d,
    node_a: KeyPair,
    node_b: KeyPair,
    admin: KeyPair,
    _tmp: TempDir,
}

fn pair() -> KeyPair {
    KeyPair::generate().unwrap()
}

fn fleet(layout: Layout, extra: &[&str]) -> Fleet {
    let tmp = TempDir::new("identity");
    let dir = tmp.path().join("authorized");
    let (nodes, clients) = match layout {
        Layout::Flat => (dir.clone(), dir.clone()),
        Layout::Roles => (dir.join("nodes"), dir.join("clients")),
    };
    for d in [&dir, &nodes, &clients] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (probe, node_a, node_b, admin) = (pair(), pair(), pair(), pair());
    authorize(&dir, PROBE, &probe);
    authorize(&nodes, "nodeA", &node_a);
    authorize(&nodes, "nodeB", &node_b);
    authorize(&clients, "admin", &admin);
    let mut args = vec!["--status-interval", "1"];
    args.extend(extra);
    let broker = Mc0d::start_allowlist(&dir, &probe, &args);
    Fleet { broker, node_a, node_b, admin, _tmp: tmp }
}

fn sub<'a>(id: &'a str, topics: &[&'a str]) -> Command<'a> {
    Command::Sub {
        id: Some(id.as_bytes()),
        queue: None,
        compact: false,
        topics: topics.iter().map(|t| t.as_bytes()).collect(),
    }
}

fn put<'a>(topic: &'a str, id: &'a str, headers: Vec<(&'a [u8], &'a [u8])>, body: &'a [u8]) -> Command<'a> {
    Command::Put { topic: topic.as_bytes(), headers, id: Some(id.as_bytes()), body: vec![body] }
}

/// A client of `broker` with `pair` and routing id `id`, CONNECTed.
fn connected(broker: &Mc0d, ctx: &zmq::Context, pair: &KeyPair, id: &str) -> Client {
    let c = broker.client_as(ctx, pair, Some(id.as_bytes()));
    c.handshake(60_000);
    c
}

fn assert_nothing(c: &Client, what: &str) {
    if let Some(frames) = c.recv_non_noop(SILENCE) {
        panic!("{what}: unexpected {}", common::show(&frames));
    }
}

/// A DEALER with `pair` asking for routing id `id`, once its CURVE
/// handshake has succeeded (the broker admitted the key).
fn handshaken(broker: &Mc0d, ctx: &zmq::Context, pair: &KeyPair, id: &str) -> Client {
    let mut monitor = None;
    let server = broker.server_public.unwrap();
    let c = Client::connect_keyed(ctx, &broker.endpoint(), &server, pair, Some(id.as_bytes()), |s| {
        monitor = Some(Monitor::handshakes(ctx, s));
    });
    match monitor.unwrap().next(WAIT) {
        Some((zmq::SocketEvent::HANDSHAKE_SUCCEEDED, _)) => c,
        other => panic!("handshake of {id:?}: {other:?}; log:\n{}", broker.log.text()),
    }
}

/// The admin sends `REQUESTS` directed requests to `node`, each
/// acknowledged; `node` must receive every one, in order, stamped with the
/// admin's name (with an allowlist) or else its key.
fn requests_reach(admin: &Client, admin_key: &KeyPair, node: &Client, topic: &str) {
    requests_reach_as(admin, admin_key, Some("admin"), node, topic)
}

fn requests_reach_as(admin: &Client, admin_key: &KeyPair, name: Option<&str>, node: &Client, topic: &str) {
    for i in 0..REQUESTS {
        let body = format!("request {i}");
        admin.call(&put(topic, &format!("r{i}"), vec![(b"X-REPLY-TO", b"mcollective reply admin 1")], body.as_bytes()));
        let m = node.expect_message();
        assert_eq!(
            (m.topic.as_slice(), &m.body[..]),
            (topic.as_bytes(), &[body.into_bytes()][..]),
            "{i} of {REQUESTS}"
        );
        let key = name.is_none().then(|| key_to_z85(&admin_key.public));
        assert_eq!((m.sender.as_deref(), m.sender_key), (name, key), "one stamp");
    }
}

/// The counters of the last status line (written every second).
fn counter(broker: &Mc0d, name: &str, want: u64) {
    let key = format!(" {name}={want}");
    let line =
        broker.log.wait_for(WAIT, |l| l.contains("status:") && (l.contains(&(key.clone() + " ")) || l.ends_with(&key)));
    assert!(line.is_some(), "no status line with{key}; log:\n{}", broker.log.text());
}

/// A DEALER with nodeA's (authorized) key asking for nodeB's live routing
/// id is never served: nodeB keeps receiving all 10 directed requests.
fn hijack_of_a_live_routing_id_is_refused(broker: &Mc0d, keys: [&KeyPair; 3], admin_name: Option<&str>) {
    let [node_a, node_b, admin] = keys;
    let ctx = zmq::Context::new();
    let b_id = routing_id("nodeB");
    let node = connected(broker, &ctx, node_b, &b_id);
    node.call(&sub("s", &["mcollective nodes nodeB"]));
    let control = connected(broker, &ctx, admin, &routing_id("admin"));

    let thief = handshaken(broker, &ctx, node_a, &b_id);
    thief.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"steal") });
    thief.send_command(&sub("s", &["mcollective nodes nodeB"]));
    // The broker has seen the thief's connection through: another
    // round trip on its socket.
    control.call(&Command::Noop { id: Some(b"after") });

    requests_reach_as(&control, admin, admin_name, &node, "mcollective nodes nodeB");
    assert_nothing(&thief, "the connection that asked for nodeB's routing id");
    assert_nothing(&node, "exactly the requests");
}

#[test]
fn a_live_routing_id_cannot_be_taken_with_another_key() {
    let f = fleet(Layout::Flat, &[]);
    hijack_of_a_live_routing_id_is_refused(&f.broker, [&f.node_a, &f.node_b, &f.admin], Some("admin"));
}

#[test]
fn without_an_allowlist_a_live_routing_id_cannot_be_taken_either() {
    let broker =
        Mc0d::start_with(Mc0dOptions { args: vec!["--status-interval".into(), "1".into()], ..Default::default() });
    assert!(broker.log.text().contains("its routing id stays tied to its key"), "{}", broker.log.text());
    let (node_a, node_b, admin) = (pair(), pair(), pair());
    hijack_of_a_live_routing_id_is_refused(&broker, [&node_a, &node_b, &admin], None);
}

/// After nodeB's connection closes, its session lives on until it expires:
/// a connection that takes the routing id meanwhile gets nothing addressed
/// to nodeB, and is refused, logged with both keys and counted.
#[test]
fn a_routing_id_whose_connection_closed_still_belongs_to_its_key() {
    let f = fleet(Layout::Flat, &[]);
    let ctx = zmq::Context::new();
    let b_id = routing_id("nodeB");
    let node = connected(&f.broker, &ctx, &f.node_b, &b_id);
    node.call(&sub("s", &["mcollective nodes nodeB"]));
    let admin = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
    drop(node);

    // The id is free at the socket once the broker has noticed the close:
    // a connection asking for it earlier is never served at all.
    let deadline = Instant::now() + WAIT;
    let thief = loop {
        let thief = handshaken(&f.broker, &ctx, &f.node_a, &b_id);
        thief.send_command(&Command::Noop { id: Some(b"n") });
        if thief.recv(Duration::from_millis(300)).is_some() {
            break thief;
        }
        assert!(Instant::now() < deadline, "nodeB's routing id was never free; log:\n{}", f.broker.log.text());
    };
    // (Its first NOOP was answered above; this one is checked.)
    thief.send_command(&Command::Noop { id: Some(b"m") });
    assert_eq!(thief.expect_error(), (IMPOSTOR.to_string(), Some("m".into())));
    thief.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"c") });
    assert_eq!(thief.expect_error(), (IMPOSTOR.to_string(), Some("c".into())));
    let line = f.broker.log.wait_for(WAIT, |l| l.contains("belongs to the live session of key"));
    let line = line.unwrap_or_else(|| panic!("not logged:\n{}", f.broker.log.text()));
    assert!(line.contains("(nodeA)") && line.contains("(nodeB)"), "both keys named: {line}");
    counter(&f.broker, "impostors", 3);

    for i in 0..3 {
        admin.call(&put("mcollective nodes nodeB", &format!("p{i}"), vec![], b"for nodeB only"));
    }
    assert_nothing(&thief, "requests for nodeB");

    // nodeB reconnects with the same routing id (as legacy connectors do),
    // once the thief is gone, and is served again as soon as it speaks.
    drop(thief);
    let deadline = Instant::now() + WAIT;
    let node = loop {
        let node = f.broker.client_as(&ctx, &f.node_b, Some(b_id.as_bytes()));
        node.send_command(&Command::Noop { id: Some(b"back") });
        if node.recv_non_noop(Duration::from_millis(300)).is_some() {
            break node;
        }
        assert!(Instant::now() < deadline, "nodeB could not reconnect; log:\n{}", f.broker.log.text());
    };
    requests_reach(&admin, &f.admin, &node, "mcollective nodes nodeB");
}

/// nodeA may not subscribe, plainly or as a queue consumer, to nodeB's directed topic or the admin's reply
/// topic; nodeB and the admin still see every request and reply.
#[test]
fn a_node_cannot_eavesdrop_on_another_nodes_requests_or_an_admins_replies() {
    let f = fleet(Layout::Flat, &[]);
    let ctx = zmq::Context::new();
    let spy = connected(&f.broker, &ctx, &f.node_a, &routing_id("nodeA"));
    // Plainly, and as a queue consumer (which would take the messages
    // away from their owner).
    let queued =
        |id, topic| Command::Sub { id: Some(id), queue: Some(&b"stolen"[..]), compact: false, topics: vec![topic] };
    let attempts = [
        ("s1", sub("s1", &["mcollective nodes nodeB"])),
        ("s2", sub("s2", &["mcollective reply admin 4242"])),
        ("q1", queued(&b"q1"[..], &b"mcollective nodes nodeB"[..])),
        ("q2", queued(&b"q2"[..], &b"mcollective reply admin 4242"[..])),
    ];
    for (id, command) in &attempts {
        spy.send_command(command);
        let (text, got) = spy.expect_error();
        assert_eq!(got.as_deref(), Some(*id));
        assert!(text.contains("identity check failed") && text.contains("\"nodeA\""), "{text}");
    }
    // Its own directed topic is fine.
    spy.call(&sub("s3", &["mcollective nodes nodeA"]));

    let node = connected(&f.broker, &ctx, &f.node_b, &routing_id("nodeB"));
    node.call(&sub("s", &["mcollective nodes nodeB"]));
    let admin = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
    admin.call(&sub("s", &["mcollective reply admin 4242"]));
    admin.call(&put("mcollective nodes nodeB", "r", vec![(b"X-REPLY-TO", b"mcollective reply admin 4242")], b"req"));
    assert_eq!(node.expect_message().body, vec![b"req".to_vec()]);
    node.call(&put("mcollective reply admin 4242", "p", vec![], b"reply"));
    let reply = admin.expect_message();
    assert_eq!((reply.body, reply.sender.as_deref()), (vec![b"reply".to_vec()], Some("nodeB")));
    assert_nothing(&spy, "what the refused subscriptions would have carried");
    let line = f.broker.log.wait_for(WAIT, |l| l.contains("refused SUB from"));
    assert!(line.is_some_and(|l| l.contains("(nodeA)")), "{}", f.broker.log.text());
    counter(&f.broker, "violations", 4);
}

/// A node key's reply to an admin is delivered stamped with the real
/// sender, whatever SENDER it claims; with roles a client key cannot send
/// replies at all.
#[test]
fn a_forged_reply_carries_its_real_sender_and_with_roles_clients_send_none() {
    for layout in [Layout::Flat, Layout::Roles] {
        let f = fleet(layout, &[]);
        let ctx = zmq::Context::new();
        let admin = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
        admin.call(&sub("s", &["mcollective reply admin 4242"]));
        let forger = connected(&f.broker, &ctx, &f.node_a, &routing_id("nodeA"));
        let claims: Vec<(&[u8], &[u8])> = vec![(b"SENDER", b"nodeB"), (b"SENDER-KEY", b"forged"), (b"X-A", b"1")];
        forger.call(&put("mcollective reply admin 4242", "f", claims, b"forged reply"));
        let m: Message = admin.expect_message();
        assert_eq!(m.body, vec![b"forged reply".to_vec()]);
        assert_eq!((m.sender.as_deref(), m.sender_key), (Some("nodeA"), None), "the real sender, by name only");
        assert_eq!(m.headers, vec![(b"X-A".to_vec(), b"1".to_vec())], "no copy of the forged stamp");

        // A client key publishing to a reply topic.
        let other = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
        let reply = put("mcollective reply admin 4242", "c", vec![], b"from a client key");
        match layout {
            Layout::Flat => {
                other.call(&reply);
                assert_eq!(admin.expect_message().sender.as_deref(), Some("admin"));
            }
            Layout::Roles => {
                other.send_command(&reply);
                let (text, id) = other.expect_error();
                assert_eq!(id.as_deref(), Some("c"));
                assert!(text.contains("role check failed") && text.contains("only node keys send replies"), "{text}");
                assert_nothing(&admin, "the refused reply");
            }
        }
    }
}

/// With roles a node key cannot send requests (except to the agents of
/// `--node-publish-agents`); with a flat list it can.
#[test]
fn with_roles_nodes_send_no_requests_but_registration_when_allowed() {
    for (layout, extra) in [
        (Layout::Flat, &[][..]),
        (Layout::Roles, &[][..]),
        (Layout::Roles, &["--node-publish-agents", "registration"][..]),
    ] {
        let f = fleet(layout, extra);
        let ctx = zmq::Context::new();
        let node = connected(&f.broker, &ctx, &f.node_b, &routing_id("nodeB"));
        node.call(&sub("s", &["mcollective rpcutil", "mcollective registration", "mcollective nodes nodeB"]));
        let rogue = connected(&f.broker, &ctx, &f.node_a, &routing_id("nodeA"));
        let registration_allowed = !extra.is_empty();
        for (topic, allowed) in [
            ("mcollective rpcutil", layout == Layout::Flat),
            ("mcollective nodes nodeB", layout == Layout::Flat),
            ("mcollective registration", layout == Layout::Flat || registration_allowed),
        ] {
            let request = put(topic, "q", vec![], b"from a node key");
            if allowed {
                rogue.call(&request);
                let m = node.expect_message();
                assert_eq!((m.topic, m.sender.as_deref()), (topic.as_bytes().to_vec(), Some("nodeA")));
            } else {
                rogue.send_command(&request);
                let (text, _) = rogue.expect_error();
                assert!(text.contains("role check failed") && text.contains("node \"nodeA\""), "{topic}: {text}");
            }
        }
        // The admin's requests always get through.
        let admin = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
        requests_reach(&admin, &f.admin, &node, "mcollective nodes nodeB");
        admin.call(&put("mcollective rpcutil", "b", vec![], b"broadcast"));
        assert_eq!(node.expect_message().body, vec![b"broadcast".to_vec()]);
        assert_nothing(&node, "only what was sent");
    }
}

/// CONNECT as another identity than the key's name is refused, with a text
/// naming both (what the operator reads), and opens no session.
#[test]
fn connecting_as_another_identity_is_refused_with_both_names() {
    let f = fleet(Layout::Roles, &[]);
    let ctx = zmq::Context::new();
    let node = connected(&f.broker, &ctx, &f.node_b, &routing_id("nodeB"));
    node.call(&sub("s", &["mcollective nodes nodeB"]));
    let impostor = f.broker.client_as(&ctx, &f.node_a, Some(routing_id("nodeB").as_bytes()));
    impostor.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"c") });
    let (text, id) = impostor.expect_error();
    assert_eq!(id.as_deref(), Some("c"));
    assert!(text.contains("claims the identity \"nodeB\"") && text.contains("listed as \"nodeA\""), "{text}");
    impostor.send_command(&sub("s", &["mcollective nodes nodeB"]));
    assert_eq!(impostor.expect_error(), (NOT_CONNECTED.to_string(), Some("s".into())), "no session");

    // The connector reports it at connect(), naming both.
    let dir = f.broker.dir.path().to_path_buf();
    let e = connector(&f.broker, &dir, "nodeB", &f.node_a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Broker, "{e}");
    assert!(e.message().contains("\"nodeB\"") && e.message().contains("\"nodeA\""), "{e}");
    // Its own identity connects, and the stamp comes through libmc0.
    let c = connector(&f.broker, &dir, "nodeA", &f.node_a).unwrap();
    c.subscribe("mcollective nodes nodeA").unwrap();
    let admin = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
    admin.call(&put("mcollective nodes nodeA", "r", vec![(b"SENDER", b"nodeB")], b"to nodeA"));
    let m = c.receive(WAIT).unwrap();
    assert_eq!((m.sender.as_deref(), m.sender_key), (Some("admin"), None));
    assert!(m.headers.is_empty(), "{:?}", m.headers);
    requests_reach(&admin, &f.admin, &node, "mcollective nodes nodeB");
}

fn connector(broker: &Mc0d, dir: &Path, identity: &str, keys: &KeyPair) -> Result<Connector, mc0::connector::Error> {
    let private: PathBuf =
        mc0::keys::write_keypair(dir.join(format!("{identity}-{}", key_to_z85(&keys.public).len())), keys, true)
            .unwrap()
            .1;
    let port = broker.port.to_string();
    let server = broker.server_public_file().display().to_string();
    let private = private.display().to_string();
    let config = Config::from_pairs([
        ("broker.host", "127.0.0.1"),
        ("broker.port", &port),
        ("identity", identity),
        ("broker.public_key", &server),
        ("private_key", &private),
        ("connect_timeout", "20"),
    ])
    .unwrap();
    Connector::connect(&config)
}

/// `--identity-check log`: mismatches are carried out, but logged and
/// counted, for a site migrating its allowlist names.
#[test]
fn identity_check_log_allows_but_logs_and_counts() {
    let f = fleet(Layout::Roles, &["--identity-check", "log"]);
    assert!(f.broker.log.text().contains("--identity-check log"), "{}", f.broker.log.text());
    let ctx = zmq::Context::new();
    let legacy_named = connected(&f.broker, &ctx, &f.node_a, "web01.example.com 4242 main");
    legacy_named.call(&sub("s", &["mcollective nodes web01.example.com"]));
    let admin = connected(&f.broker, &ctx, &f.admin, &routing_id("admin"));
    requests_reach(&admin, &f.admin, &legacy_named, "mcollective nodes web01.example.com");
    let line = f.broker.log.wait_for(WAIT, |l| l.contains("allowed (--identity-check log) CONNECT"));
    let line = line.unwrap_or_else(|| panic!("not logged:\n{}", f.broker.log.text()));
    assert!(line.contains("\"web01.example.com\"") && line.contains("\"nodeA\""), "{line}");
    counter(&f.broker, "violations", 2);
}

/// A legacy connector's frames, with a flat allowlist whose names are the
/// MCollective identities: all works as without one, stamped.
#[test]
fn legacy_clients_work_with_a_flat_allowlist_whose_names_match() {
    let tmp = TempDir::new("identity-legacy");
    let (probe, n1, client) = (pair(), pair(), pair());
    let file = tmp.path().join("authorized_keys");
    let lines =
        [(PROBE, &probe), ("n1", &n1), ("client", &client)].map(|(n, k)| format!("{} {n}\n", key_to_z85(&k.public)));
    std::fs::write(&file, lines.concat()).unwrap();
    let broker = Mc0d::start_allowlist(&file, &probe, &[]);
    let ctx = zmq::Context::new();
    let node = broker.client_as(&ctx, &n1, Some(common::LEGACY_NODE.as_bytes()));
    let admin = broker.client_as(&ctx, &client, Some(common::LEGACY_CLIENT.as_bytes()));
    let (requests, replies) = common::legacy_request_reply(&node, &admin);
    assert!(requests.iter().all(|m| m.sender.as_deref() == Some("client")));
    assert!(replies.iter().all(|m| m.sender.as_deref() == Some("n1")));
}

/// A key listed without a name (file form), or under one that is not an
/// MCollective identity (as allowlists written before names had to be
/// identities have: `alice (admin)`), cannot act as anybody. The list still
/// loads; every load warns about each such name, naming the file and line;
/// their CONNECT is refused with a clear text.
#[test]
fn a_key_without_a_name_or_with_a_name_that_is_not_an_identity_cannot_connect() {
    let tmp = TempDir::new("identity-unnamed");
    let (probe, nameless, legacy, web1) = (pair(), pair(), pair(), pair());
    let file = tmp.path().join("authorized_keys");
    let lines = [
        format!("{} {PROBE}", key_to_z85(&probe.public)),
        key_to_z85(&nameless.public),
        format!("{} alice (admin)   # from before mc0 checked names", key_to_z85(&legacy.public)),
        format!("{} web1", key_to_z85(&web1.public)),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let broker = Mc0d::start_allowlist(&file, &probe, &["--authorized-keys-poll", "0"]);
    let warning = format!(
        "authorized keys file {}: line 3: name \"alice (admin)\" is not an MCollective identity",
        file.display()
    );
    let text = broker.log.text();
    assert!(text.contains(&warning) && text.contains(&key_to_z85(&legacy.public)), "{text}");
    assert!(text.contains("2 authorized keys are listed without a name"), "{text}");

    let ctx = zmq::Context::new();
    for (who, key, rid) in [("nameless", &nameless, "web01"), ("alice (admin)", &legacy, "alice")] {
        let c = broker.client_as(&ctx, key, Some(routing_id(rid).as_bytes()));
        c.send_command(&Command::Connect { version: b"0.3", ttl_ms: 60_000, id: Some(b"c") });
        let (text, _) = c.expect_error();
        assert!(text.contains("listed without a name"), "{who}: {text}");
    }
    // The named key of the same file is served.
    let node = connected(&broker, &ctx, &web1, &routing_id("web1"));
    node.call(&sub("s", &["mcollective nodes web1"]));

    // Every load says it again.
    let from = broker.log.len();
    broker.signal(libc::SIGHUP);
    let reloaded = broker.log.wait_for_after(from, WAIT, |l| l.contains("authorized keys reloaded (SIGHUP)"));
    assert!(reloaded.is_some(), "{}", broker.log.text());
    let again = broker.log.wait_for_after(from, WAIT, |l| l.contains(&warning));
    assert!(again.is_some(), "not warned at the reload:\n{}", broker.log.text());
}

/// With `--identity-check log` such a key is served, and every command the
/// rules would refuse is logged and counted; its messages carry its key,
/// since the broker has no name for it.
#[test]
fn with_identity_check_log_a_key_with_a_name_that_is_not_an_identity_is_served_and_logged() {
    let tmp = TempDir::new("identity-legacy-log");
    let (probe, legacy, web1) = (pair(), pair(), pair());
    let file = tmp.path().join("authorized_keys");
    let lines = [(PROBE, &probe), ("alice (admin)", &legacy), ("web1", &web1)]
        .map(|(name, k)| format!("{} {name}\n", key_to_z85(&k.public)));
    std::fs::write(&file, lines.concat()).unwrap();
    let broker = Mc0d::start_allowlist(&file, &probe, &["--identity-check", "log", "--status-interval", "1"]);
    assert!(broker.log.text().contains("line 2: name \"alice (admin)\""), "{}", broker.log.text());

    let ctx = zmq::Context::new();
    let node = connected(&broker, &ctx, &web1, &routing_id("web1"));
    node.call(&sub("s", &["mcollective nodes web1"]));
    let admin = connected(&broker, &ctx, &legacy, &routing_id("alice"));
    admin.call(&sub("s", &["mcollective reply alice 4242"]));
    let line = broker.log.wait_for(WAIT, |l| l.contains("allowed (--identity-check log) CONNECT"));
    let line = line.unwrap_or_else(|| panic!("not logged:\n{}", broker.log.text()));
    assert!(line.contains("listed without a name") && line.contains(&key_to_z85(&legacy.public)), "{line}");

    for i in 0..REQUESTS {
        admin.call(&put("mcollective nodes web1", &format!("r{i}"), vec![], b"request"));
        let m = node.expect_message();
        assert_eq!((m.sender, m.sender_key), (None, Some(key_to_z85(&legacy.public))), "stamped with its key");
    }
    node.call(&put("mcollective reply alice 4242", "p", vec![], b"reply"));
    let reply = admin.expect_message();
    assert_eq!((reply.body, reply.sender.as_deref(), reply.sender_key), (vec![b"reply".to_vec()], Some("web1"), None));
    // CONNECT, and SUB to a reply topic it does not own.
    counter(&broker, "violations", 2);
}
