//! MCollective topic names (the table in PROTOCOL.md). Computed here so that
//! every language binding addresses exactly the topics legacy nodes use.

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
}
