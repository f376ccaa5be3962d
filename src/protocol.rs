//! The mc0 wire protocol (`PROTOCOL.md`) as pure values: frames in, frames
//! out, no sockets and no I/O. The broker and the connector both speak in the
//! typed [`Command`] and [`Reply`] values defined here, so this module is the
//! only place that knows the frame layout.
//!
//! Parsing borrows from the received frames (no copies on the broker's hot
//! path); building produces owned frames ready to hand to a socket.

use std::fmt;
use std::ops::RangeInclusive;

/// Protocol version this implementation speaks in CONNECT.
pub const PROTOCOL_VERSION: &str = "0.3";

/// The TCP port brokers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 61616;

/// TTL a CONNECT without a TTL header gets: the legacy connectors' default.
pub const DEFAULT_TTL_MS: u64 = 30_000;

/// The heartbeat TTLs (ms) a CONNECT may ask for: 1 ms to 24 h.
pub const TTL_RANGE_MS: RangeInclusive<u64> = 1..=86_400_000;

/// The heartbeat contract both sides keep for a TTL (docs/PROTOCOL.md).
pub mod heartbeat {
    use std::time::Duration;

    /// Fraction of the TTL after which a side that has sent nothing sends NOOP.
    pub const NOOP_AFTER: f64 = 0.95;
    /// Fraction of the TTL of silence after which a side gives the other up.
    pub const DEAD_AFTER: f64 = 1.05;

    /// Each side sends NOOP once it has sent nothing else for this long.
    pub fn noop_after(ttl: Duration) -> Duration {
        ttl.mul_f64(NOOP_AFTER)
    }

    /// Each side gives the other up once it has heard nothing for this long:
    /// the broker forgets the client, the connector reconnects.
    pub fn dead_after(ttl: Duration) -> Duration {
        ttl.mul_f64(DEAD_AFTER)
    }
}

/// Text of the `ERROR MESSAGE` the broker sends for a command (other than
/// CONNECT) from a client it does not know, typically after a broker restart.
/// Our connector reacts to it by re-handshaking at once; legacy connectors
/// only log it and recover through their heartbeat.
pub const NOT_CONNECTED: &str = "not connected: send CONNECT first";

/// Text of the `ERROR MESSAGE` a broker with a client-key allowlist sends for
/// a message from a connection whose key is not (or no longer) authorized,
/// and, without an ID, to a session it drops when the key is revoked. Our
/// connector reports it as "broker refused our key".
pub const ACCESS_DENIED: &str = "access denied: key not authorized";

/// Text of the `ERROR MESSAGE` mc0d sends for a message whose routing id
/// belongs to a live session opened with another CURVE key. The session
/// is left as it was.
pub const IMPOSTOR: &str = "routing id refused: it belongs to the live session of another key";

/// MESSAGE header mc0d sets, with an allowlist, to the name the publisher's
/// key is listed under: the publisher's authenticated MCollective
/// identity. Reserved (no `X-`): a copy in a PUT is removed, not forwarded.
pub const SENDER: &str = "SENDER";

/// MESSAGE header mc0d sets to the publisher's CURVE public key (Z85) when
/// it has no name for it (no allowlist, or a key listed without a name):
/// a MESSAGE carries `SENDER` or `SENDER-KEY`, never both. Reserved like
/// [`SENDER`].
pub const SENDER_KEY: &str = "SENDER-KEY";

/// PUT header: the message's time-to-live in milliseconds, relative (so
/// clock skew between hosts does not matter). A broker never delivers a
/// stored (queued) message past it, and carries the time left in the
/// MESSAGEs of queued messages; libmc0 never sends a PUT whose time ran
/// out in its send queue. Not `TTL`, which CONNECT uses for the heartbeat.
/// Legacy brokers copy it and legacy connectors ignore it.
pub const EXPIRES_IN: &str = "EXPIRES-IN";

/// SUB/UNSUB header: subscribe as a member of the named queue of each
/// topic (competing consumers; the broker keeps the topic's messages for
/// the queue while no member is connected). MESSAGE header of a delivery
/// from a queue: the queue's name.
pub const QUEUE: &str = "QUEUE";

/// MESSAGE header of a delivery from a queue: the id (decimal) the
/// consumer acknowledges with [`Command::Ack`].
pub const DELIVERY: &str = "DELIVERY";

/// MESSAGE header of a delivery from a queue that was delivered before and
/// not acknowledged (its consumer went away): value `1`.
pub const REDELIVERED: &str = "REDELIVERED";

/// SUB header of a queue membership, value `1`: the session asks for the
/// compact delivery form, whose MESSAGE carries [`QUEUE_DELIVERY`] instead
/// of [`QUEUE`] and [`DELIVERY`] (two frames less, each a CURVE box in
/// both processes). Any other value, and the header on a plain SUB, is
/// ignored, as a broker that does not know it ignores it: asking is always
/// safe, and a compact delivery is the proof that the broker also reads
/// [`Command::Ack`]'s id lists.
pub const COMPACT: &str = "COMPACT";

/// MESSAGE header of a delivery in the compact form (see [`COMPACT`]): the
/// delivery id, one space and the queue's name (see [`queue_delivery`]).
pub const QUEUE_DELIVERY: &str = "QUEUE-DELIVERY";

