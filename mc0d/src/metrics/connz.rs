//! `/connz`: the session table as JSON, in the spirit of NATS's: sorted
//! (`sort=`), paginated (`offset=`, `limit=`), filtered (`filter=`, a
//! substring of id, name, key or peer). Public keys and names only.

use serde_json::{json, Value};

use super::snapshot::{Session, Sessions};

/// Default and largest page.
pub const DEFAULT_LIMIT: usize = 1024;
pub const MAX_LIMIT: usize = 20_000;

/// The sort keys `sort=` takes; numbers sort descending, text ascending.
pub const SORTS: &[&str] =
    &["id", "name", "peer", "connected", "last_heard", "ttl", "subscriptions", "msgs_in", "msgs_out", "queued"];

/// The query of a `/connz` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sort: &'static str,
    pub offset: usize,
    pub limit: usize,
    pub filter: String,
}

impl Query {
    /// Parses `sort=msgs_in&offset=100&limit=50&filter=web`; an unknown
    /// parameter or sort key, or a bad number, is an error naming it.
    pub fn parse(query: &str) -> Result<Query, String> {
        let mut q = Query { sort: "id", offset: 0, limit: DEFAULT_LIMIT, filter: String::new() };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            let number = |v: &str| v.parse::<usize>().map_err(|_| format!("{name}={v:?} is not a number"));
            match name {
                "sort" => {
                    q.sort = SORTS
                        .iter()
                        .find(|s| **s == value)
                        .ok_or_else(|| format!("sort={value:?} is not one of {}", SORTS.join(", ")))?
                }
                "offset" => q.offset = number(&value)?,
                "limit" => q.limit = number(&value)?.min(MAX_LIMIT),
                "filter" => q.filter = value,
                other => return Err(format!("unknown parameter {other:?} (sort, offset, limit, filter)")),
            }
        }
        Ok(q)
    }
}

/// `%XX` and `+` decoding of a query value.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(s: &Option<std::sync::Arc<str>>) -> &str {
    s.as_deref().unwrap_or("")
}

fn matches(s: &Session, filter: &str) -> bool {
    filter.is_empty()
        || s.id.contains(filter)
        || [&s.name, &s.key, &s.peer].iter().any(|f| f.as_deref().is_some_and(|v| v.contains(filter)))
}

/// The page the query asks for, as JSON.
pub fn render(sessions: &Sessions, query: &Query) -> Value {
    let mut rows: Vec<&Session> = sessions.rows.iter().filter(|s| matches(s, &query.filter)).collect();
    // Numbers descending, text ascending; ties by id. Comparisons borrow:
    // 20,000 rows sort without an allocation per comparison.
    let by_id = |a: &&Session, b: &&Session| a.id.cmp(&b.id);
    match query.sort {
        "name" => rows.sort_by(|a, b| text(&a.name).cmp(text(&b.name)).then_with(|| by_id(a, b))),
        "peer" => rows.sort_by(|a, b| text(&a.peer).cmp(text(&b.peer)).then_with(|| by_id(a, b))),
        "connected" => rows.sort_by(|a, b| b.connected.total_cmp(&a.connected).then_with(|| by_id(a, b))),
        "last_heard" => rows.sort_by(|a, b| b.last_heard.total_cmp(&a.last_heard).then_with(|| by_id(a, b))),
        "ttl" => rows.sort_by(|a, b| b.ttl_ms.cmp(&a.ttl_ms).then_with(|| by_id(a, b))),
        "subscriptions" => rows.sort_by(|a, b| b.subscriptions.cmp(&a.subscriptions).then_with(|| by_id(a, b))),
        "msgs_in" => rows.sort_by(|a, b| b.msgs_in.cmp(&a.msgs_in).then_with(|| by_id(a, b))),
        "msgs_out" => rows.sort_by(|a, b| b.msgs_out.cmp(&a.msgs_out).then_with(|| by_id(a, b))),
        "queued" => rows.sort_by(|a, b| b.queued.cmp(&a.queued).then_with(|| by_id(a, b))),
        _ => rows.sort_by(by_id),
    }
    let matched = rows.len();
    let page: Vec<Value> = rows
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|s| {
            json!({
                "id": s.id, "name": s.name.as_deref(), "key": s.key.as_deref(), "peer": s.peer.as_deref(),
                "connected": s.connected, "last_heard": s.last_heard, "ttl_ms": s.ttl_ms,
                "subscriptions": s.subscriptions, "msgs_in": s.msgs_in, "msgs_out": s.msgs_out,
                "queued": s.queued, "lost": s.lost,
            })
        })
        .collect();
    json!({
        "now": sessions.at,
        "build_ms": sessions.took.as_secs_f64() * 1000.0,
        "total": sessions.rows.len(),
        "matched": matched,
        "offset": query.offset,
        "limit": query.limit,
        "sort": query.sort,
        "filter": query.filter,
        "sessions": page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, msgs_in: u64) -> Session {
        Session {
            id: id.into(),
            name: Some(id.into()),
            key: None,
            peer: Some("127.0.0.1:1".into()),
            connected: 1.0,
            last_heard: 2.0,
            ttl_ms: 60_000,
            subscriptions: 3,
            msgs_in,
            msgs_out: 0,
            queued: 0,
            lost: false,
        }
    }

    #[test]
    fn sorts_filters_and_pages() {
        let sessions =
            Sessions { rows: (0..10).map(|i| session(&format!("node{i}"), i)).collect(), ..Sessions::default() };
        let q = Query::parse("sort=msgs_in&offset=2&limit=3").unwrap();
        let page = render(&sessions, &q);
        let ids: Vec<&str> = page["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["node7", "node6", "node5"]);
        assert_eq!(page["total"], 10);
        let q = Query::parse("filter=node%31").unwrap();
        assert_eq!(render(&sessions, &q)["matched"], 1);
    }

    #[test]
    fn bad_queries_name_the_culprit() {
        assert!(Query::parse("sort=password").unwrap_err().contains("password"));
        assert!(Query::parse("limit=x").unwrap_err().contains("limit"));
        assert!(Query::parse("secret=1").unwrap_err().contains("secret"));
        assert_eq!(Query::parse("limit=999999").unwrap().limit, MAX_LIMIT);
    }
}
