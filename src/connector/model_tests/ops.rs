//! What the model test is made of: the operations a case is a sequence
//! of, how they are drawn, and the session's settings.

use std::sync::Arc;

use proptest::prelude::*;

use crate::connector::config::{Config, Settings};

/// The last one the broker never lets us have (like a role rule).
pub(super) const TOPICS: [&[u8]; 4] = [b"t0", b"t1", b"t2", b"forbidden"];
pub(super) const FORBIDDEN: &[u8] = b"forbidden";
pub(super) const SEND_QUEUE: usize = 3;

#[derive(Debug, Clone, Copy)]
pub(super) enum Verdict {
    Ok,
    /// An ERROR that is not "not connected" (refused PUT or UNSUB, CONNECT
    /// refused by the identity check).
    Error,
    /// Executed, but the answer is lost on the way.
    Drop,
    AccessDenied,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Subscribe(usize),
    Unsubscribe(usize),
    Publish(usize),
    Flush,
    Close,
    /// A ZMTP session with the broker starts on the socket.
    Up,
    /// The connection closes (broker stopped, crashed, restarted).
    Down,
    /// The handshake is refused: our key is not listed.
    KeyRefused,
    /// A TCP connection attempt is refused (the broker is dead).
    Refused,
    /// The socket takes no more frames (high-water mark), or does again.
    Block(bool),
    /// The next socket the session opens fails (its name does not resolve).
    ResolveFails,
    /// The broker handles the oldest command it has received.
    Answer(Verdict),
    /// The broker forgets us (expiry), keeping the connection.
    Forget,
    /// The broker delivers a MESSAGE on one of the topics it has for us.
    Message(usize),
    /// The broker hands us a queue delivery on one of its topics, in the
    /// compact form (true) or the classic one; the application takes it
    /// and acknowledges it.
    Delivery(usize, bool),
    Noop,
    Advance(u64),
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    let topic = 0..TOPICS.len();
    let verdict = prop_oneof![
        6 => Just(Verdict::Ok),
        1 => Just(Verdict::Error),
        2 => Just(Verdict::Drop),
        1 => Just(Verdict::AccessDenied)
    ];
    prop_oneof![
        3 => topic.clone().prop_map(Op::Subscribe),
        2 => topic.clone().prop_map(Op::Unsubscribe),
        4 => topic.clone().prop_map(Op::Publish),
        1 => Just(Op::Flush),
        1 => Just(Op::Close),
        3 => Just(Op::Up),
        1 => Just(Op::Down),
        1 => Just(Op::KeyRefused),
        1 => Just(Op::Refused),
        1 => any::<bool>().prop_map(Op::Block),
        1 => Just(Op::ResolveFails),
        10 => verdict.prop_map(Op::Answer),
        2 => Just(Op::Forget),
        2 => any::<usize>().prop_map(Op::Message),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(n, compact)| Op::Delivery(n, compact)),
        1 => Just(Op::Noop),
        3 => prop_oneof![1u64..300, 300u64..1500, 1500u64..5000].prop_map(Op::Advance),
    ]
}

/// `pool` brokers (1 to 3), tried in a shuffled order.
pub(super) fn settings(retry: bool, pool: usize) -> Arc<Settings> {
    let hosts = ["127.0.0.1:1", "127.0.0.2:2", "[::1]:3"][..pool].join(",");
    let config = Config::from_pairs([
        ("broker.host", hosts.as_str()),
        ("curve", "false"),
        ("identity", "model"),
        ("heartbeat", "1"),
        ("connect_timeout", "2"),
        ("close_timeout", "0.5"),
        ("send_queue", &SEND_QUEUE.to_string()),
        ("reconnect_max", "1"),
        ("connect_retry", if retry { "true" } else { "false" }),
    ])
    .unwrap();
    Arc::new(config.resolve().unwrap())
}
