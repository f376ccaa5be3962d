//! `mc0d`, the broker: one ROUTER socket, owned and touched by exactly one
//! thread (the one calling [`Broker::run`]), routing PUTs to the current
//! subscribers of their topic and keeping every client's heartbeat.
//!
//! The command handling itself is [`Engine`], a state machine over a
//! [`Transport`] with no socket of its own, so it can be driven (and fuzzed)
//! without the network; [`Broker`] feeds it from the ROUTER.
//!
//! # Socket options and why
//!
//! - `ZMQ_BACKLOG` 8192: thousands of nodes reconnect at the same moment
//!   after a broker restart; the kernel caps it at `net.core.somaxconn`.
//! - `ZMQ_ROUTER_HANDOVER` only without CURVE. With it libzmq gives a
//!   routing id to the newest connection that asks for it, whatever its key,
//!   so any key holder could take over another client's id and receive what
//!   is addressed to it (see [Sessions and keys](#sessions-and-keys)).
//!   Without it, a connection asking for a routing id that a live connection
//!   holds is never read or written to; the id is free again once the
//!   holder's connection is gone. Without CURVE there is no key to protect,
//!   and handover keeps the legacy brokers' behaviour for reconnects.
//! - `ZMQ_TCP_KEEPALIVE` (60 s idle, then 3 probes 10 s apart): a
//!   connection whose peer vanished without closing it (a network failure)
//!   is closed within about 90 s, freeing its routing id for the reconnect.
//! - `ZMQ_ROUTER_MANDATORY` + `ZMQ_DONTWAIT` on every send: a send to a
//!   vanished peer (`EHOSTUNREACH`) or to one whose queue is full (`EAGAIN`)
//!   fails at once instead of silently vanishing or blocking the loop. Each
//!   failure is counted as a drop and logged (rate-limited warning).
//! - `ZMQ_SNDHWM` (default [`DEFAULT_SNDHWM`] = 10 000 messages, per client):
//!   libzmq's queue to one client. When it is full, further messages to that
//!   client wait in mc0d's own buffer for it ([`buffers`](engine::buffers)), bounded in bytes
//!   (`--client-buffer`, default [`DEFAULT_CLIENT_BUFFER`] = 64 MiB), and are
//!   sent in order as the client drains. A message count alone cannot size
//!   this: one broadcast request brings one reply per node to one `mco`
//!   client at once. The sizing rule: `--sndhwm` messages plus
//!   `--client-buffer` bytes must hold a whole fleet's replies to one
//!   request, i.e. nodes × reply size ≤ client buffer (the libzmq queue is
//!   slack): the defaults hold 15 000 replies of 4 KiB. Only a client over
//!   both bounds is stuck; what does not fit is dropped, counted
//!   (`full_drops=`) and logged. A stuck client costs at most `--sndhwm`
//!   messages in libzmq plus `--client-buffer` bytes here, and never delays
//!   anyone else. (libzmq's count is approximate: the writer learns of the
//!   reader's progress in steps of about 9 000 messages.)
//! - `ZMQ_RCVHWM` (default [`DEFAULT_RCVHWM`] = 1 000 messages, per client):
//!   inbound is fair-queued per connection; a full queue only stops reading
//!   that client's TCP stream (back-pressure on the publisher), nothing is lost.
//! - `ZMQ_MAXMSGSIZE` = the largest accepted frame (the body limit plus
//!   [`FRAME_SLACK`]): libzmq disconnects a peer that sends a bigger one
//!   before buffering it. Anything between the body limit and that gets a
//!   clear `ERROR` instead.
//! - `ZMQ_LINGER` 500 ms: pending replies get a bounded chance to leave at
//!   shutdown; a stuck peer cannot hold the exit.
//! - With CURVE: `ZMQ_ZAP_DOMAIN` "mc0" and `ZMQ_ZAP_ENFORCE_DOMAIN` (see
//!   [Authorization](#authorization)), and a socket monitor reporting closed
//!   connections (`ZMQ_EVENT_DISCONNECTED`). With `--metrics` the monitor
//!   runs without CURVE too, only to forget closed connections' peer
//!   addresses.
//!
//! # Heartbeats
//!
//! See [`clients`](engine::clients): lazily-invalidated deadline heaps; the loop sleeps in
//! `zmq_poll` until the next deadline (capped so a stop request is noticed).
//! NOOPs go out when due; a client is only expired for silence up to the
//! last moment the socket had no input waiting, so a broker that falls
//! behind never expires a client whose heartbeat it has not read yet. Under
//! sustained overload (the socket never empty) expiry waits; heartbeats do
//! not.
//!
//! # Authorization
//!
//! With an allowlist ([`allowlist`](auth::allowlist)) only listed CURVE keys may connect,
//! and a missing or failed check never means "allow", at three levels:
//! 1. The [`zap`](auth::zap) handler is bound on the broker's context and has answered
//!    a self-test request before the ROUTER binds; it refuses unlisted keys
//!    during the handshake.
//! 2. `ZMQ_ZAP_ENFORCE_DOMAIN` (libzmq option 93, a draft option the `zmq`
//!    crate has no setter for; Debian's libzmq 4.3.4 honours it) makes libzmq
//!    fail a handshake when no ZAP handler answers, instead of its
//!    backward-compatible default of letting the client in.
//! 3. Every received message must carry `User-Id` metadata (set by the ZAP
//!    handler) naming a key that is listed *now*; otherwise it is answered
//!    with [`ACCESS_DENIED`] and not executed. A session is tied to the key
//!    it was opened with, not just to its routing id.
//!
//! On reload (SIGHUP, or a change on disk noticed by polling) the new list
//! applies to new handshakes at once, and every session whose key is gone is
//! dropped: forgotten with its subscriptions and sent [`ACCESS_DENIED`] (as
//! is one whose key now has another name: it must CONNECT again).
//!
//! Without an allowlist (open mode) the ZAP handler admits every CURVE key,
//! so each message still carries its key.
//!
//! # Sessions and keys
//!
//! A session belongs to the key that opened it, whenever CURVE is on. libzmq
//! offers no point at which both a connection's key and the routing id it
//! asks for are known before the ROUTER hands the id over (the ZAP request
//! carries neither the id nor a way to wait for it; see [`zap`](auth::zap)), so the
//! broker holds the rule itself:
//! - no handover: a routing id held by a live connection cannot be taken by
//!   another one (its messages are never read);
//! - the connection each session was last heard from is remembered
//!   (`ZMQ_SRCFD`); when the socket monitor reports it closed, the session
//!   is marked lost and nothing is delivered to its routing id (which a new
//!   connection could now take) until the session speaks again under its
//!   key. Every closed connection is taken note of before each fan-out
//!   (so no delivery can reach a connection that took the id meanwhile) and
//!   before a session is tied to a connection (whose number may be that of
//!   one that closed); in between, whatever the monitor has ready is read on
//!   every wake-up of the loop;
//! - a message from a session's routing id under another key is refused
//!   (`ERROR`), logged with both keys and counted (`impostors=`); the
//!   session is left as it was.
//!
//! # Identity (with an allowlist)
//!
//! The name a key is listed under is the MCollective identity it may act as,
//! and its role (node, client or either) limits what it may publish: see
//! [`acl`](engine::acl). A refused CONNECT, SUB or PUT gets `ERROR MESSAGE <why> [ID id]`,
//! is logged (rate-limited) and counted (`violations=`); with
//! `--identity-check log` it is carried out, and still logged and counted.
//!
//! # The sender stamp
//!
//! Every MESSAGE names its publisher in one header the broker sets: with an
//! allowlist [`SENDER`](mc0::protocol::SENDER) (the name its key is listed under), otherwise, with
//! CURVE, [`SENDER_KEY`](mc0::protocol::SENDER_KEY) (its Z85 key; also for a key listed without a
//! name); without CURVE none. Copies of either a client put in its PUT are
//! removed. The stamp is added once per PUT to the frames every recipient
//! shares, but each recipient still gets (and CURVE encrypts) two more
//! frames: one header rather than both halves that cost, which
//! docs/BENCHMARKS.md measures.
//!
//! # Layout
//!
//! - [`server`]: the one thread that owns the ROUTER socket ([`router`]):
//!   bind, the loop, receive. Later links (a cluster, queue storage) get
//!   their own threads and reach it through channels it polls.
//! - [`metrics`]: `--metrics`, an HTTP thread serving what the server
//!   thread publishes to it (counters, and a session table on request).
//! - [`engine`]: the pure state machine ([`Engine`]): clients and
//!   heartbeats, subscriptions, identity and role rules, send buffers; no
//!   sockets, it sends through a [`Transport`].
//! - [`auth`]: the ZAP handler, the allowlist and the thread that reloads it.
//! - [`config`], [`stats`], [`error`], [`logger`]; [`sockopt`] and `zmsg`:
//!   the raw libzmq calls the `zmq` crate lacks.

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod inproc;
pub mod logger;
pub mod metrics;
pub mod router;
pub mod server;
pub mod sockopt;
pub mod stats;
pub mod store;
mod zmsg;

pub use config::{
    Config, IdentityCheck, QueueWriter, DEFAULT_BACKLOG, DEFAULT_CLIENT_BUFFER, DEFAULT_KEYS_POLL,
    DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_PORT, DEFAULT_RCVHWM, DEFAULT_SNDHWM, FRAME_SLACK,
};
pub use engine::{Conn, Engine, Origin, Transport};
pub use error::BrokerError;
pub use mc0::protocol::{ACCESS_DENIED, IMPOSTOR};
pub use server::Broker;
pub use sockopt::enforce_zap;
pub use stats::Stats;
