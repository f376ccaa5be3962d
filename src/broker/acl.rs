//! Who may do what, with an allowlist (`mc0d --authorized-keys`): the name
//! a key is listed under is the MCollective identity it may act as, and its
//! role (node, client, or either) decides which topics it may publish to.
//! Pure functions over one command each, constant time, no state: the
//! engine asks them on every CONNECT, SUB and PUT of a listed key.
//!
//! The rules, on the topic shapes of [`crate::topics::shape`]:
//! - CONNECT: the routing id is the identity, or starts with `"<identity> "`
//!   (legacy connectors and ours use `"<identity> <pid> ..."`). A key listed
//!   without a name has no identity and cannot connect.
//! - SUB to `<c> nodes <id>` or `<c> reply <id> ...`: only the key of `<id>`.
//! - PUT, by role: a node key only to reply topics and to the agents the
//!   operator allows nodes to address (`--node-publish-agents`, e.g.
//!   MCollective's `registration`); a client key to anything but reply
//!   topics; a key of either role (a flat list) to anything.

use std::collections::HashSet;
use std::fmt;

use crate::topics::{shape, Shape};

/// What a key is listed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Listed without a role (a flat list): node or client.
    Any,
    /// An MCollective server (`nodes/` or `node` in the file form).
    Node,
    /// An MCollective client such as `mco` (`clients/` or `client`).
    Client,
}

impl Role {
    /// The role a key listed both ways holds.
    pub fn merge(self, other: Role) -> Role {
        if self == other {
            self
        } else {
            Role::Any
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Any => "node or client",
            Role::Node => "node",
            Role::Client => "client",
        })
    }
}

/// The key a command comes from, as the allowlist has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor<'a> {
    /// The name the key is listed under; `None` for a key listed without one.
    pub identity: Option<&'a str>,
    pub role: Role,
}

/// What the operator allows beyond the fixed rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Agents node keys may publish requests to (`<c> <agent>`).
    pub node_agents: HashSet<Vec<u8>>,
}

impl Policy {
    pub fn new<S: AsRef<str>>(node_agents: impl IntoIterator<Item = S>) -> Policy {
        Policy { node_agents: node_agents.into_iter().map(|a| a.as_ref().as_bytes().to_vec()).collect() }
    }

    fn node_agents_text(&self) -> String {
        let mut agents: Vec<String> =
            self.node_agents.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        agents.sort();
        if agents.is_empty() {
            "none".into()
        } else {
            agents.join(", ")
        }
    }
}

/// Why a command was refused: the text for `ERROR MESSAGE`, written for the
/// operator of the refused node (it names the identity tried and the name
/// the key is listed under).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial(pub String);

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// The identity a routing id claims: its first word.
fn claimed(rid: &[u8]) -> &[u8] {
    rid.split(|b| *b == b' ').next().unwrap_or_default()
}

/// May `actor` open a session under routing id `rid`?
pub fn check_connect(actor: Actor<'_>, rid: &[u8]) -> Result<(), Denial> {
    let Some(identity) = actor.identity else {
        return Err(Denial(format!(
            "identity check failed: this key is listed without a name in the broker's authorized keys (or under \
             one that is not an MCollective identity, which the broker logs), so it cannot act as any MCollective \
             identity (routing id {}); list it as \"<key> <identity>\" or as <identity>.public",
            quoted(rid)
        )));
    };
    let rest = rid.strip_prefix(identity.as_bytes());
    if matches!(rest, Some([] | [b' ', ..])) {
        return Ok(());
    }
    Err(Denial(format!(
        "identity check failed: routing id {} claims the identity {}, but this key is listed as \"{identity}\" \
         in the broker's authorized keys (a key may only act as the identity it is listed under)",
        quoted(rid),
        quoted(claimed(rid))
    )))
}

/// May `actor` subscribe to `topic`?
pub fn check_subscribe(actor: Actor<'_>, topic: &[u8]) -> Result<(), Denial> {
    let owner = match shape(topic) {
        Shape::Node { identity, .. } | Shape::Reply { identity, .. } => identity,
        Shape::Agent { .. } | Shape::Other => return Ok(()),
    };
    if actor.identity.is_some_and(|me| me.as_bytes() == owner) {
        return Ok(());
    }
    Err(Denial(format!(
        "identity check failed: only the key listed as {} may subscribe to {}; this key is listed as {}",
        quoted(owner),
        quoted(topic),
        actor.identity.map_or_else(|| "nothing (no name)".to_string(), |me| format!("\"{me}\""))
    )))
}