/// The time-to-lives (ms) [`EXPIRES_IN`] may carry: 1 ms to 30 days.
pub const EXPIRES_IN_RANGE_MS: RangeInclusive<u64> = 1..=30 * 86_400_000;

/// Upper bounds on what a single message may contain. A message over any of
/// them is rejected with [`ProtocolError`] before it is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single frame in bytes (bodies included).
    pub max_frame_size: usize,
    /// Most frames in one message, delimiter included.
    pub max_frames: usize,
    /// Most key/value header pairs in one message.
    pub max_headers: usize,
    /// Longest topic name in bytes.
    pub max_topic_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_frame_size: 64 * 1024 * 1024, max_frames: 4096, max_headers: 64, max_topic_len: 1024 }
    }
}

/// Why a message could not be parsed. Every variant names the culprit so it
/// can be sent back verbatim in an `ERROR MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// No frames at all.
    Empty,
    /// The first frame was not the empty delimiter a DEALER puts in front.
    MissingDelimiter,
    /// Nothing (or an empty frame) where the verb should be.
    NoVerb,
    /// The verb is not an upper-case ASCII word.
    BadVerb(String),
    /// A header key without a value.
    OddHeaders,
    /// A header key that is empty where a key was expected is the body
    /// separator; this is a key that is not printable ASCII.
    BadHeaderName(String),
    FrameTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    TooManyFrames {
        count: usize,
        limit: usize,
    },
    TooManyHeaders {
        count: usize,
        limit: usize,
    },
    TopicTooLong {
        size: usize,
        limit: usize,
    },
    /// A verb this side does not know.
    UnknownVerb(String),
    /// A header the verb requires is absent.
    MissingHeader {
        verb: &'static str,
        header: &'static str,
    },
    /// A header's value is not what the verb requires.
    BadHeaderValue {
        header: &'static str,
        value: String,
    },
    /// A verb that takes body frames got none, or one that takes none got some.
    BadBody {
        verb: &'static str,
        reason: &'static str,
    },
    /// An ACK naming more delivery ids than a message may have frames: the
    /// same bound for both forms of the list.
    TooManyDeliveries {
        limit: usize,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            Empty => write!(f, "malformed message: no frames"),
            MissingDelimiter => write!(f, "malformed message: missing empty delimiter frame"),
            NoVerb => write!(f, "malformed message: no verb"),
            BadVerb(v) => write!(f, "malformed message: verb {v:?} is not an upper-case ASCII word"),
            OddHeaders => write!(f, "malformed message: header key without a value"),
            BadHeaderName(k) => write!(f, "malformed message: header name {k:?} is not printable ASCII"),
            FrameTooLarge { index, size, limit } => {
                write!(f, "frame {index} is {size} bytes, over the limit of {limit}")
            }
            TooManyFrames { count, limit } => {
                write!(f, "message has {count} frames, over the limit of {limit}")
            }
            TooManyHeaders { count, limit } => {
                write!(f, "message has {count} headers, over the limit of {limit}")
            }
            TopicTooLong { size, limit } => {
                write!(f, "topic is {size} bytes, over the limit of {limit}")
            }
            UnknownVerb(v) => write!(f, "unknown verb {v:?}"),
            MissingHeader { verb, header } => write!(f, "{verb} without {header} header"),
            BadHeaderValue { header, value } => write!(f, "bad {header} value {value:?}"),
            BadBody { verb, reason } => write!(f, "{verb}: {reason}"),
            TooManyDeliveries { limit } => write!(f, "ACK names more than {limit} delivery ids"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A message split into its parts, borrowing the received frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub verb: &'a str,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// Frames after the empty header terminator; `None` when there was no
    /// terminator, `Some(vec![])` for a terminator with nothing after it.
    pub body: Option<Vec<&'a [u8]>>,
}

impl<'a> Envelope<'a> {
    /// The value of the first header named `name`.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

/// Splits `frames` (starting with the empty delimiter, as a DEALER sends and
/// receives them) into verb, headers and body, enforcing `limits`.
pub fn split<'a, F: AsRef<[u8]>>(frames: &'a [F], limits: &Limits) -> Result<Envelope<'a>, ProtocolError> {
    if frames.is_empty() {
        return Err(ProtocolError::Empty);
    }
    if frames.len() > limits.max_frames {
        return Err(ProtocolError::TooManyFrames { count: frames.len(), limit: limits.max_frames });
    }
    for (index, frame) in frames.iter().enumerate() {
        let size = frame.as_ref().len();
        if size > limits.max_frame_size {
            return Err(ProtocolError::FrameTooLarge { index, size, limit: limits.max_frame_size });
        }
    }
    if !frames[0].as_ref().is_empty() {
        return Err(ProtocolError::MissingDelimiter);
    }
    let verb = match frames.get(1).map(|f| f.as_ref()) {
        None | Some([]) => return Err(ProtocolError::NoVerb),
        Some(v) => v,
    };
    if !verb.iter().all(|b| b.is_ascii_uppercase() || *b == b'_' || b.is_ascii_digit()) || !verb[0].is_ascii_uppercase()
    {
        return Err(ProtocolError::BadVerb(String::from_utf8_lossy(verb).into_owned()));
    }
    // The check above guarantees ASCII.
    let verb = std::str::from_utf8(verb).map_err(|_| ProtocolError::NoVerb)?;

    let mut headers = Vec::new();
    let mut rest = &frames[2..];
    let mut body = None;
    while let Some(key) = rest.first() {
        let key = key.as_ref();
        if key.is_empty() {
            body = Some(rest[1..].iter().map(|f| f.as_ref()).collect());
            break;
        }
        let value = rest.get(1).ok_or(ProtocolError::OddHeaders)?.as_ref();
        if !key.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ProtocolError::BadHeaderName(String::from_utf8_lossy(key).into_owned()));
        }
        headers.push((key, value));
        if headers.len() > limits.max_headers {
            return Err(ProtocolError::TooManyHeaders { count: headers.len(), limit: limits.max_headers });
        }
        rest = &rest[2..];
    }
    Ok(Envelope { verb, headers, body })
}

