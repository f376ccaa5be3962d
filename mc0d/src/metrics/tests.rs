use super::snapshot::ClusterFigures;
use super::*;
use crate::engine::queues::{QueueFigures, QueueLimits};
use crate::stats::{DropReason, RefusalReason};

/// Checks `text` line by line against the text exposition format 0.0.4:
/// HELP/TYPE comments, then `name{label="value",...} number` samples of a
/// declared family. Returns the samples.
pub fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(_)) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some("counter" | "gauge")) if valid_name(name) => {
                    typed.insert(name.to_string());
                }
                _ => return Err(bad("bad comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = value.parse().map_err(|_| bad("value is not a number"))?;
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').ok_or_else(|| bad("unclosed labels"))?;
                for pair in labels.split(',') {
                    let (l, v) = pair.split_once('=').ok_or_else(|| bad("label without value"))?;
                    if !(valid_name(l) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"')) {
                        return Err(bad("bad label"));
                    }
                }
                name
            }
            None => series,
        };
        if !valid_name(name) || !typed.contains(name) {
            return Err(bad("sample of an undeclared family"));
        }
        samples.push((series.to_string(), value));
    }
    Ok(samples)
}

/// A queue's figures, all distinct so a mix-up shows.
fn queue(topic: &str, name: &str) -> QueueFigures {
    QueueFigures {
        topic: topic.as_bytes().into(),
        name: name.as_bytes().into(),
        messages: 5,
        bytes: 300,
        unacknowledged: 2,
        consumers: 3,
        expired: 7,
        redelivered: 1,
    }
}

#[test]
fn every_family_is_exported_in_the_text_format() {
    let mut snapshot = Snapshot::default();
    snapshot.stats.clients = 3;
    snapshot.stats.puts = 7;
    snapshot.stats.drops_by.add(DropReason::BufferFull, 2);
    snapshot.stats.refused.add(RefusalReason::NotConnected, 5);
    snapshot.cluster = Some(ClusterFigures { up: true, forwarded: 4, received: 6, unforwarded: 1 });
    snapshot.queues = vec![queue("mcollective.discovery.agent", "async")];
    snapshot.queue_limits = QueueLimits { max_messages: 10, ..QueueLimits::default() };
    let text = encode(&snapshot);
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert_eq!(value("mc0d_connections"), Some(3.0));
    assert_eq!(value("mc0d_puts_total"), Some(7.0));
    assert_eq!(value("mc0d_drops_total{reason=\"buffer_full\"}"), Some(2.0));
    assert_eq!(value("mc0d_drops_total{reason=\"peer_gone\"}"), Some(0.0));
    assert_eq!(value("mc0d_refused_total{reason=\"not_connected\"}"), Some(5.0));
    assert_eq!(value("mc0d_cluster_up"), Some(1.0));
    assert_eq!(value("mc0d_cluster_forwarded_total"), Some(4.0));
    assert_eq!(value("mc0d_cluster_unforwarded_total"), Some(1.0));
    let q = "{topic=\"mcollective.discovery.agent\",queue=\"async\"}";
    assert_eq!(value(&format!("mc0d_queue_messages{q}")), Some(5.0));
    assert_eq!(value(&format!("mc0d_queue_bytes{q}")), Some(300.0));
    assert_eq!(value(&format!("mc0d_queue_messages_unacknowledged{q}")), Some(2.0));
    assert_eq!(value(&format!("mc0d_queue_consumers{q}")), Some(3.0));
    assert_eq!(value(&format!("mc0d_queue_messages_expired_total{q}")), Some(7.0));
    assert_eq!(value(&format!("mc0d_queue_messages_redelivered_total{q}")), Some(1.0));
    assert_eq!(value("mc0d_queue_max_messages"), Some(10.0));
    assert_eq!(value(&format!("mc0d_build_info{{version=\"{}\"}}", mc0::VERSION)), Some(1.0));
    assert!(value("process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value("process_open_fds").unwrap() > 0.0);
    for family in FAMILIES {
        let name = family.exported_name();
        assert!(samples.iter().any(|(s, _)| s == &name || s.starts_with(&format!("{name}{{"))), "{name} missing");
    }
}

/// Queue names come from clients: quotes, backslashes and line breaks are
/// escaped, bytes that are not UTF-8 replaced, and same-named queues of two
/// topics stay apart.
#[test]
fn queue_labels_are_escaped_and_keep_topics_apart() {
    let mut odd = queue("c", "");
    odd.name = (&b"\xff"[..]).into();
    let snapshot = Snapshot { queues: vec![queue("a", "q\"\n\\"), queue("b", "q\"\n\\"), odd], ..Snapshot::default() };
    let text = encode(&snapshot);
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let depth: Vec<&str> =
        samples.iter().filter(|(s, _)| s.starts_with("mc0d_queue_messages{")).map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        depth,
        [
            r#"mc0d_queue_messages{topic="a",queue="q\"\n\\"}"#,
            r#"mc0d_queue_messages{topic="b",queue="q\"\n\\"}"#,
            "mc0d_queue_messages{topic=\"c\",queue=\"\u{fffd}\"}",
        ]
    );
}

#[test]
fn the_parser_catches_malformed_lines() {
    assert!(parse_exposition("# TYPE a counter\na 1\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na one\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na{b=1} 1\n").is_err());
}

/// Every `mc0d_*` and `process_*` name in `text`.
fn names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["mc0d_", "process_"] {
        for (i, _) in text.match_indices(prefix) {
            if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let end = text[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |e| i + e);
            names.push(text[i..end].to_string());
        }
    }
    names
}