/// May `actor` publish to `topic`?
pub fn check_publish(actor: Actor<'_>, topic: &[u8], policy: &Policy) -> Result<(), Denial> {
    let as_listed = || format!("{} {}", actor.role, quoted(actor.identity.unwrap_or("").as_bytes()));
    match (actor.role, shape(topic)) {
        (Role::Any, _) => Ok(()),
        (Role::Client, Shape::Reply { .. }) => Err(Denial(format!(
            "role check failed: {} is a reply topic and this key is listed as {}; only node keys send replies",
            quoted(topic),
            as_listed()
        ))),
        (Role::Client, _) | (Role::Node, Shape::Reply { .. }) => Ok(()),
        (Role::Node, Shape::Agent { agent, .. }) if policy.node_agents.contains(agent) => Ok(()),
        (Role::Node, _) => Err(Denial(format!(
            "role check failed: this key is listed as {}, which may publish only to reply topics and to the \
             agents of --node-publish-agents ({}), not to {}",
            as_listed(),
            policy.node_agents_text(),
            quoted(topic)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(identity: &str, role: Role) -> Actor<'_> {
        Actor { identity: Some(identity), role }
    }

    #[test]
    fn connect_needs_the_listed_identity_as_the_routing_ids_first_word() {
        let a = actor("nodeA", Role::Any);
        for ok in [&b"nodeA"[..], b"nodeA 4242 1", b"nodeA 4242 #<Thread:0x01 run>"] {
            assert_eq!(check_connect(a, ok), Ok(()), "{ok:?}");
        }
        for bad in [&b"nodeB 4242 1"[..], b"nodeAB 1 1", b"nodeA-1 1", b"", b"\x00\x01\x02", b" nodeA"] {
            assert!(check_connect(a, bad).is_err(), "{bad:?}");
        }
        let text = check_connect(a, b"nodeB 42 1").unwrap_err().0;
        assert!(text.contains("\"nodeB\"") && text.contains("\"nodeA\"") && text.contains("nodeB 42 1"), "{text}");
        let text = check_connect(Actor { identity: None, role: Role::Any }, b"x 1").unwrap_err().0;
        assert!(text.contains("without a name"), "{text}");
    }

    #[test]
    fn node_and_reply_topics_only_for_their_owner() {
        let (a, b) = (actor("nodeA", Role::Node), actor("admin", Role::Client));
        assert_eq!(check_subscribe(a, b"mcollective nodes nodeA"), Ok(()));
        assert_eq!(check_subscribe(a, b"mcollective rpcutil"), Ok(()));
        assert_eq!(check_subscribe(a, b"anything"), Ok(()));
        assert_eq!(check_subscribe(b, b"mcollective reply admin 4242"), Ok(()));
        let text = check_subscribe(a, b"mcollective nodes nodeB").unwrap_err().0;
        assert!(text.contains("\"nodeB\"") && text.contains("\"nodeA\""), "{text}");
        assert!(check_subscribe(a, b"mcollective reply admin 4242").is_err());
        assert!(check_subscribe(a, b"mcollective nodes nodeA extra").is_err());
        let nameless = Actor { identity: None, role: Role::Any };
        assert!(check_subscribe(nameless, b"c nodes x").is_err());
        assert_eq!(check_subscribe(nameless, b"c rpcutil"), Ok(()));
    }

    #[test]
    fn publishing_by_role() {
        let policy = Policy::new(["registration"]);
        let none = Policy::default();
        let node = actor("nodeA", Role::Node);
        let client = actor("admin", Role::Client);
        let either = actor("x", Role::Any);
        let topics: [&[u8]; 5] =
            [b"c rpcutil", b"c nodes nodeB", b"c reply admin 1", b"c registration", b"other topic words"];
        for t in topics {
            assert_eq!(check_publish(either, t, &none), Ok(()), "{t:?}");
        }
        assert_eq!(check_publish(client, b"c rpcutil", &none), Ok(()));
        assert_eq!(check_publish(client, b"c nodes nodeB", &none), Ok(()));
        assert_eq!(check_publish(client, b"other", &none), Ok(()));
        let text = check_publish(client, b"c reply admin 1", &none).unwrap_err().0;
        assert!(text.contains("reply topic") && text.contains("client \"admin\""), "{text}");
        assert_eq!(check_publish(node, b"c reply admin 1", &none), Ok(()));
        for t in [&b"c rpcutil"[..], b"c nodes nodeB", b"other", b"c registration"] {
            assert!(check_publish(node, t, &none).is_err(), "{t:?}");
        }
        assert_eq!(check_publish(node, b"c registration", &policy), Ok(()));
        let text = check_publish(node, b"c rpcutil", &policy).unwrap_err().0;
        assert!(text.contains("(registration)") && text.contains("node \"nodeA\""), "{text}");
    }

    #[test]
    fn roles_merge_to_either() {
        assert_eq!(Role::Node.merge(Role::Node), Role::Node);
        assert_eq!(Role::Node.merge(Role::Client), Role::Any);
        assert_eq!(Role::Any.merge(Role::Client), Role::Any);
    }
}
