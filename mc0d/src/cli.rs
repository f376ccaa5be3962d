//! The command lines of `mc0d` and `mc0-keygen` as clap definitions. The
//! binaries parse with them, and `examples/man.rs` (`make man`) writes the
//! man pages and shell completions from the same definitions, so the three
//! cannot drift apart.
//!
//! Usage errors stay one line naming the culprit ([`usage_error`]), as
//! they were before clap: the exit code 2 and that line are what scripts
//! and systemd units rely on.

use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, ValueEnum};

use crate::config::{DEFAULT_CLIENT_BUFFER, DEFAULT_PORT, DEFAULT_RCVHWM, DEFAULT_SNDHWM};

const MC0D_ABOUT: &str = "The mc0 broker: routes MCollective messages between ZeroMQ (CURVE) clients.";

const MC0D_AFTER: &str = "\
SIGINT/SIGTERM stop it (exit code 0); SIGHUP reloads --authorized-keys.
Exit code 2: a usage or startup error (bad option or value, unreadable key
file or allowlist, port in use, a libzmq without CURVE), reported as one line
naming the culprit; 1: a failure while running.";

/// `mc0d`'s options; see README's option table for each one's meaning.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mc0d",
    version = mc0::VERSION,
    about = MC0D_ABOUT,
    after_help = MC0D_AFTER,
    override_usage = "mc0d --curve-private-key FILE [OPTIONS]\n       mc0d --no-curve [OPTIONS]",
    // `--status-interval -1` is a bad value for the option, not an unknown option.
    allow_negative_numbers = true,
    max_term_width = 100,
    // As before clap: a repeated option takes its last value.
    args_override_self = true
)]
pub struct Mc0dArgs {
    /// The broker's CURVE secret key (Z85, as written by mc0-keygen);
    /// required unless --no-curve
    #[arg(long, value_name = "FILE")]
    pub curve_private_key: Option<PathBuf>,

    /// Run without encryption or authentication (NULL mechanism); clients
    /// must set curve = false
    #[arg(long)]
    pub no_curve: bool,

    /// Interface to listen on: *, an IPv4 or IPv6 address, or an interface
    /// name
    #[arg(long, value_name = "ADDR", default_value = "*", value_parser = interface)]
    pub bind: String,

