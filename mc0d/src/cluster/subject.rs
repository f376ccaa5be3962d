//! Topic → NATS subject: `<cluster name>.<word>.<word>…`, the topic split at
//! every space, each word escaped. Injective over every topic the protocol
//! allows (any bytes, empty included), always a valid NATS publish subject,
//! and readable for MCollective's topics, so an operator can watch with
//! `nats sub 'mc0.mcollective.>'` (see docs/PROTOCOL.md, "Cluster").
//!
//! Escaping: a byte outside the plain set (letters, digits, `- _ : @ / + =
//! ,`) becomes `%XX` (upper-case hex); an empty word (from a leading,
//! trailing or doubled space, or the empty topic) becomes a lone `%`. Every token is thus non-empty and free of `.`,
//! `*`, `>`, whitespace and control bytes, and [`decode`] inverts it.

use std::fmt::Write;

/// Bytes a subject word shows as themselves: what NATS accepts in a token
/// and the usual host, agent and collective names use. Everything else
/// (`.`, `*`, `>`, `%`, whitespace, control and non-ASCII bytes, and the
/// punctuation shells and NATS tools treat specially) is `%XX`.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'@' | b'/' | b'+' | b'=' | b',')
}

/// The subject `topic` travels under in the cluster named `cluster` (a
/// name [`valid_cluster_name`] accepts).
pub fn encode(cluster: &str, topic: &[u8]) -> String {
    let mut subject = String::with_capacity(cluster.len() + 1 + topic.len() + topic.len() / 4);
    subject.push_str(cluster);
    for word in topic.split(|&b| b == b' ') {
        subject.push('.');
        if word.is_empty() {
            subject.push('%');
        }
        for &b in word {
            if plain(b) {
                subject.push(b as char);
            } else {
                let _ = write!(subject, "%{b:02X}");
            }
        }
    }
    subject
}

/// The topic a subject of cluster `cluster` stands for; `None` for a
/// subject [`encode`] does not make.
pub fn decode(cluster: &str, subject: &str) -> Option<Vec<u8>> {
    let rest = subject.strip_prefix(cluster)?.strip_prefix('.')?;
    let mut topic = Vec::with_capacity(rest.len());
    for (i, word) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push(b' ');
        }
        if word == "%" {
            continue;
        }
        let bytes = word.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let b = bytes[at];
            if b == b'%' {
                let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
                let value = u8::from_str_radix(hex, 16).ok()?;
                // Only the canonical form, so decoding stays a function's inverse.
                if plain(value) || hex.bytes().any(|c| c.is_ascii_lowercase()) {
                    return None;
                }
                topic.push(value);
                at += 3;
            } else if plain(b) {
                topic.push(b);
                at += 1;
            } else {
                return None;
            }
        }
        if bytes.is_empty() {
            return None;
        }
    }
    Some(topic)
}

/// A cluster name is the subjects' first token: plain bytes only, so that
/// `<name>.>` catches exactly this cluster's traffic.
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What nats-server accepts as a publish subject: non-empty tokens
    /// separated by `.`, no wildcards, whitespace or control bytes.
    fn valid_publish_subject(s: &str) -> bool {
        !s.is_empty()
            && s.split('.')
                .all(|t| !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b > b' ' && b < 0x7f && b != b'.'))
            && !s.contains('*')
            && !s.contains('>')
    }

    #[test]
    fn usual_topics_stay_readable() {
        assert_eq!(encode("mc0", b"mcollective broadcast agent rpcutil"), "mc0.mcollective.broadcast.agent.rpcutil");
        assert_eq!(
            encode("mc0", b"mcollective nodes node1.example.com"),
            "mc0.mcollective.nodes.node1%2Eexample%2Ecom"
        );
        assert_eq!(encode("mc0", b"mcollective reply mco-1234"), "mc0.mcollective.reply.mco-1234");
        assert_eq!(encode("mc0", b""), "mc0.%");
        assert_eq!(encode("mc0", b" a  "), "mc0.%.a.%.%");
        assert_eq!(encode("x", b"*>%\t\xff"), "x.%2A%3E%25%09%FF");
    }

    #[test]
    fn decode_refuses_what_encode_does_not_make() {
        for bad in ["mc0", "mc0.", "mc0..a", "mc0.a%2", "mc0.a%2e", "mc0.%41", "mc0.a b", "mc1.a", "mc0.a*"] {
            assert_eq!(decode("mc0", bad), None, "{bad}");
        }
    }

    #[test]
    fn cluster_names() {
        assert!(valid_cluster_name("mc0"));
        assert!(valid_cluster_name("site-1"));
        for bad in ["", "a.b", "a b", "*", ">", "é"] {
            assert!(!valid_cluster_name(bad), "{bad}");
        }
    }

    proptest! {
        // decode ∘ encode = id proves encode injective.
        #[test]
        fn injective_and_valid(topic in proptest::collection::vec(any::<u8>(), 0..200)) {
            let subject = encode("mc0", &topic);
            prop_assert!(valid_publish_subject(&subject), "{subject}");
            prop_assert_eq!(decode("mc0", &subject), Some(topic));
        }

        // Biased to the bytes that matter: spaces, dots, escapes, wildcards.
        #[test]
        fn injective_on_tricky_topics(topic in proptest::collection::vec(
            prop_oneof![Just(b' '), Just(b'.'), Just(b'%'), Just(b'*'), Just(b'>'), Just(b'a'), Just(b'2'), Just(b'E')],
            0..40,
        )) {
            let subject = encode("c", &topic);
            prop_assert!(valid_publish_subject(&subject), "{subject}");
            prop_assert_eq!(decode("c", &subject), Some(topic));
        }

        #[test]
        fn distinct_topics_distinct_subjects(a in proptest::collection::vec(any::<u8>(), 0..12),
                                             b in proptest::collection::vec(any::<u8>(), 0..12)) {
            prop_assert_eq!(a == b, encode("mc0", &a) == encode("mc0", &b));
        }
    }
}
