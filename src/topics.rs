//! MCollective topic names (the table in PROTOCOL.md), and identities.
//! Computed here so that every language binding addresses exactly the
//! topics legacy nodes use, and parsed back ([`shape`]) by the broker's
//! access rules with the same definitions.

/// Requests to an agent, broadcast: `<collective> <agent>`.
pub fn agent(collective: &str, agent: &str) -> String {
    format!("{collective} {agent}")
}

/// Directed requests to one node: `<collective> nodes <identity>`. A node
/// subscribes to its own; a client PUTs once per discovered node.
pub fn node(collective: &str, identity: &str) -> String {
    format!("{collective} nodes {identity}")
}

/// Replies to a client: `<collective> reply <identity> <pid>`.
pub fn reply(collective: &str, identity: &str, pid: u32) -> String {
    format!("{collective} reply {identity} {pid}")
}

/// Whether `name` can be an MCollective identity: MCollective's own rule,
/// `/\A[\w.\-]+\z/` (Ruby's `\w` is ASCII letters, digits and `_`). An
/// identity is one space-free token, so routing ids (`"<identity> <pid> ..."`)
/// and node topics are unambiguous.
pub fn is_identity(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What a topic addresses, by its shape (see [`shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'a> {
    /// `<collective> <agent>`: broadcast requests to an agent.
    Agent { collective: &'a [u8], agent: &'a [u8] },
    /// `<collective> nodes <identity>`: directed requests to one node.
    Node { collective: &'a [u8], identity: &'a [u8] },
    /// `<collective> reply <identity> ...`: replies to one client.
    Reply { collective: &'a [u8], identity: &'a [u8] },
    /// Any other topic: not one MCollective uses.
    Other,
}

/// Parses a topic back into what it addresses. Errs towards the addressed
/// forms: everything after `nodes ` is the identity (so a topic with extra
/// words names no identity a key can hold), and `reply` takes the word after
/// it whatever follows.
pub fn shape(topic: &[u8]) -> Shape<'_> {
    let mut words = topic.splitn(3, |b| *b == b' ');
    let (Some(collective), Some(word)) = (words.next(), words.next()) else { return Shape::Other };
    if collective.is_empty() || word.is_empty() {
        return Shape::Other;
    }
    match (word, words.next()) {
        (_, None) => Shape::Agent { collective, agent: word },
        (b"nodes", Some(identity)) => Shape::Node { collective, identity },
        (b"reply", Some(rest)) => {
            Shape::Reply { collective, identity: rest.split(|b| *b == b' ').next().unwrap_or_default() }
        }
        _ => Shape::Other,
    }
}

/// The topic a connector subscribes to for `(agent, type, collective)` as
/// MCollective's `subscribe` calls it: `type` is `broadcast`, `directed` or
/// `reply`. `None` for a type this transport has no topic for.
pub fn for_subscription(kind: &str, agent_name: &str, collective: &str, identity: &str, pid: u32) -> Option<String> {
    match kind {
        "broadcast" => Some(agent(collective, agent_name)),
        "directed" => Some(node(collective, identity)),
        "reply" => Some(reply(collective, identity, pid)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_legacy_connector() {
        assert_eq!(agent("mcollective", "rpcutil"), "mcollective rpcutil");
        assert_eq!(node("mcollective", "web1.example.com"), "mcollective nodes web1.example.com");
        assert_eq!(reply("mcollective", "admin", 4242), "mcollective reply admin 4242");
        assert_eq!(for_subscription("directed", "x", "c", "n1", 1).unwrap(), "c nodes n1");
        assert_eq!(for_subscription("broadcast", "puppet", "c", "n1", 1).unwrap(), "c puppet");
        assert_eq!(for_subscription("reply", "x", "c", "me", 7).unwrap(), "c reply me 7");
        assert_eq!(for_subscription("queue", "x", "c", "me", 7), None);
    }

    #[test]
    fn identities_follow_mcollectives_rule() {
        for good in ["web1", "web1.example.com", "node_2", "a-b", "X"] {
            assert!(is_identity(good), "{good}");
        }
        for bad in ["", "web 1", "web1\n", "caf\u{e9}", "a/b", "alice (admin)", "a\tb"] {
            assert!(!is_identity(bad), "{bad:?}");
        }
    }

    #[test]
    fn shapes_are_parsed_back_from_the_names_built_here() {
        fn s(t: &str) -> Shape<'_> {
            shape(t.as_bytes())
        }
        assert_eq!(s(&agent("mcollective", "rpcutil")), Shape::Agent { collective: b"mcollective", agent: b"rpcutil" });
        assert_eq!(s(&node("c", "web1")), Shape::Node { collective: b"c", identity: b"web1" });
        assert_eq!(s(&reply("c", "admin", 42)), Shape::Reply { collective: b"c", identity: b"admin" });
        // An agent called "nodes" or "reply" is still an agent topic.
        assert_eq!(s("c nodes"), Shape::Agent { collective: b"c", agent: b"nodes" });
        assert_eq!(s("c nodes a b"), Shape::Node { collective: b"c", identity: b"a b" });
        assert_eq!(s("c reply x"), Shape::Reply { collective: b"c", identity: b"x" });
        assert_eq!(s("c nodes "), Shape::Node { collective: b"c", identity: b"" });
        for other in ["t", "", " a", "a ", "c rpcutil extra", "c  x"] {
            assert_eq!(s(other), Shape::Other, "{other:?}");
        }
    }
}