    /// TCP port
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PORT, value_parser = port)]
    pub port: u16,

    /// What to log: error, warn, info (one line per connect, disconnect,
    /// expiry) or debug (also one line per message)
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// How often to log the status line when it changed; 0 disables it
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = number::<u64>)]
    pub status_interval: u64,

    /// Messages libzmq queues per client; beyond it mc0d buffers them
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SNDHWM, value_parser = positive_i32)]
    pub sndhwm: i32,

    /// Bytes mc0d buffers per client beyond --sndhwm (64 MiB); past it
    /// messages to that client are dropped. A fleet's replies to one request
    /// must fit: nodes x reply size
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CLIENT_BUFFER, value_parser = size)]
    pub client_buffer: usize,

    /// Messages queued from each client before its stream is throttled
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RCVHWM, value_parser = positive_i32)]
    pub rcvhwm: i32,

    /// Only clients whose CURVE public key is listed may connect, each as
    /// the MCollective identity it is listed under. PATH is a directory of
    /// NAME.public files (node keys in PATH/nodes/, client keys in
    /// PATH/clients/, either role directly in PATH) or a file of lines
    /// KEY NAME [node|client]. Reloaded on SIGHUP; sessions of removed keys
    /// are dropped
    #[arg(long, value_name = "PATH", value_parser = allowlist_path, help_heading = "Access control (CURVE only)")]
    pub authorized_keys: Option<PathBuf>,

    /// Also reload when PATH changes, checked this often; 0: only on SIGHUP
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5,
        value_parser = number::<u64>,
        help_heading = "Access control (CURVE only)"
    )]
    pub authorized_keys_poll: u64,

    /// enforce: refuse a CONNECT, SUB or PUT that breaks the identity or role
    /// rules; log: allow it, but log and count it (for migrating a site
    /// whose names differ from its identities) [default: enforce]
    #[arg(long, value_name = "MODE", value_enum, help_heading = "Access control (CURVE only)")]
    pub identity_check: Option<IdentityCheckArg>,

    /// Comma-separated agents node keys may send requests to, e.g.
    /// registration (MCollective servers publish to it when registration is
    /// on) [default: none]
    #[arg(long, value_name = "LIST", value_parser = agents, help_heading = "Access control (CURVE only)")]
    pub node_publish_agents: Option<Agents>,

    /// Serve Prometheus metrics (/metrics), the sessions as JSON (/connz)
    /// and a status page (/) over HTTP on ADDR:PORT, e.g. 127.0.0.1:9616.
    /// Keep it on loopback or behind a proxy: it lists every session
    #[arg(long, value_name = "ADDR:PORT", value_parser = socket_addr, help_heading = "Monitoring")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Largest PUT body (64 MiB); a frame over this plus 1 MiB drops the
    /// connection
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = crate::config::DEFAULT_MAX_BODY_SIZE,
        value_parser = size,
        help_heading = "Limits (a client over one gets ERROR; everyone else is served on)"
    )]
    pub max_body_size: usize,

    /// Most frames in one message
    #[arg(long, value_name = "N", default_value_t = mc0::protocol::Limits::default().max_frames, value_parser = size,
          help_heading = "Limits (a client over one gets ERROR; everyone else is served on)")]
    pub max_frames: usize,

    /// Most header pairs in one message
    #[arg(long, value_name = "N", default_value_t = mc0::protocol::Limits::default().max_headers, value_parser = size,
          help_heading = "Limits (a client over one gets ERROR; everyone else is served on)")]
    pub max_headers: usize,

    /// Longest topic name
    #[arg(long, value_name = "BYTES", default_value_t = mc0::protocol::Limits::default().max_topic_len,
          value_parser = size, help_heading = "Limits (a client over one gets ERROR; everyone else is served on)")]
    pub max_topic_length: usize,

    /// Most topics one client may subscribe to
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_SUBSCRIPTIONS, value_parser = size,
          help_heading = "Limits (a client over one gets ERROR; everyone else is served on)")]
    pub max_subscriptions: usize,

    /// Join a cluster of brokers through these NATS servers (comma-separated
    /// nats:// or tls:// URLs; any of them will do): topics with local
    /// subscribers are subscribed in NATS, every PUT is also published there
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',', help_heading = CLUSTER)]
    pub cluster: Vec<String>,

    /// The cluster's name: the first token of every subject, so several
    /// clusters can share NATS servers [default: mc0]
    #[arg(long, value_name = "NAME", requires = "cluster", help_heading = CLUSTER)]
    pub cluster_name: Option<String>,

    /// NATS user (with --cluster-password)
    #[arg(long, value_name = "USER", requires = "cluster", requires = "cluster_password", help_heading = CLUSTER)]
    pub cluster_user: Option<String>,

    /// NATS password (with --cluster-user; mind that the command line is
    /// visible to other local users: prefer a credentials file)
    #[arg(long, value_name = "PASSWORD", requires = "cluster_user", help_heading = CLUSTER)]
    pub cluster_password: Option<String>,

    /// NATS authentication token
    #[arg(long, value_name = "TOKEN", requires = "cluster", help_heading = CLUSTER)]
    pub cluster_token: Option<String>,

    /// NATS credentials file (.creds: JWT and nkey seed)
    #[arg(long, value_name = "FILE", requires = "cluster", help_heading = CLUSTER)]
    pub cluster_creds: Option<PathBuf>,

    /// File holding the NATS nkey seed (SU...)
    #[arg(long, value_name = "FILE", requires = "cluster", help_heading = CLUSTER)]
    pub cluster_nkey: Option<PathBuf>,

    /// CA certificates (PEM) to verify the NATS servers with; turns TLS on
    #[arg(long, value_name = "FILE", requires = "cluster", help_heading = CLUSTER)]
    pub cluster_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that verify clients (with
    /// --cluster-tls-key)
    #[arg(long, value_name = "FILE", requires = "cluster", requires = "cluster_tls_key", help_heading = CLUSTER)]
    pub cluster_tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "cluster_tls_cert", help_heading = CLUSTER)]
    pub cluster_tls_key: Option<PathBuf>,
    /// Declare a queue of TOPIC named NAME (default: the topic itself): the
    /// broker keeps TOPIC's messages for it from the start, even before its
    /// first consumer. Repeatable
    #[arg(long, value_name = "TOPIC[=NAME]", value_parser = queue, action = clap::ArgAction::Append,
          help_heading = "Queues")]
    pub queue: Vec<(String, String)>,

    /// Most messages one queue holds; a PUT beyond gets ERROR
    #[arg(long, value_name = "N", default_value_t = crate::engine::queues::DEFAULT_MAX_MESSAGES, value_parser = size,
          help_heading = "Queues")]
    pub queue_max_messages: usize,

    /// Most bytes (bodies and headers) one queue holds (256 MiB); a PUT
    /// beyond gets ERROR
    #[arg(long, value_name = "BYTES", default_value_t = crate::engine::queues::DEFAULT_MAX_BYTES, value_parser = size,
          help_heading = "Queues")]
    pub queue_max_bytes: usize,

    /// Forget a queue that was empty, without consumers and not declared
    /// for this long
    #[arg(long, value_name = "SECS", default_value_t = crate::engine::queues::DEFAULT_IDLE.as_secs(),
          value_parser = number::<u64>, help_heading = "Queues")]
    pub queue_idle: u64,

    /// Keep queued messages in DIR (queues.journal, queues.redb): a PUT to a queue is
    /// answered OK only once it is on disk (flushed), and survives a restart
    /// or kill -9. Without it queues live in memory
    #[arg(long, value_name = "DIR", help_heading = "Queues")]
    pub queue_dir: Option<PathBuf>,

    /// Who writes the queue journal in --queue-dir: `aio`, the broker's
    /// socket thread itself (O_DIRECT, Linux AIO; the cheapest OK per PUT;
    /// the start fails where the file system has no O_DIRECT); `thread`, a
    /// store thread (write + fdatasync); `auto`: aio where it works, else
    /// thread [default: auto]
    #[arg(long, value_name = "WHO", help_heading = "Queues")]
    pub queue_writer: Option<QueueWriterArg>,
}

