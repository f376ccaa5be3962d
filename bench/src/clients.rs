//! The bench's clients as mc0 sessions: their identities and keys, DEALERs
//! connected to a broker, the CONNECT/SUB handshake, and the broker's
//! replies classified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::protocol::{self, Limits};

use crate::sockets::{recv, send, Ctx, Sock, ZMQ_DEALER};
use crate::Result;

/// Where a broker listens and how to authenticate it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `tcp://127.0.0.1:PORT`
    pub addr: String,
    /// The broker's CURVE public key; `None` for the NULL mechanism.
    pub server_key: Option<[u8; 32]>,
    /// `--key-seed`: each client's keypair is [`seeded_keys`] for its
    /// identity, as `mc0-bench allowlist` lists them; `None`: fresh keys.
    pub key_seed: Option<u64>,
}

impl Endpoint {
    /// The CURVE keypair of the client with routing id `rid` (none without
    /// CURVE).
    pub fn client_keys(&self, rid: &[u8]) -> Result<Option<zmq::CurveKeyPair>> {
        match (self.server_key, self.key_seed) {
            (None, _) => Ok(None),
            (Some(_), None) => zmq::CurveKeyPair::new().map(Some).map_err(|e| format!("keypair: {e}")),
            (Some(_), Some(seed)) => seeded_keys(seed, identity_of(rid)).map(Some),
        }
    }
}

/// The identity a routing id stands for: its first word, as mc0d reads it.
fn identity_of(rid: &[u8]) -> &str {
    let first = rid.split(|b| *b == b' ').next().unwrap_or_default();
    std::str::from_utf8(first).unwrap_or_default()
}

/// The keypair of `identity` in a run with `--key-seed seed`: derived, so
/// that the tool, its worker processes and `mc0-bench allowlist` agree on
/// it without exchanging keys. As secret as the seed, and meant for
/// benchmarks only.
pub fn seeded_keys(seed: u64, identity: &str) -> Result<zmq::CurveKeyPair> {
    // FNV-1a over the identity, then SplitMix64 to fill the secret key.
    let mut state =
        identity.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut secret = [0u8; 32];
    for chunk in secret.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    let pair = mc0::keys::KeyPair::from_secret(secret)?;
    Ok(zmq::CurveKeyPair { public_key: pair.public, secret_key: pair.secret })
}

/// Identities (first word of the routing id) of the scenarios' clients:
/// numbered ones are `<prefix>-<i>`.
pub const ACK_CLIENT: &str = "bench-ack";
pub const SUBSCRIBER: &str = "bench-sub";
pub const NODE: &str = "bench-node";
pub const PUBLISHER: &str = "bench-pub";
pub const REQUEST_CLIENT: &str = "bench-client";
pub const CONNS_PUBLISHER: &str = "bench-conns-pub";
pub const PROBE: &str = "bench-probe";