/// Builds the frames of a message: delimiter, verb, headers and, when `body`
/// is given, the empty terminator followed by the body frames.
pub fn join(verb: &str, headers: &[(&[u8], &[u8])], body: Option<&[&[u8]]>) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(2 + headers.len() * 2 + body.map_or(0, |b| 1 + b.len()));
    frames.push(Vec::new());
    frames.push(verb.as_bytes().to_vec());
    for (k, v) in headers {
        frames.push(k.to_vec());
        frames.push(v.to_vec());
    }
    if let Some(body) = body {
        frames.push(Vec::new());
        frames.extend(body.iter().map(|b| b.to_vec()));
    }
    frames
}

/// A command a client sends to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Connect {
        version: &'a [u8],
        ttl_ms: u64,
        id: Option<&'a [u8]>,
    },
    Disconnect {
        id: Option<&'a [u8]>,
    },
    /// With `queue`, a membership of the named queue of each topic;
    /// `compact`: its deliveries in the compact form (see [`COMPACT`]).
    Sub {
        id: Option<&'a [u8]>,
        queue: Option<&'a [u8]>,
        compact: bool,
        topics: Vec<&'a [u8]>,
    },
    Unsub {
        id: Option<&'a [u8]>,
        queue: Option<&'a [u8]>,
        topics: Vec<&'a [u8]>,
    },
    /// Acknowledges queue deliveries by their [`DELIVERY`] ids: body
    /// frames of one id each, or of several separated by single spaces
    /// (both forms may mix). Built by [`ack_frames`].
    Ack {
        id: Option<&'a [u8]>,
        deliveries: Vec<u64>,
    },
    /// `headers` holds every header but TOPIC and ID, in arrival order: the
    /// broker copies them (and TOPIC) into each MESSAGE.
    Put {
        topic: &'a [u8],
        headers: Vec<(&'a [u8], &'a [u8])>,
        id: Option<&'a [u8]>,
        body: Vec<&'a [u8]>,
    },
    Noop {
        id: Option<&'a [u8]>,
    },
}

impl<'a> Command<'a> {
    /// Parses client-to-broker frames (starting at the delimiter).
    pub fn parse<F: AsRef<[u8]>>(frames: &'a [F], limits: &Limits) -> Result<Self, ProtocolError> {
        Self::from_envelope(split(frames, limits)?, limits)
    }

    /// The ID of a message that parsed as far as its headers, so an ERROR can
    /// carry it even when the command itself is invalid.
    pub fn id_of(env: &Envelope<'a>) -> Option<&'a [u8]> {
        env.header(b"ID")
    }

    pub fn from_envelope(env: Envelope<'a>, limits: &Limits) -> Result<Self, ProtocolError> {
        let id = env.header(b"ID");
        let no_body = |verb: &'static str| match &env.body {
            Some(b) if !b.is_empty() => Err(ProtocolError::BadBody { verb, reason: "takes no body frames" }),
            _ => Ok(()),
        };
        let topics = |verb: &'static str| -> Result<Vec<&'a [u8]>, ProtocolError> {
            let topics = env.body.clone().unwrap_or_default();
            if topics.is_empty() {
                return Err(ProtocolError::BadBody { verb, reason: "no topics" });
            }
            for t in &topics {
                check_topic(t, limits)?;
            }
            Ok(topics)
        };
        match env.verb {
            "CONNECT" => {
                no_body("CONNECT")?;
                let version = env.header(b"VERSION").unwrap_or(b"");
                let ttl_ms = match env.header(b"TTL") {
                    None => DEFAULT_TTL_MS,
                    Some(v) => parse_ttl(v)?,
                };
                Ok(Command::Connect { version, ttl_ms, id })
            }
            "DISCONNECT" => {
                no_body("DISCONNECT")?;
                Ok(Command::Disconnect { id })
            }
            "NOOP" => {
                no_body("NOOP")?;
                Ok(Command::Noop { id })
            }
            "SUB" => {
                let queue = queue_of(&env)?;
                let compact = queue.is_some() && env.header(COMPACT.as_bytes()) == Some(b"1");
                Ok(Command::Sub { id, queue, compact, topics: topics("SUB")? })
            }
            "UNSUB" => Ok(Command::Unsub { id, queue: queue_of(&env)?, topics: topics("UNSUB")? }),
            "ACK" => {
                let deliveries = env.body.clone().unwrap_or_default();
                if deliveries.is_empty() {
                    return Err(ProtocolError::BadBody { verb: "ACK", reason: "no delivery ids" });
                }
                Ok(Command::Ack { id, deliveries: parse_delivery_lists(&deliveries, limits.max_frames)? })
            }
            "PUT" => {
                let topic =
                    env.header(b"TOPIC").ok_or(ProtocolError::MissingHeader { verb: "PUT", header: "TOPIC" })?;
                check_topic(topic, limits)?;
                if let Some(v) = env.header(EXPIRES_IN.as_bytes()) {
                    parse_expires_in(v)?;
                }
                let headers = env.headers.iter().copied().filter(|(k, _)| *k != b"ID" && *k != b"TOPIC").collect();
                Ok(Command::Put { topic, headers, id, body: env.body.unwrap_or_default() })
            }
            other => Err(ProtocolError::UnknownVerb(other.to_string())),
        }
    }