/// `--queue TOPIC[=NAME]`: the name defaults to the topic.
fn queue(value: &str) -> Result<(String, String), String> {
    let (topic, name) = match value.rsplit_once('=') {
        Some((topic, name)) => (topic, name),
        None => (value, value),
    };
    if topic.is_empty() || name.is_empty() {
        return Err("expected TOPIC or TOPIC=NAME".into());
    }
    Ok((topic.to_string(), name.to_string()))
}

/// The help section of the `--cluster` options.
const CLUSTER: &str = "Cluster (NATS)";

/// `--log-level`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl From<LogLevel> for mc0::log::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => mc0::log::Level::Error,
            LogLevel::Warn => mc0::log::Level::Warn,
            LogLevel::Info => mc0::log::Level::Info,
            LogLevel::Debug => mc0::log::Level::Debug,
        }
    }
}

/// `--queue-writer`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueWriterArg {
    Auto,
    Aio,
    Thread,
}

impl From<QueueWriterArg> for crate::config::QueueWriter {
    fn from(who: QueueWriterArg) -> Self {
        match who {
            QueueWriterArg::Auto => crate::config::QueueWriter::Auto,
            QueueWriterArg::Aio => crate::config::QueueWriter::Aio,
            QueueWriterArg::Thread => crate::config::QueueWriter::Thread,
        }
    }
}

/// `--identity-check`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheckArg {
    Enforce,
    Log,
}

