//! What `mc0d` can be told on its command line, and the defaults.

use std::path::PathBuf;
use std::time::Duration;

use mc0::keys::Key;
use mc0::log::Level;
use mc0::protocol::Limits;

pub use mc0::protocol::DEFAULT_PORT;
/// Messages libzmq queues per client before mc0d buffers them (see the
/// crate doc).
pub const DEFAULT_SNDHWM: i32 = 10_000;
/// Default bound of one client's buffer in mc0d ([`crate::engine::buffers`]):
/// NATS's default per-client pending limit.
pub const DEFAULT_CLIENT_BUFFER: usize = 64 * 1024 * 1024;
/// Messages queued from each client before its stream is throttled.
pub const DEFAULT_RCVHWM: i32 = 1_000;
/// Pending-connection queue for the listening socket.
pub const DEFAULT_BACKLOG: i32 = 8192;
/// Topics one client may be subscribed to at once. A MCollective node needs
/// a few per agent and collective; this leaves ample room while bounding
/// what one client can make the broker hold.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
/// Largest PUT body (all body frames together), in bytes.
pub const DEFAULT_MAX_BODY_SIZE: usize = 64 * 1024 * 1024;
/// How far a single frame may exceed the body limit and still be read (and
/// answered with a clear `ERROR`); beyond it libzmq drops the connection.
pub const FRAME_SLACK: usize = 1024 * 1024;
/// How often the allowlist on disk is checked for changes.
pub const DEFAULT_KEYS_POLL: Duration = Duration::from_secs(5);

/// Everything `mc0d` can be told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface to bind: `*`, an IPv4/IPv6 address or an interface name.
    pub bind: String,
    pub port: u16,
    /// The broker's CURVE secret key; `None` runs the NULL mechanism.
    pub curve_secret_key: Option<Key>,
    pub log_level: Level,
    /// How often the status line is considered (it is only written when a
    /// counter changed).
    pub status_interval: Duration,
    pub sndhwm: i32,
    /// Bytes mc0d holds for one client beyond libzmq's queue (see [`buffers`](crate::engine::buffers)).
    pub client_buffer: usize,
    pub rcvhwm: i32,
    pub backlog: i32,
    pub io_threads: i32,
    /// Per-message limits. `max_frame_size` is the hard cut libzmq enforces
    /// by dropping the connection; see [`Config::set_max_body_size`].
    pub limits: Limits,
    /// Largest PUT body; bigger ones are answered with `ERROR`.
    pub max_body_size: usize,
    /// Most topics one client may be subscribed to.
    pub max_subscriptions: usize,
    /// The client-key allowlist (a directory of `*.public` files or a
    /// key-per-line file); `None` admits every client that knows the
    /// broker's public key.
    pub authorized_keys: Option<PathBuf>,
    /// How often the allowlist is checked for changes; `None`: only on
    /// SIGHUP.
    pub authorized_keys_poll: Option<Duration>,
    /// What a command that breaks the identity or role rules gets.
    pub identity_check: IdentityCheck,
    /// Agents node keys may publish requests to, with roles
    /// (`--node-publish-agents`).
    pub node_publish_agents: Vec<String>,
    /// Where to serve `/metrics`, `/connz` and the status page
    /// (`--metrics`); `None`: not at all.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--cluster` and its options: join other brokers through NATS.
    pub cluster: Option<crate::cluster::ClusterOptions>,
    /// Queues declared up front (`--queue TOPIC[=NAME]`): (topic, name).
    pub queues: Vec<(String, String)>,
    /// The bounds of every queue.
    pub queue_limits: crate::engine::queues::QueueLimits,
    /// Where queued messages are kept across restarts; `None`: in memory.
    pub queue_dir: Option<PathBuf>,
    /// Who writes the journal in `queue_dir`.
    pub queue_writer: QueueWriter,
}

/// `--queue-writer`: who writes the queue journal (`--queue-dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueWriter {
    /// [`Aio`](QueueWriter::Aio) where the file system allows `O_DIRECT`,
    /// else [`Thread`](QueueWriter::Thread).
    #[default]
    Auto,
    /// The socket thread, `O_DIRECT` through Linux AIO; the start fails
    /// where it cannot.
    Aio,
    /// A store thread, with `write` and `fdatasync`.
    Thread,
}

/// `--identity-check`: what the broker does with a CONNECT, SUB or PUT
/// that breaks the identity or role rules of the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityCheck {
    /// Refuse it (`ERROR`), log and count it.
    #[default]
    Enforce,
    /// Carry it out, but log and count it: for migrating a site whose
    /// allowlist names are not yet its nodes' identities.
    Log,
}

impl IdentityCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityCheck::Enforce => "enforce",
            IdentityCheck::Log => "log",
        }
    }
}

impl std::str::FromStr for IdentityCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(IdentityCheck::Enforce),
            "log" => Ok(IdentityCheck::Log),
            _ => Err(format!("{s:?}: expected enforce or log")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut config = Config {
            bind: "*".into(),
            port: DEFAULT_PORT,
            curve_secret_key: None,
            log_level: Level::Info,
            status_interval: Duration::from_secs(60),
            sndhwm: DEFAULT_SNDHWM,
            client_buffer: DEFAULT_CLIENT_BUFFER,
            rcvhwm: DEFAULT_RCVHWM,
            backlog: DEFAULT_BACKLOG,
            io_threads: 1,
            limits: Limits::default(),
            max_body_size: 0,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            authorized_keys: None,
            authorized_keys_poll: Some(DEFAULT_KEYS_POLL),
            identity_check: IdentityCheck::Enforce,
            node_publish_agents: Vec::new(),
            metrics: None,
            cluster: None,
            queues: Vec::new(),
            queue_limits: Default::default(),
            queue_dir: None,
            queue_writer: QueueWriter::Auto,
        };
        config.set_max_body_size(DEFAULT_MAX_BODY_SIZE);
        config
    }
}

impl Config {
    /// Sets the body limit and, with it, the largest frame libzmq accepts
    /// at all (the limit plus [`FRAME_SLACK`]).
    pub fn set_max_body_size(&mut self, bytes: usize) {
        self.max_body_size = bytes;
        self.limits.max_frame_size = bytes.saturating_add(FRAME_SLACK);
    }
}