    /// The ID header, if the command asked for an acknowledgement.
    pub fn id(&self) -> Option<&'a [u8]> {
        match self {
            Command::Connect { id, .. }
            | Command::Disconnect { id }
            | Command::Sub { id, .. }
            | Command::Unsub { id, .. }
            | Command::Put { id, .. }
            | Command::Ack { id, .. }
            | Command::Noop { id } => *id,
        }
    }

    /// Builds the frames (delimiter first) a DEALER sends for this command.
    pub fn to_frames(&self) -> Vec<Vec<u8>> {
        let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
        let ttl;
        match self {
            Command::Connect { version, ttl_ms, id } => {
                // Sorted keys, as legacy connectors send them.
                push_id(&mut headers, id);
                ttl = ttl_ms.to_string();
                headers.push((b"TTL", ttl.as_bytes()));
                headers.push((b"VERSION", version));
                join("CONNECT", &headers, None)
            }
            Command::Disconnect { id } => {
                push_id(&mut headers, id);
                join("DISCONNECT", &headers, None)
            }
            Command::Noop { id } => {
                push_id(&mut headers, id);
                join("NOOP", &headers, None)
            }
            Command::Sub { id, queue, compact, topics } => {
                push_id(&mut headers, id);
                if let Some(queue) = queue {
                    headers.push((QUEUE.as_bytes(), queue));
                    if *compact {
                        headers.push((COMPACT.as_bytes(), b"1"));
                    }
                }
                join("SUB", &headers, Some(topics))
            }
            Command::Unsub { id, queue, topics } => {
                push_id(&mut headers, id);
                if let Some(queue) = queue {
                    headers.push((QUEUE.as_bytes(), queue));
                }
                join("UNSUB", &headers, Some(topics))
            }
            Command::Ack { id, deliveries } => ack_frames(*id, deliveries, AckForm::FramePerId),
            Command::Put { topic, headers: extra, id, body } => {
                headers.push((b"TOPIC", topic));
                headers.extend(extra.iter().copied());
                push_id(&mut headers, id);
                join("PUT", &headers, Some(body))
            }
        }
    }
}

/// How an ACK lists its delivery ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckForm {
    /// One id per body frame: what every broker with queues reads.
    FramePerId,
    /// All ids in one body frame, separated by single spaces: one CURVE
    /// box for the lot. Only for a broker known to read it (one that sent
    /// a delivery in the [`COMPACT`] form on this connection).
    List,
}

/// Adds a command's `ID` header, if it has one.
fn push_id<'h>(headers: &mut Vec<(&'h [u8], &'h [u8])>, id: &Option<&'h [u8]>) {
    if let Some(id) = id {
        headers.push((b"ID", id));
    }
}

/// The frames of `ACK [ID id] "" ids…` in the given form.
pub fn ack_frames(id: Option<&[u8]>, deliveries: &[u64], form: AckForm) -> Vec<Vec<u8>> {
    let mut headers = Vec::new();
    push_id(&mut headers, &id);
    let ids: Vec<String> = deliveries.iter().map(u64::to_string).collect();
    match form {
        AckForm::FramePerId => {
            let ids: Vec<&[u8]> = ids.iter().map(|d| d.as_bytes()).collect();
            join("ACK", &headers, Some(&ids))
        }
        AckForm::List => join("ACK", &headers, Some(&[ids.join(" ").as_bytes()])),
    }
}

/// The delivery ids of an ACK's body frames, each frame one id or several
/// separated by single spaces; at most `limit`. A bad id is named; an
/// empty one (two spaces, or one at an end) names its frame.
fn parse_delivery_lists(frames: &[&[u8]], limit: usize) -> Result<Vec<u64>, ProtocolError> {
    let mut ids = Vec::with_capacity(frames.len());
    for frame in frames {
        for item in frame.split(|b| *b == b' ') {
            if ids.len() == limit {
                return Err(ProtocolError::TooManyDeliveries { limit });
            }
            // An empty item says nothing; the frame around it (which then
            // holds a stray space, so it fails too) shows where it is.
            ids.push(parse_delivery(if item.is_empty() { frame } else { item })?);
        }
    }
    Ok(ids)
}

/// The value of a compact delivery's [`QUEUE_DELIVERY`] header: the id
/// first, so the value splits at its first space (a queue name may hold
/// spaces).
pub fn queue_delivery(seq: u64, queue: &[u8]) -> Vec<u8> {
    let mut value = seq.to_string().into_bytes();
    value.push(b' ');
    value.extend_from_slice(queue);
    value
}