impl From<IdentityCheckArg> for crate::config::IdentityCheck {
    fn from(mode: IdentityCheckArg) -> Self {
        match mode {
            IdentityCheckArg::Enforce => crate::config::IdentityCheck::Enforce,
            IdentityCheckArg::Log => crate::config::IdentityCheck::Log,
        }
    }
}

/// `--node-publish-agents registration,inventory`: agent names, as
/// MCollective writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agents(pub Vec<String>);

fn agents(value: &str) -> Result<Agents, String> {
    let agents: Vec<String> = value.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    match agents.iter().find(|a| !mc0::topics::is_identity(a)) {
        Some(bad) => Err(format!("{bad:?} is not an agent name")),
        None => Ok(Agents(agents)),
    }
}

fn socket_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    value.trim().parse().map_err(|_| "expected ADDR:PORT, e.g. 127.0.0.1:9616 or [::1]:9616".to_string())
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value.trim().parse::<T>().map_err(|_| "expected a number".to_string())
}

/// A positive count or size.
fn size(value: &str) -> Result<usize, String> {
    match number::<usize>(value)? {
        0 => Err("must be positive".into()),
        n => Ok(n),
    }
}

fn positive_i32(value: &str) -> Result<i32, String> {
    match number::<i32>(value)? {
        n if n <= 0 => Err("must be positive".into()),
        n => Ok(n),
    }
}

fn port(value: &str) -> Result<u16, String> {
    match number::<u16>(value) {
        Ok(0) | Err(_) => Err("must be 1-65535".into()),
        Ok(n) => Ok(n),
    }
}

fn interface(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("expected *, an address or an interface".into());
    }
    Ok(value.to_string())
}

fn allowlist_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("expected a directory or file".into());
    }
    Ok(value.into())
}

const KEYGEN_ABOUT: &str = "Writes a CURVE keypair as NAME.public and NAME.private: 40-character Z85 lines, \
                            the format ffi-rzmq and the legacy tools use.";

/// `mc0-keygen`'s options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mc0-keygen",
    version = mc0::VERSION,
    about = KEYGEN_ABOUT,
    override_usage = "mc0-keygen [--force] NAME\n       mc0-keygen --print",
    after_help = "Exit code 2: a usage error, or a key file that cannot be written (named).",
    max_term_width = 100,
    // As before clap: a repeated option takes its last value.
    args_override_self = true
)]
pub struct KeygenArgs {
    /// Overwrite existing key files
    #[arg(short, long)]
    pub force: bool,

    /// Print a new public and private key to stdout instead of writing
    /// files (public key first)
    #[arg(long)]
    pub print: bool,

    /// Write NAME.public and NAME.private (mode 0600)
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
}

/// What a parse ended with besides options to run with.
#[derive(Debug)]
pub enum Early {
    /// `--help` or `--version`: print this on stdout, exit 0.
    Print(String),
    /// A usage error: this one line on stderr, exit 2.
    Usage(String),
}

/// Parses `args` (without the program name) with `P`'s definition.
pub fn parse<P: Parser>(program: &str, args: impl IntoIterator<Item = String>) -> Result<P, Early> {
    P::try_parse_from(std::iter::once(program.to_string()).chain(args)).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Early::Print(e.render().to_string()),
        _ => Early::Usage(usage_error(&e)),
    })
}

/// One line naming the culprit, from a clap error (which would otherwise
/// print several lines with a usage summary).
pub fn usage_error(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::UnknownArgument {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            let what = if arg.starts_with('-') { "unknown option" } else { "unexpected argument" };
            return format!("{what} {arg:?} (see --help)");
        }
    }
    // "--cluster-user needs --cluster-password": clap names the missing one
    // on a line of its own.
    if e.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg) {
            return format!("missing {} (see --help)", missing.join(", "));
        }
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("{first}: expected {} (see --help)", valid.join(", ")),
        _ => format!("{first} (see --help)"),
    }
}