/// Identity `i` of a numbered kind.
pub fn numbered(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// Every identity a run with up to `n` clients of each kind uses: what an
/// allowlist for `--key-seed` must list.
pub fn identities(n: usize) -> Vec<String> {
    let numbered = [ACK_CLIENT, SUBSCRIBER, NODE].into_iter().flat_map(|p| (0..n).map(move |i| numbered(p, i)));
    numbered.chain([PUBLISHER, REQUEST_CLIENT, CONNS_PUBLISHER, PROBE].map(String::from)).collect()
}

/// The allowlist (`mc0d --authorized-keys` file form: `KEY IDENTITY`
/// lines) of the keys `--key-seed seed` gives up to `n` clients of each
/// kind.
pub fn allowlist(seed: u64, n: usize) -> Result<String> {
    let mut text = String::new();
    for identity in identities(n) {
        let keys = seeded_keys(seed, &identity)?;
        text.push_str(&format!("{} {identity}\n", mc0::keys::key_to_z85(&keys.public_key)));
    }
    Ok(text)
}

/// A DEALER with its CURVE keypair ([`Endpoint::client_keys`]), connected to `ep`.
pub fn dealer(ctx: &Arc<Ctx>, ep: &Endpoint, identity: &[u8]) -> Result<Sock> {
    let keys = ep.client_keys(identity)?;
    dealer_with_keys(ctx, ep, identity, keys.as_ref())
}

pub fn dealer_with_keys(
    ctx: &Arc<Ctx>,
    ep: &Endpoint,
    identity: &[u8],
    keys: Option<&zmq::CurveKeyPair>,
) -> Result<Sock> {
    let s = ctx.socket(ZMQ_DEALER)?;
    let e = |what: &str, err: zmq::Error| format!("{what}: {err}");
    if !identity.is_empty() {
        s.set_identity(identity).map_err(|x| e("identity", x))?;
    }
    // An unbounded receive queue: a generator thread that falls behind must
    // show up as time, never as back-pressure that makes a broker drop. Sends
    // keep the default high-water mark so publishers block instead of
    // buffering a whole run in memory.
    s.set_rcvhwm(0).map_err(|x| e("rcvhwm", x))?;
    if let (Some(server), Some(keys)) = (ep.server_key, keys) {
        s.set_curve_serverkey(&server).map_err(|x| e("curve server key", x))?;
        s.set_curve_publickey(&keys.public_key).map_err(|x| e("curve public key", x))?;
        s.set_curve_secretkey(&keys.secret_key).map_err(|x| e("curve secret key", x))?;
    }
    s.connect(&ep.addr).map_err(|x| format!("connect {}: {x}", ep.addr))?;
    Ok(s)
}

/// Sends `command` with the frames [`protocol::Command::to_frames`] builds
/// (the handshakes; the measured loops build theirs in place, without
/// allocating).
pub fn send_command(sock: &zmq::Socket, command: &protocol::Command<'_>) -> zmq::Result<()> {
    let frames = command.to_frames();
    send(sock, &frames.iter().map(Vec::as_slice).collect::<Vec<_>>(), 0)
}

/// What a broker-to-client message is, as [`protocol::Reply`] parses it.
/// Frames start at the delimiter, as a DEALER receives them.
pub enum Reply<'a> {
    Ok(&'a [u8]),
    /// `body` is the first body frame (the bench sends one).
    Message {
        topic: &'a [u8],
        body: &'a [u8],
        headers: Vec<(&'a [u8], &'a [u8])>,
    },
    Noop,
    Error(String),
    /// Not a reply the protocol knows: what is wrong with it.
    Other(String),
}

/// The frames of a received message as byte slices, for [`classify`].
pub fn views(frames: &[zmq::Message]) -> Vec<&[u8]> {
    frames.iter().map(|m| &m[..]).collect()
}

/// Parses a broker-to-client message with [`protocol::Reply::parse`].
pub fn classify<'a>(frames: &'a [&'a [u8]]) -> Reply<'a> {
    match protocol::Reply::parse(frames, &Limits::default()) {
        Ok(protocol::Reply::Ok { id }) => Reply::Ok(id),
        Ok(protocol::Reply::Noop) => Reply::Noop,
        Ok(protocol::Reply::Message { topic, headers, body }) => {
            Reply::Message { topic, body: body.first().copied().unwrap_or_default(), headers }
        }
        Ok(protocol::Reply::Error { message, .. }) => Reply::Error(String::from_utf8_lossy(message).into_owned()),
        Err(e) => Reply::Other(format!("malformed reply: {e}")),
    }
}

/// The sender stamps a MESSAGE can carry (mc0d's, the raw loop's
/// `--stamp`), indexed by [`stamp_of`].
pub const STAMPS: [&str; 4] = ["no stamp", "stamp SENDER", "stamp SENDER-KEY", "stamp SENDER + SENDER-KEY"];

/// Which sender stamp a MESSAGE (its headers but TOPIC) carries, as an
/// index into [`STAMPS`].
pub fn stamp_of(headers: &[(&[u8], &[u8])]) -> usize {
    let has = |h: &str| usize::from(header(headers, h).is_some());
    has(protocol::SENDER) | has(protocol::SENDER_KEY) << 1
}

/// Value of header `name` among a MESSAGE's headers.
pub fn header<'a>(headers: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| *v)
}

pub const COLLECTIVE: &str = "mcollective";
/// The protocol version the bench's clients announce.
pub const VERSION: &[u8] = protocol::PROTOCOL_VERSION.as_bytes();

/// Drives CONNECT (and one SUB to the client's topics) with acknowledgements
/// over many clients, at most `window` of them in flight, until every client
/// is registered or `deadline` passes. `make` creates client `i`'s socket
/// (so socket creation and the TCP/CURVE handshakes count in the time).
/// With `heartbeat`, registered clients send NOOP after that long of
/// silence while the others are still connecting (a long connect phase
/// must not let the first clients expire).
/// Returns the sockets, when each last sent something (heartbeats are due
/// from then) and the time it all took.
pub fn handshake(
    n: usize,
    window: usize,
    ttl_ms: u64,
    topics: &dyn Fn(usize) -> Vec<Vec<u8>>,
    make: &mut dyn FnMut(usize) -> Result<Sock>,
    deadline: Instant,
    heartbeat: Option<Duration>,
) -> Result<(Vec<Sock>, Vec<Instant>, Duration)> {
    use std::cmp::Reverse;
    let start = Instant::now();
    let mut due: std::collections::BinaryHeap<Reverse<(Instant, usize)>> = std::collections::BinaryHeap::new();
    let mut sent_at = vec![start; n];
    let mut socks: Vec<Option<Sock>> = (0..n).map(|_| None).collect();
    // Acks still expected per client: CONNECT, and SUB when it has topics.
    let mut pending: Vec<u8> = vec![0; n];
    let mut in_flight: Vec<usize> = Vec::with_capacity(window);
    let mut next = 0;
    let mut done = 0;
    let mut frames = Vec::new();
    while done < n {
        while in_flight.len() < window.max(1) && next < n {
            let s = make(next)?;
            let connect = protocol::Command::Connect { version: VERSION, ttl_ms, id: Some(b"c") };
            send_command(&s, &connect).map_err(|e| format!("send CONNECT: {e}"))?;
            pending[next] = 1;
            let topics = topics(next);
            if !topics.is_empty() {
                let topics = topics.iter().map(Vec::as_slice).collect();
                send_command(&s, &protocol::Command::Sub { id: Some(b"s"), queue: None, compact: false, topics })
                    .map_err(|e| format!("send SUB: {e}"))?;
                pending[next] = 2;
            }
            socks[next] = Some(s);
            sent_at[next] = Instant::now();
            in_flight.push(next);
            next += 1;
        }
        if let Some(interval) = heartbeat {
            while let Some(Reverse((when, i))) = due.peek().copied() {
                if when > Instant::now() {
                    break;
                }
                due.pop();
                let s = socks[i].as_ref().unwrap();
                send(s, &[b"", b"NOOP"], zmq::DONTWAIT).map_err(|e| format!("heartbeat: {e}"))?;
                sent_at[i] = Instant::now();
                due.push(Reverse((sent_at[i] + interval, i)));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("handshake: only {done} of {n} clients registered before the deadline"));
        }
        let next_beat = due.peek().map(|Reverse((w, _))| w.saturating_duration_since(now)).unwrap_or(deadline - now);
        let timeout = (deadline - now).min(next_beat).as_millis().min(1000) as i64;
        let ready: Vec<bool> = {
            let mut items: Vec<zmq::PollItem> =
                in_flight.iter().map(|&i| socks[i].as_ref().unwrap().as_poll_item(zmq::POLLIN)).collect();
            zmq::poll(&mut items, timeout).map_err(|e| format!("poll: {e}"))?;
            items.iter().map(|it| it.is_readable()).collect()
        };
        let mut finished = Vec::new();
        for (slot, &i) in in_flight.iter().enumerate() {
            if !ready[slot] {
                continue;
            }
            let s = socks[i].as_ref().unwrap();
            while pending[i] > 0 {
                match recv(s, &mut frames, zmq::DONTWAIT) {
                    Ok(n) => match classify(&views(&frames[..n])) {
                        Reply::Ok(_) => pending[i] -= 1,
                        Reply::Noop => {}
                        Reply::Error(m) => return Err(format!("client {i}: broker refused the handshake: {m}")),
                        Reply::Message { .. } => {}
                        Reply::Other(m) => return Err(format!("client {i}: {m}")),
                    },
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
            if pending[i] == 0 {
                finished.push(slot);
            }
        }
        for slot in finished.into_iter().rev() {
            let i = in_flight.swap_remove(slot);
            if let Some(interval) = heartbeat {
                due.push(Reverse((sent_at[i] + interval, i)));
            }
            done += 1;
        }
    }
    Ok((socks.into_iter().map(|s| s.unwrap()).collect(), sent_at, start.elapsed()))
}

/// The TTL of clients that never heartbeat (ack, fanout, request): long
/// enough that the broker neither expires them while thousands of others
/// are still connecting on a loaded machine, nor heartbeats them during a
/// run (which would add traffic the measurement is not about).
const SILENT_CLIENT_TTL_MS: u64 = 600_000;

/// `n` clients with fresh keys and identity `name(i)`, each CONNECTed with
/// [`SILENT_CLIENT_TTL_MS`] and, given `topic`, SUBscribed to it; at most
/// 200 handshakes in flight.
pub fn clients(
    ctx: &Arc<Ctx>,
    ep: &Endpoint,
    n: usize,
    name: &dyn Fn(usize) -> String,
    topic: Option<&[u8]>,
    deadline: Instant,
) -> Result<Vec<Sock>> {
    clients_with_topics(ctx, ep, n, name, &|_| topic.into_iter().map(<[u8]>::to_vec).collect(), deadline)
}

/// As [`clients`], client `i` SUBscribed to `topics(i)`.
pub fn clients_with_topics(
    ctx: &Arc<Ctx>,
    ep: &Endpoint,
    n: usize,
    name: &dyn Fn(usize) -> String,
    topics: &dyn Fn(usize) -> Vec<Vec<u8>>,
    deadline: Instant,
) -> Result<Vec<Sock>> {
    let make = &mut |i| dealer(ctx, ep, name(i).as_bytes());
    let (socks, _, _) = handshake(n, n.min(200), SILENT_CLIENT_TTL_MS, topics, make, deadline, None)?;
    Ok(socks)
}

/// One client, as [`clients`].
pub fn client(ctx: &Arc<Ctx>, ep: &Endpoint, name: &str, topic: Option<&[u8]>, deadline: Instant) -> Result<Sock> {
    let mut socks = clients(ctx, ep, 1, &|_| name.to_string(), topic, deadline)?;
    Ok(socks.pop().expect("handshake returns every client"))
}

/// Deals `items` round-robin into one group per thread: at most `threads`
/// groups, none empty unless `items` is.
pub fn spread<T>(items: Vec<T>, threads: usize) -> Vec<Vec<T>> {
    let threads = threads.clamp(1, items.len().max(1));
    let mut groups: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % threads].push(item);
    }
    groups
}

/// Sends DISCONNECT on each socket without waiting, so brokers can drop state.
pub fn disconnect_all(socks: &[Sock]) {
    for s in socks {
        let _ = send(s, &[b"", b"DISCONNECT"], zmq::DONTWAIT);
    }
}