/// Splits a [`QUEUE_DELIVERY`] value into the delivery id as sent (its
/// decimal text, checked) and the queue's name.
pub fn parse_queue_delivery(value: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let bad =
        || ProtocolError::BadHeaderValue { header: QUEUE_DELIVERY, value: String::from_utf8_lossy(value).into_owned() };
    let at = value.iter().position(|b| *b == b' ').ok_or_else(bad)?;
    let (id, name) = (&value[..at], &value[at + 1..]);
    parse_delivery(id).map_err(|_| bad())?;
    check_queue_name(name).map_err(|_| bad())?;
    Ok((id, name))
}

/// The rule every topic obeys on the wire: at most `limits.max_topic_len`
/// bytes. (An empty topic is legal; libmc0 refuses to send one.)
pub fn check_topic(topic: &[u8], limits: &Limits) -> Result<(), ProtocolError> {
    if topic.len() > limits.max_topic_len {
        return Err(ProtocolError::TopicTooLong { size: topic.len(), limit: limits.max_topic_len });
    }
    Ok(())
}

/// The [`QUEUE`] header of a SUB or UNSUB: a queue name is 1 to 255
/// printable ASCII bytes (it shows in logs and errors).
fn queue_of<'a>(env: &Envelope<'a>) -> Result<Option<&'a [u8]>, ProtocolError> {
    env.header(QUEUE.as_bytes()).map(check_queue_name).transpose()
}

/// A queue's name: 1 to 255 printable ASCII bytes, spaces allowed.
fn check_queue_name(name: &[u8]) -> Result<&[u8], ProtocolError> {
    if !name.is_empty() && name.len() <= 255 && name.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        Ok(name)
    } else {
        Err(ProtocolError::BadHeaderValue { header: QUEUE, value: String::from_utf8_lossy(name).into_owned() })
    }
}