#[test]
fn cluster_figures_are_absent_without_a_cluster() {
    let text = encode(&Snapshot::default());
    assert!(!text.contains("mc0d_cluster_"), "{text}");
    parse_exposition(&text).unwrap();
}

/// Every name `/metrics` can export (the cluster's with `--cluster` only).
fn exported() -> Vec<String> {
    let snapshot =
        Snapshot { cluster: Some(ClusterFigures::default()), queues: vec![queue("t", "q")], ..Snapshot::default() };
    let text = encode(&snapshot);
    parse_exposition(&text).unwrap().into_iter().map(|(s, _)| s.split('{').next().unwrap().to_string()).collect()
}

/// The dashboard and alert rules in docs/, and README's list, use exactly
/// the names `/metrics` exports.
#[test]
fn docs_name_only_exported_metrics_and_readme_lists_them_all() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let exported = exported();
    for file in ["grafana-mc0d.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        let names = names_in(&text);
        assert!(names.len() > 5, "{file}: no metric names found");
        for name in names {
            assert!(exported.contains(&name), "{file} uses {name}, which /metrics does not export");
        }
    }
    let readme = std::fs::read_to_string(docs.join("../README.md")).unwrap();
    let section = readme.split("## Monitoring").nth(1).unwrap().split("\n## ").next().unwrap();
    let listed = names_in(section);
    for name in &exported {
        assert!(listed.contains(name), "README's Monitoring section does not list {name}");
    }
    for name in &listed {
        assert!(exported.contains(name), "README's Monitoring section lists {name}, which is not exported");
    }
}

/// Sends nothing anywhere: the engine of the wake-up test has no client.
struct Nowhere;

impl crate::engine::Transport for Nowhere {
    fn deliver(&mut self, _: &[u8], _: &[Vec<u8>]) -> Result<(), zmq::Error> {
        Ok(())
    }
}

/// A request for a session table makes the loop's wake-up readable (the
/// loop polls it with the ROUTER), so an idle broker answers at once rather
/// than at its next timeout; the request gets the table the loop builds.
#[test]
fn a_session_table_request_wakes_the_loop() {
    use std::os::fd::AsRawFd;
    let hub = Arc::new(Hub::default());
    let (mut publisher, woken) = Publisher::new(hub.clone()).unwrap();
    let config = crate::config::Config { log_level: mc0::log::Level::Error, ..Default::default() };
    let engine = crate::engine::Engine::new(Nowhere, &config);
    let asker = std::thread::spawn({
        let hub = hub.clone();
        move || hub.sessions().built.is_some()
    });
    let mut items = [zmq::PollItem::from_fd(woken.as_raw_fd(), zmq::POLLIN)];
    // Without the wake-up this poll would run its whole 60 s; the request
    // waits 3 s at most, so it would also come back without a table.
    assert_eq!(zmq::poll(&mut items, 60_000).unwrap(), 1, "no wake-up");
    publisher.publish(&engine, &std::collections::HashMap::new(), 0, std::time::Instant::now());
    assert!(asker.join().unwrap(), "the request got no table");
}