/// The time-to-live of a PUT's (or a queued MESSAGE's) [`EXPIRES_IN`]
/// value, in ms within [`EXPIRES_IN_RANGE_MS`].
pub fn parse_expires_in(value: &[u8]) -> Result<u64, ProtocolError> {
    parse_decimal(value).filter(|ms| EXPIRES_IN_RANGE_MS.contains(ms)).ok_or_else(|| ProtocolError::BadHeaderValue {
        header: EXPIRES_IN,
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

/// A [`DELIVERY`] id, as a MESSAGE carries it and ACK names it.
pub fn parse_delivery(value: &[u8]) -> Result<u64, ProtocolError> {
    parse_decimal(value).ok_or_else(|| ProtocolError::BadHeaderValue {
        header: DELIVERY,
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn parse_ttl(value: &[u8]) -> Result<u64, ProtocolError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ttl| TTL_RANGE_MS.contains(ttl))
        .ok_or_else(|| ProtocolError::BadHeaderValue {
            header: "TTL",
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

/// A reply the broker sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `headers` holds every header but TOPIC, in arrival order.
    Message {
        topic: &'a [u8],
        headers: Vec<(&'a [u8], &'a [u8])>,
        body: Vec<&'a [u8]>,
    },
    Ok {
        id: &'a [u8],
    },
    Error {
        message: &'a [u8],
        id: Option<&'a [u8]>,
    },
    Noop,
}

impl<'a> Reply<'a> {
    /// Parses broker-to-client frames (starting at the delimiter).
    pub fn parse<F: AsRef<[u8]>>(frames: &'a [F], limits: &Limits) -> Result<Self, ProtocolError> {
        let env = split(frames, limits)?;
        match env.verb {
            "MESSAGE" => {
                let topic =
                    env.header(b"TOPIC").ok_or(ProtocolError::MissingHeader { verb: "MESSAGE", header: "TOPIC" })?;
                let headers = env.headers.iter().copied().filter(|(k, _)| *k != b"TOPIC").collect();
                Ok(Reply::Message { topic, headers, body: env.body.unwrap_or_default() })
            }
            "OK" => {
                let id = env.header(b"ID").ok_or(ProtocolError::MissingHeader { verb: "OK", header: "ID" })?;
                Ok(Reply::Ok { id })
            }
            "ERROR" => Ok(Reply::Error { message: env.header(b"MESSAGE").unwrap_or(b""), id: env.header(b"ID") }),
            "NOOP" => Ok(Reply::Noop),
            other => Err(ProtocolError::UnknownVerb(other.to_string())),
        }
    }

    /// Builds the frames (delimiter first) the broker sends for this reply.
    pub fn to_frames(&self) -> Vec<Vec<u8>> {
        match self {
            Reply::Message { topic, headers, body } => {
                let mut all: Vec<(&[u8], &[u8])> = Vec::with_capacity(headers.len() + 1);
                all.push((b"TOPIC", topic));
                all.extend(headers.iter().copied());
                join("MESSAGE", &all, Some(body))
            }
            Reply::Ok { id } => join("OK", &[(b"ID", id)], None),
            Reply::Error { message, id } => {
                let mut all: Vec<(&[u8], &[u8])> = vec![(b"MESSAGE", message)];
                if let Some(id) = id {
                    all.push((b"ID", id));
                }
                join("ERROR", &all, None)
            }
            Reply::Noop => join("NOOP", &[], None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    fn parse(parts: &[&[u8]]) -> Result<Command<'static>, ProtocolError> {
        let owned: &'static Vec<Vec<u8>> = Box::leak(Box::new(frames(parts)));
        Command::parse(owned, &Limits::default())
    }

    #[test]
    fn connect_as_legacy_sends_it() {
        let cmd = parse(&[b"", b"CONNECT", b"ID", b"7", b"TTL", b"30000", b"VERSION", b"0.2"]).unwrap();
        assert_eq!(cmd, Command::Connect { version: b"0.2", ttl_ms: 30000, id: Some(b"7") });
        assert_eq!(cmd.to_frames(), frames(&[b"", b"CONNECT", b"ID", b"7", b"TTL", b"30000", b"VERSION", b"0.2"]));
    }

    #[test]
    fn connect_accepts_unknown_version_and_defaults_ttl() {
        let cmd = parse(&[b"", b"CONNECT", b"VERSION", b"9.9-future"]).unwrap();
        assert_eq!(cmd, Command::Connect { version: b"9.9-future", ttl_ms: DEFAULT_TTL_MS, id: None });
    }

    #[test]
    fn connect_rejects_bad_ttl() {
        for bad in [&b"abc"[..], b"0", b"-5", b""] {
            let err = parse(&[b"", b"CONNECT", b"TTL", bad, b"VERSION", b"0.2"]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadHeaderValue { header: "TTL", .. }), "{err}");
        }
    }

    #[test]
    fn disconnect_and_noop() {
        assert_eq!(parse(&[b"", b"DISCONNECT"]).unwrap(), Command::Disconnect { id: None });
        assert_eq!(parse(&[b"", b"DISCONNECT", b"ID", b"x"]).unwrap(), Command::Disconnect { id: Some(b"x") });
        assert_eq!(parse(&[b"", b"NOOP"]).unwrap(), Command::Noop { id: None });
        assert_eq!(parse(&[b"", b"NOOP", b"ID", b"1"]).unwrap(), Command::Noop { id: Some(b"1") });
        assert_eq!(parse(&[b"", b"NOOP", b""]).unwrap(), Command::Noop { id: None });
    }

    #[test]
    fn sub_and_unsub_take_several_topics() {
        let cmd = parse(&[b"", b"SUB", b"ID", b"2", b"", b"mcollective rpcutil", b"mcollective nodes n1"]).unwrap();
        assert_eq!(
            cmd,
            Command::Sub {
                id: Some(b"2"),
                queue: None,
                compact: false,
                topics: vec![b"mcollective rpcutil", b"mcollective nodes n1"]
            }
        );
        let cmd = parse(&[b"", b"UNSUB", b"", b"t"]).unwrap();
        assert_eq!(cmd, Command::Unsub { id: None, queue: None, topics: vec![b"t"] });
        assert!(matches!(parse(&[b"", b"SUB", b"ID", b"2"]), Err(ProtocolError::BadBody { verb: "SUB", .. })));
        assert!(matches!(parse(&[b"", b"UNSUB", b""]), Err(ProtocolError::BadBody { verb: "UNSUB", .. })));
    }

    #[test]
    fn put_keeps_every_header_but_id() {
        let cmd = parse(&[
            b"",
            b"PUT",
            b"TOPIC",
            b"mcollective rpcutil",
            b"X-REPLY-TO",
            b"mcollective reply me 42",
            b"ID",
            b"9",
            b"",
            b"\x00\xffbinary",
        ])
        .unwrap();
        let Command::Put { topic, headers, id, body } = &cmd else { panic!("not a PUT: {cmd:?}") };
        assert_eq!(*topic, b"mcollective rpcutil");
        assert_eq!(headers, &vec![(&b"X-REPLY-TO"[..], &b"mcollective reply me 42"[..])]);
        assert_eq!(*id, Some(&b"9"[..]));
        assert_eq!(body, &vec![&b"\x00\xffbinary"[..]]);
        let msg = Reply::Message { topic, headers: headers.clone(), body: body.clone() };
        assert_eq!(
            msg.to_frames(),
            frames(&[
                b"",
                b"MESSAGE",
                b"TOPIC",
                b"mcollective rpcutil",
                b"X-REPLY-TO",
                b"mcollective reply me 42",
                b"",
                b"\x00\xffbinary"
            ])
        );
        assert!(matches!(parse(&[b"", b"PUT", b"", b"x"]), Err(ProtocolError::MissingHeader { header: "TOPIC", .. })));
    }

    #[test]
    fn queue_additions_parse_and_build() {
        let cmd = parse(&[b"", b"SUB", b"ID", b"1", b"QUEUE", b"async", b"", b"t"]).unwrap();
        assert_eq!(cmd, Command::Sub { id: Some(b"1"), queue: Some(b"async"), compact: false, topics: vec![b"t"] });
        assert_eq!(Command::parse(&cmd.to_frames(), &Limits::default()).unwrap(), cmd);
        for bad in [&b""[..], b"tab\there", &[b'x'; 256]] {
            let err = parse(&[b"", b"SUB", b"QUEUE", bad, b"", b"t"]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadHeaderValue { header: QUEUE, .. }), "{err}");
        }
        let ack = parse(&[b"", b"ACK", b"ID", b"2", b"", b"7", b"18446744073709551615"]).unwrap();
        assert_eq!(ack, Command::Ack { id: Some(b"2"), deliveries: vec![7, u64::MAX] });
        assert_eq!(Command::parse(&ack.to_frames(), &Limits::default()).unwrap(), ack);
        assert!(matches!(parse(&[b"", b"ACK", b""]), Err(ProtocolError::BadBody { verb: "ACK", .. })));
        for bad in [&b"x"[..], b"-1", b"", b"18446744073709551616"] {
            let err = parse(&[b"", b"ACK", b"", bad]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadHeaderValue { header: DELIVERY, .. }), "{err}");
        }
        let put = parse(&[b"", b"PUT", b"TOPIC", b"t", b"EXPIRES-IN", b"5000", b"", b"x"]).unwrap();
        let Command::Put { headers, .. } = put else { panic!("not a PUT") };
        assert_eq!(headers, vec![(EXPIRES_IN.as_bytes(), &b"5000"[..])], "carried like any header");
        for bad in [&b"0"[..], b"soon", b"2592000001"] {
            let err = parse(&[b"", b"PUT", b"TOPIC", b"t", b"EXPIRES-IN", bad, b"", b"x"]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadHeaderValue { header: EXPIRES_IN, .. }), "{err}");
        }
    }

    #[test]
    fn compact_is_asked_on_a_queue_sub_only() {
        let cmd = parse(&[b"", b"SUB", b"QUEUE", b"async", b"COMPACT", b"1", b"", b"t"]).unwrap();
        assert_eq!(cmd, Command::Sub { id: None, queue: Some(b"async"), compact: true, topics: vec![b"t"] });
        assert_eq!(Command::parse(&cmd.to_frames(), &Limits::default()).unwrap(), cmd);
        // Another value, or a plain SUB: ignored, as a broker that does not
        // know the header ignores it.
        let cmd = parse(&[b"", b"SUB", b"QUEUE", b"async", b"COMPACT", b"2", b"", b"t"]).unwrap();
        assert!(matches!(cmd, Command::Sub { compact: false, .. }), "{cmd:?}");
        let cmd = parse(&[b"", b"SUB", b"COMPACT", b"1", b"", b"t"]).unwrap();
        assert_eq!(cmd, Command::Sub { id: None, queue: None, compact: false, topics: vec![b"t"] });
        let plain = Command::Sub { id: None, queue: None, compact: true, topics: vec![b"t"] }.to_frames();
        assert_eq!(plain, frames(&[b"", b"SUB", b"", b"t"]), "never sent on a plain SUB");
    }

    #[test]
    fn ack_lists_several_ids_per_frame() {
        let ack = |body: &[&[u8]]| {
            let mut parts: Vec<&[u8]> = vec![b"", b"ACK", b"ID", b"1", b""];
            parts.extend(body);
            parse(&parts)
        };
        let listed = Command::Ack { id: Some(b"1"), deliveries: vec![7, 8, 9] };
        assert_eq!(ack(&[b"7 8 9"]).unwrap(), listed);
        assert_eq!(ack(&[b"7", b"8 9"]).unwrap(), listed, "the two forms mix");
        let frames_of = ack_frames(Some(b"1"), &[7, 8, 9], AckForm::List);
        assert_eq!(frames_of, frames(&[b"", b"ACK", b"ID", b"1", b"", b"7 8 9"]));
        assert_eq!(Command::parse(&frames_of, &Limits::default()).unwrap(), listed);
        assert_eq!(ack_frames(Some(b"1"), &[7, 8, 9], AckForm::FramePerId), listed.to_frames());
        // A bad id is named; an empty one (two spaces, a space at an end)
        // names its frame.
        for (body, named) in [
            (&b"7 x 9"[..], "x"),
            (b"7  8", "7  8"),
            (b" 7", " 7"),
            (b"7 ", "7 "),
            (b"7 18446744073709551616", "18446744073709551616"),
            (b"7\t8", "7\t8"),
        ] {
            let err = ack(&[b"1", body]).unwrap_err();
            assert_eq!(err, ProtocolError::BadHeaderValue { header: DELIVERY, value: named.into() }, "{body:?}");
            assert!(err.to_string().contains(&format!("{named:?}")), "{err}");
        }
        // One bound for both forms: the frame limit.
        let limits = Limits { max_frames: 8, ..Limits::default() };
        let ids = (1..=8).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
        let f = frames(&[b"", b"ACK", b"", ids.as_bytes()]);
        assert!(Command::parse(&f, &limits).is_ok());
        let f = frames(&[b"", b"ACK", b"", format!("{ids} 9").as_bytes()]);
        let err = Command::parse(&f, &limits).unwrap_err();
        assert_eq!(err, ProtocolError::TooManyDeliveries { limit: 8 });
        assert!(err.to_string().contains("more than 8"), "{err}");
    }

    #[test]
    fn queue_delivery_folds_id_and_name() {
        let value = queue_delivery(42, b"async replies");
        assert_eq!(value, b"42 async replies");
        assert_eq!(parse_queue_delivery(&value).unwrap(), (&b"42"[..], &b"async replies"[..]));
        for bad in [&b"42"[..], b"x async", b" async", b"42 ", b"42 tab\there", b""] {
            let err = parse_queue_delivery(bad).unwrap_err();
            assert!(matches!(err, ProtocolError::BadHeaderValue { header: QUEUE_DELIVERY, .. }), "{err}");
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ok { id: b"5" },
            Reply::Error { message: b"boom", id: Some(b"5") },
            Reply::Error { message: b"boom", id: None },
            Reply::Noop,
            Reply::Message { topic: b"t", headers: vec![(b"X-A", b"1")], body: vec![b"a", b""] },
        ] {
            let frames = reply.to_frames();
            assert_eq!(Reply::parse(&frames, &Limits::default()).unwrap(), reply);
        }
    }

    #[test]
    fn malformed_shapes_are_typed_errors() {
        let empty: Vec<Vec<u8>> = vec![];
        assert_eq!(Command::parse(&empty, &Limits::default()), Err(ProtocolError::Empty));
        assert_eq!(parse(&[b"CONNECT"]), Err(ProtocolError::MissingDelimiter));
        assert_eq!(parse(&[b""]), Err(ProtocolError::NoVerb));
        assert_eq!(parse(&[b"", b""]), Err(ProtocolError::NoVerb));
        assert!(matches!(parse(&[b"", b"connect"]), Err(ProtocolError::BadVerb(_))));
        assert!(matches!(parse(&[b"", "CONNÉCT".as_bytes()]), Err(ProtocolError::BadVerb(_))));
        assert!(matches!(parse(&[b"", b"\xff\xfe"]), Err(ProtocolError::BadVerb(_))));
        assert_eq!(parse(&[b"", b"NOOP", b"ID"]), Err(ProtocolError::OddHeaders));
        assert_eq!(parse(&[b"", b"CONNECT", b"TTL", b"1", b"VERSION"]), Err(ProtocolError::OddHeaders));
        assert!(matches!(parse(&[b"", b"NOOP", b"A\x00", b"v"]), Err(ProtocolError::BadHeaderName(_))));
        assert!(matches!(parse(&[b"", b"FLY"]), Err(ProtocolError::UnknownVerb(v)) if v == "FLY"));
        assert!(matches!(parse(&[b"", b"NOOP", b"", b"x"]), Err(ProtocolError::BadBody { .. })));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits { max_frame_size: 8, max_frames: 6, max_headers: 1, max_topic_len: 3 };
        let f = frames(&[b"", b"PUT", b"TOPIC", b"t", b"", b"123456789"]);
        assert!(matches!(Command::parse(&f, &limits), Err(ProtocolError::FrameTooLarge { index: 5, .. })));
        let f = frames(&[b"", b"SUB", b"", b"a", b"b", b"c", b"d"]);
        assert!(matches!(Command::parse(&f, &limits), Err(ProtocolError::TooManyFrames { count: 7, .. })));
        let f = frames(&[b"", b"NOOP", b"A", b"1", b"B", b"2"]);
        assert!(matches!(Command::parse(&f, &limits), Err(ProtocolError::TooManyHeaders { .. })));
        let f = frames(&[b"", b"SUB", b"", b"long"]);
        assert!(matches!(Command::parse(&f, &limits), Err(ProtocolError::TopicTooLong { size: 4, .. })));
    }

    #[test]
    fn errors_name_the_culprit() {
        assert!(ProtocolError::UnknownVerb("FLY".into()).to_string().contains("FLY"));
        assert!(ProtocolError::BadHeaderValue { header: "TTL", value: "x".into() }.to_string().contains("TTL"));
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..16)
    }
    fn nonempty_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..16)
    }
    fn header_key() -> impl Strategy<Value = Vec<u8>> {
        "X-[A-Z0-9-]{1,8}".prop_map(|s| s.into_bytes())
    }

    proptest! {
        #[test]
        fn put_build_then_parse_is_identity(
            topic in nonempty_bytes(),
            headers in proptest::collection::vec((header_key(), bytes()), 0..5),
            id in proptest::option::of(nonempty_bytes()),
            body in proptest::collection::vec(bytes(), 0..4),
        ) {
            let headers: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let cmd = Command::Put {
                topic: &topic,
                headers,
                id: id.as_deref(),
                body: body.iter().map(|b| &b[..]).collect(),
            };
            let frames = cmd.to_frames();
            prop_assert_eq!(Command::parse(&frames, &Limits::default()).unwrap(), cmd);
        }

        #[test]
        fn sub_connect_noop_build_then_parse_is_identity(
            topics in proptest::collection::vec(bytes(), 1..5),
            id in proptest::option::of(nonempty_bytes()),
            ttl in TTL_RANGE_MS,
            version in nonempty_bytes(),
        ) {
            let cmds = [
                Command::Sub { id: id.as_deref(), queue: None, compact: false, topics: topics.iter().map(|t| &t[..]).collect() },
                Command::Unsub { id: id.as_deref(), queue: None, topics: topics.iter().map(|t| &t[..]).collect() },
                Command::Connect { version: &version, ttl_ms: ttl, id: id.as_deref() },
                Command::Noop { id: id.as_deref() },
                Command::Disconnect { id: id.as_deref() },
            ];
            for cmd in cmds {
                let frames = cmd.to_frames();
                prop_assert_eq!(Command::parse(&frames, &Limits::default()).unwrap(), cmd);
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec(bytes(), 0..12)) {
            let _ = Command::parse(&frames, &Limits::default());
            let _ = Reply::parse(&frames, &Limits::default());
        }
    }
}
