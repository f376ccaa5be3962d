//! Connector settings, set from MCollective's `plugin.zeromq.*` keys (given
//! without that prefix, though it is tolerated), and validated into
//! [`Settings`] when connecting.
//!
//! Every error names the offending key or file, because the person reading
//! it is editing `server.cfg`/`client.cfg`, not this code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Error, ErrorKind};
use crate::keys::{self, Key};
use crate::protocol;

pub use crate::protocol::DEFAULT_PORT;
/// Default heartbeat in seconds: the protocol's default CONNECT TTL.
pub const DEFAULT_HEARTBEAT_SECS: f64 = protocol::DEFAULT_TTL_MS as f64 / 1000.0;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 10.0;
pub const DEFAULT_CLOSE_TIMEOUT_SECS: f64 = 1.0;
pub const DEFAULT_SEND_QUEUE: usize = 10_000;
pub const DEFAULT_RECEIVE_QUEUE: usize = 100_000;
pub const DEFAULT_RECONNECT_MAX_SECS: f64 = 10.0;
/// First reconnect delay before jitter: ActiveMQ's connector starts at
/// 0.01 s and Choria at 0.5 s; 0.1 s moves a node off a dead broker
/// quickly while the jitter (×0.5–1.5) still spreads a fleet over 0.1 s.
pub const DEFAULT_RECONNECT_INITIAL_SECS: f64 = 0.1;
/// Most brokers in a pool (`pool.size`).
pub const MAX_POOL: usize = 1000;

/// Every key [`Config::set`] accepts (defaults: [`Config::default`] and
/// docs/CONNECTOR.md).
pub const KEYS: &[&str] = &[
    "broker.host",
    "broker.port",
    "curve",
    "broker.public_key",
    "public_key",
    "private_key",
    "heartbeat",
    "identity",
    "connect_timeout",
    "close_timeout",
    "send_queue",
    "receive_queue",
    "reconnect_max",
    "connect_retry",
    "reconnect_initial",
    "randomize",
    "pool.size",
    "pool.N.host",
    "pool.N.port",
    "pool.N.public_key",
    "explicit_ack",
];

/// What the user configured, unvalidated where validation needs the file
/// system (key files are read by [`Config::resolve`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `broker.host` as given: one or more comma-separated `host[:port]`.
    pub broker_host: Option<String>,
    pub broker_port: u16,
    pub curve: bool,
    pub broker_public_key: Option<PathBuf>,
    pub public_key: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// Heartbeat interval; CONNECT's TTL in milliseconds.
    pub heartbeat: Duration,
    pub identity: Option<String>,
    /// Bound on the initial handshake, each re-handshake and each SUB/UNSUB.
    pub connect_timeout: Duration,
    /// Bound on close(): flushing queued publishes and DISCONNECT's OK.
    pub close_timeout: Duration,
    /// Most publishes waiting to go out (e.g. while reconnecting), and most
    /// sent but not yet acknowledged; past it publish fails with QueueFull.
    pub send_queue: usize,
    /// Most received messages waiting for receive(); past it new ones are
    /// dropped (and logged) rather than growing without bound.
    pub receive_queue: usize,
    /// Cap of the exponential backoff before a new socket replaces one the
    /// connector gave up on (broker silent, no answer to CONNECT, key
    /// refused). libzmq's own TCP reconnects are capped at 1 s, or at this
    /// if smaller.
    pub reconnect_max: Duration,
    /// Connect in the background: [`Connector::connect`] returns once the
    /// configuration and key files are valid, and the connector keeps
    /// trying (with the backoff above, logging each failure) until the
    /// broker answers; meanwhile subscriptions are held and publishes
    /// queued. For daemons (mcollectived) that must start whether or not
    /// the broker is up.
    ///
    /// [`Connector::connect`]: super::Connector::connect
    pub connect_retry: bool,
    /// Queue deliveries are acknowledged only by [`Connector::ack`](crate::connector::Connector::ack),
    /// not when `receive` hands them out (the default).
    pub explicit_ack: bool,
    /// First delay of that backoff (doubling per failed attempt).
    pub reconnect_initial: Duration,
    /// Shuffle the pool once per connector, so a fleet spreads over it
    /// (and over the survivors when one broker dies).
    pub randomize: bool,
    /// MCollective's pool form: `pool.size` and `pool.N.*`, by N.
    pub pool_size: Option<usize>,
    pub pool: BTreeMap<usize, PoolEntry>,
}

/// `(host, port, the key that set the host, the key naming its public key
/// file, that file)`.
type PoolBroker = (String, u16, String, String, Option<PathBuf>);

/// One `pool.N.*` entry as set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolEntry {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub public_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker_host: None,
            broker_port: DEFAULT_PORT,
            curve: true,
            broker_public_key: None,
            public_key: None,
            private_key: None,
            heartbeat: Duration::from_secs_f64(DEFAULT_HEARTBEAT_SECS),
            identity: None,
            connect_timeout: Duration::from_secs_f64(DEFAULT_CONNECT_TIMEOUT_SECS),
            close_timeout: Duration::from_secs_f64(DEFAULT_CLOSE_TIMEOUT_SECS),
            send_queue: DEFAULT_SEND_QUEUE,
            receive_queue: DEFAULT_RECEIVE_QUEUE,
            reconnect_max: Duration::from_secs_f64(DEFAULT_RECONNECT_MAX_SECS),
            connect_retry: false,
            reconnect_initial: Duration::from_secs_f64(DEFAULT_RECONNECT_INITIAL_SECS),
            randomize: true,
            pool_size: None,
            pool: BTreeMap::new(),
            explicit_ack: false,
        }
    }
}

/// Our CURVE keys in binary form, ready for the socket options (each
/// broker's key is in its [`Server`]).
#[derive(Clone, PartialEq, Eq)]
pub struct CurveKeys {
    pub public: Key,
    pub secret: Key,
}

impl std::fmt::Debug for CurveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveKeys").field("public", &keys::key_to_z85(&self.public)).finish_non_exhaustive()
    }
}

/// One broker (server) of the pool. (Not called Broker: libmc0 carries no
/// broker code, and tests/symbols.rs checks that by name.)
#[derive(Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// The configuration key that named it (`broker.host`, `pool.2.host`),
    /// for errors about it.
    pub host_key: String,
    /// `tcp://host:port` (IPv6 literals bracketed).
    pub endpoint: String,
    pub ipv6: bool,
    /// Its CURVE public key (with CURVE): `pool.N.public_key`, else
    /// `broker.public_key`.
    pub server_key: Option<Key>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.server_key.as_ref().map(keys::key_to_z85);
        f.debug_struct("Server").field("endpoint", &self.endpoint).field("server_key", &key).finish()
    }
}

/// A validated configuration: everything the engine needs, files read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pool, in configured order (never empty); the session shuffles
    /// its own order when `randomize` is on.
    pub brokers: Vec<Server>,
    pub curve: Option<CurveKeys>,
    pub ttl: Duration,
    pub ttl_ms: u64,
    pub identity: String,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    pub send_queue: usize,
    pub receive_queue: usize,
    pub reconnect_max: Duration,
    /// See [`Config::connect_retry`].
    pub connect_retry: bool,
    pub reconnect_initial: Duration,
    pub randomize: bool,
    /// See [`Config::explicit_ack`].
    pub explicit_ack: bool,
}

/// A Config error about `key`, which it names as data too.
fn config_error(key: &str, message: String) -> Error {
    Error::new(ErrorKind::Config, message).with_key(key)
}

/// Longest identity accepted: a ZeroMQ routing id is at most 255 bytes and
/// ours is `"<identity> <pid> <n>"`.
const MAX_IDENTITY_LEN: usize = 200;

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// Builds a config from key/value pairs, as [`Config::set`] each.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Config, Error> {
        let mut config = Config::new();
        for (k, v) in pairs {
            config.set(k.as_ref(), v.as_ref())?;
        }
        Ok(config)
    }

    /// Sets one key (see [`KEYS`]). Surrounding whitespace in the value is
    /// ignored, as MCollective's config parser leaves it in. Errors
    /// (kind Config) name the key and the rejected value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let key = key.trim();
        let key = key.strip_prefix("plugin.zeromq.").unwrap_or(key);
        let value = value.trim();
        match key {
            "broker.host" => {
                if value.is_empty() {
                    return Err(config_error(key, "broker.host: empty host name".into()));
                }
                // Checked now so the error comes at the line that is wrong.
                parse_host_list(value, self.broker_port)?;
                self.broker_host = Some(value.to_string());
            }
            "broker.port" => self.broker_port = parse_port(key, value)?,
            "curve" => self.curve = parse_bool(key, value)?,
            "broker.public_key" => self.broker_public_key = Some(parse_path(key, value)?),
            "public_key" => self.public_key = Some(parse_path(key, value)?),
            "private_key" => self.private_key = Some(parse_path(key, value)?),
            // CONNECT's TTL must be in the protocol's range.
            "heartbeat" => {
                let ms = &protocol::TTL_RANGE_MS;
                self.heartbeat = parse_seconds(key, value, *ms.start() as f64 / 1000.0, *ms.end() as f64 / 1000.0)?
            }
            "identity" => {
                if !crate::topics::is_identity(value) || value.len() > MAX_IDENTITY_LEN {
                    return Err(config_error(
                        key,
                        format!(
                            "identity: {value:?} is not an MCollective identity: 1 to {MAX_IDENTITY_LEN} letters, \
                         digits, '_', '.' or '-' (it is the first word of the routing id and names the node's topic)"
                        ),
                    ));
                }
                self.identity = Some(value.to_string());
            }
            "connect_timeout" => self.connect_timeout = parse_seconds(key, value, 0.001, 86_400.0)?,
            "close_timeout" => self.close_timeout = parse_seconds(key, value, 0.0, 3_600.0)?,
            "send_queue" => self.send_queue = parse_count(key, value)?,
            "receive_queue" => self.receive_queue = parse_count(key, value)?,
            "reconnect_max" => self.reconnect_max = parse_seconds(key, value, 0.01, 86_400.0)?,
            "connect_retry" => self.connect_retry = parse_bool(key, value)?,
            "reconnect_initial" => self.reconnect_initial = parse_seconds(key, value, 0.001, 3_600.0)?,
            "randomize" => self.randomize = parse_bool(key, value)?,
            "pool.size" => {
                self.pool_size =
                    Some(value.parse::<usize>().ok().filter(|n| (1..=MAX_POOL).contains(n)).ok_or_else(|| {
                        config_error(
                            key,
                            format!("pool.size: {value:?} is not a whole number between 1 and {MAX_POOL}"),
                        )
                    })?)
            }
            _ if key.starts_with("pool.") => self.set_pool_entry(key, value)?,
            "explicit_ack" => self.explicit_ack = parse_bool(key, value)?,
            _ => {
                return Err(config_error(key, format!("unknown key {key:?} (known keys: {})", KEYS.join(", "))));
            }
        }
        Ok(())
    }

    /// `pool.N.host`, `pool.N.port`, `pool.N.public_key`.
    fn set_pool_entry(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let unknown = || config_error(key, format!("unknown key {key:?} (known keys: {})", KEYS.join(", ")));
        let mut parts = key.splitn(3, '.').skip(1);
        let (Some(n), Some(field)) = (parts.next(), parts.next()) else { return Err(unknown()) };
        let n = n.parse::<usize>().ok().filter(|n| (1..=MAX_POOL).contains(n)).ok_or_else(unknown)?;
        let entry = self.pool.entry(n).or_default();
        match field {
            "host" => {
                if value.is_empty() || value.contains(',') {
                    return Err(config_error(key, format!("{key}: {value:?} is not one host name or address")));
                }
                entry.host = Some(value.to_string());
            }
            "port" => entry.port = Some(parse_port(key, value)?),
            "public_key" => entry.public_key = Some(parse_path(key, value)?),
            _ => return Err(unknown()),
        }
        Ok(())
    }

    /// The pool as configured, in order: `(host, port, key of the host,
    /// key of its public key file, that file)`. Errors name the key at
    /// fault.
    fn pool_entries(&self) -> Result<Vec<PoolBroker>, Error> {
        let pool_form = self.pool_size.is_some() || !self.pool.is_empty();
        let shared_key = || ("broker.public_key".to_string(), self.broker_public_key.clone());
        match (&self.broker_host, pool_form) {
            (Some(_), true) => Err(config_error(
                "broker.host",
                "broker.host and pool.size/pool.N.*: both forms of the broker list are set; use one".into(),
            )),
            (None, false) => {
                Err(config_error("broker.host", "broker.host is required (plugin.zeromq.broker.host)".into()))
            }
            (Some(list), false) => Ok(parse_host_list(list, self.broker_port)?
                .into_iter()
                .map(|(host, port)| {
                    let (key, path) = shared_key();
                    (host, port, "broker.host".to_string(), key, path)
                })
                .collect()),
            (None, true) => {
                let size = self.pool_size.ok_or_else(|| {
                    config_error("pool.size", "pool.size is required with pool.N.* (the number of brokers)".into())
                })?;
                if let Some(n) = self.pool.keys().find(|n| **n > size) {
                    return Err(config_error(
                        &format!("pool.{n}.host"),
                        format!("pool.{n}.*: beyond pool.size = {size}"),
                    ));
                }
                (1..=size)
                    .map(|n| {
                        let entry = self.pool.get(&n).cloned().unwrap_or_default();
                        let host_key = format!("pool.{n}.host");
                        let host = entry.host.ok_or_else(|| {
                            config_error(&host_key, format!("{host_key} is required (pool.size is {size})"))
                        })?;
                        let (key, path) = match entry.public_key {
                            Some(path) => (format!("pool.{n}.public_key"), Some(path)),
                            None => shared_key(),
                        };
                        Ok((host, entry.port.unwrap_or(DEFAULT_PORT), host_key, key, path))
                    })
                    .collect()
            }
        }
    }

    /// The CONNECT TTL in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        (self.heartbeat.as_millis() as u64).max(1)
    }

    /// Validates the whole config and reads the key files. Missing required
    /// keys are Config errors naming the key; unreadable or malformed key
    /// files are Key errors naming the key and the file.
    pub fn resolve(&self) -> Result<Settings, Error> {
        let pool = self.pool_entries()?;
        let required = |key: &str, path: &Option<PathBuf>| -> Result<PathBuf, Error> {
            path.clone().ok_or_else(|| {
                config_error(
                    key,
                    format!(
                        "{key} is required when curve is on (plugin.zeromq.{key}; or set plugin.zeromq.curve = false)"
                    ),
                )
            })
        };
        // Every missing key is reported before any file is read.
        let mut key_paths = Vec::with_capacity(pool.len());
        for (_, _, _, key_name, key_path) in &pool {
            key_paths.push(if self.curve { Some(required(key_name, key_path)?) } else { None });
        }
        let secret_path = if self.curve { Some(required("private_key", &self.private_key)?) } else { None };
        let mut brokers = Vec::with_capacity(pool.len());
        for ((host, port, host_key, key_name, _), key_path) in pool.into_iter().zip(key_paths) {
            let server_key = key_path.map(|path| read_key(&key_name, &path)).transpose()?;
            let ipv6 = host.contains(':');
            let endpoint = if ipv6 && !host.starts_with('[') {
                format!("tcp://[{host}]:{port}")
            } else {
                format!("tcp://{host}:{port}")
            };
            brokers.push(Server { host, port, host_key, endpoint, ipv6, server_key });
        }
        let curve = if let Some(secret_path) = secret_path {
            let secret = read_key("private_key", &secret_path)?;
            let pair = keys::KeyPair::from_secret(secret)
                .map_err(|e| Error::new(ErrorKind::Zmq, e).with_key("private_key"))?;
            if let Some(public_path) = &self.public_key {
                let public = read_key("public_key", public_path)?;
                if public != pair.public {
                    return Err(Error::new(
                        ErrorKind::Key,
                        format!(
                            "public_key: key file {} is not the public half of private_key {}",
                            public_path.display(),
                            secret_path.display()
                        ),
                    )
                    .with_key("public_key"));
                }
            }
            Some(CurveKeys { public: pair.public, secret })
        } else {
            None
        };
        let identity = match &self.identity {
            Some(identity) => identity.clone(),
            None => hostname(),
        };
        Ok(Settings {
            brokers,
            curve,
            ttl: Duration::from_millis(self.ttl_ms()),
            ttl_ms: self.ttl_ms(),
            identity,
            connect_timeout: self.connect_timeout,
            close_timeout: self.close_timeout,
            send_queue: self.send_queue,
            receive_queue: self.receive_queue,
            reconnect_max: self.reconnect_max,
            connect_retry: self.connect_retry,
            reconnect_initial: self.reconnect_initial.min(self.reconnect_max),
            randomize: self.randomize,
            explicit_ack: self.explicit_ack,
        })
    }
}

impl Settings {
    /// "host:port, host:port" of the whole pool, for messages.
    pub fn pool_names(&self) -> String {
        self.brokers.iter().map(Server::name).collect::<Vec<_>>().join(", ")
    }
}

impl Server {
    /// `host:port` for messages.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Checks that `host` resolves, so a misspelt or unknown name is
    /// reported at once and as such (libzmq would silently retry it). The
    /// name itself goes to libzmq, which resolves it again on every
    /// reconnect and so follows DNS changes.
    pub fn check_host_resolves(&self) -> Result<(), Error> {
        use std::net::ToSocketAddrs;
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        match (host, self.port).to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("no address".to_string()),
            Err(e) => Err(e.to_string()),
        }
        .map_err(|why| {
            let key = &self.host_key;
            Error::new(ErrorKind::Resolve, format!("cannot resolve the broker host name {host:?} ({key}): {why}"))
                .with_key(key)
        })
    }
}

/// `broker.host`'s comma-separated `host[:port]` entries. A bare IPv6
/// literal (more than one ':') has no port; `[v6]:port` has one.
fn parse_host_list(list: &str, default_port: u16) -> Result<Vec<(String, u16)>, Error> {
    const KEY: &str = "broker.host";
    list.split(',')
        .map(str::trim)
        .map(|entry| {
            if entry.is_empty() {
                return Err(config_error(KEY, format!("broker.host: empty entry in {list:?}")));
            }
            let bracketed = entry.starts_with('[');
            let (host, port) = match entry.rsplit_once(':') {
                Some((host, port)) if bracketed && host.ends_with(']') => (host, Some(port)),
                Some((host, port)) if !bracketed && !host.contains(':') => (host, Some(port)),
                _ => (entry, None),
            };
            let port = match port {
                Some(port) => parse_port(KEY, port).map_err(|_| {
                    config_error(KEY, format!("broker.host: {entry:?}: {port:?} is not a TCP port (1-65535)"))
                })?,
                None => default_port,
            };
            if host.is_empty() || host == "[]" {
                return Err(config_error(KEY, format!("broker.host: {entry:?} has no host name")));
            }
            Ok((host.to_string(), port))
        })
        .collect()
}

fn parse_port(key: &str, value: &str) -> Result<u16, Error> {
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| config_error(key, format!("{key}: {value:?} is not a TCP port (1-65535)")))
}

fn read_key(key: &str, path: &Path) -> Result<Key, Error> {
    keys::read_key_file(path).map_err(|e| Error::new(ErrorKind::Key, format!("{key}: {e}")).with_key(key))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, Error> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(config_error(key, format!("{key}: {value:?} is not a boolean (true/false/yes/no/1/0)"))),
    }
}

fn parse_path(key: &str, value: &str) -> Result<PathBuf, Error> {
    if value.is_empty() {
        return Err(config_error(key, format!("{key}: empty file name")));
    }
    Ok(PathBuf::from(value))
}

fn parse_seconds(key: &str, value: &str, min: f64, max: f64) -> Result<Duration, Error> {
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (min..=max).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(config_error(key, format!("{key}: {value:?} is not a number of seconds between {min} and {max}"))),
    }
}

fn parse_count(key: &str, value: &str) -> Result<usize, Error> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=100_000_000).contains(n))
        .ok_or_else(|| config_error(key, format!("{key}: {value:?} is not a whole number between 1 and 100000000")))
}

/// The host name, as MCollective's default identity uses it.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length; gethostname
    // NUL-terminates within it when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len() - 1) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len() - 1);
    if rc != 0 || end == 0 {
        return "localhost".to_string();
    }
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    name.chars().take(MAX_IDENTITY_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(key: &str, value: &str) -> Error {
        Config::new().set(key, value).unwrap_err()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::new();
        assert_eq!(c.broker_port, 61616);
        assert!(c.curve);
        assert_eq!(c.ttl_ms(), 30_000);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.send_queue, 10_000);
        for key in KEYS {
            let e = Config::new().set(key, "\u{1}bad").map(|_| ());
            // Only free-form keys accept any text; all others reject it naming the key.
            if !["broker.host", "broker.public_key", "public_key", "private_key"].contains(key) && !key.contains(".N.")
            {
                assert!(e.unwrap_err().message().starts_with(key), "{key}");
            }
        }
    }

    #[test]
    fn every_key_is_settable_and_parsed() {
        let c = Config::from_pairs([
            ("broker.host", " broker.example.com "),
            ("plugin.zeromq.broker.port", "6000"),
            ("curve", "No"),
            ("broker.public_key", "/etc/b.public"),
            ("public_key", "/etc/c.public"),
            ("private_key", "/etc/c.private"),
            ("heartbeat", "0.5"),
            ("identity", "node1"),
            ("connect_timeout", "2.5"),
            ("close_timeout", "0"),
            ("send_queue", "5"),
            ("receive_queue", "7"),
            ("reconnect_max", "3"),
        ])
        .unwrap();
        assert_eq!(c.broker_host.as_deref(), Some("broker.example.com"));
        assert_eq!(c.broker_port, 6000);
        assert!(!c.curve);
        assert_eq!(c.broker_public_key, Some(PathBuf::from("/etc/b.public")));
        assert_eq!(c.ttl_ms(), 500);
        assert_eq!(c.identity.as_deref(), Some("node1"));
        assert_eq!(c.connect_timeout, Duration::from_millis(2500));
        assert_eq!(c.close_timeout, Duration::ZERO);
        assert_eq!((c.send_queue, c.receive_queue), (5, 7));
        assert_eq!(c.reconnect_max, Duration::from_secs(3));
        let s = c.resolve().unwrap();
        assert_eq!(s.brokers[0].endpoint, "tcp://broker.example.com:6000");
        assert!(s.curve.is_none());
        assert_eq!(s.identity, "node1");
    }

    #[test]
    fn booleans() {
        for (v, want) in [("true", true), ("YES", true), ("1", true), ("false", false), ("no", false), ("0", false)] {
            let mut c = Config::new();
            c.set("curve", v).unwrap();
            assert_eq!(c.curve, want, "{v}");
        }
        let e = err("curve", "maybe");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("curve") && e.message().contains("maybe"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, value) in [
            ("broker.port", "x"),
            ("broker.port", "0"),
            ("broker.port", "70000"),
            ("heartbeat", "abc"),
            ("heartbeat", "0"),
            ("heartbeat", "-1"),
            ("heartbeat", "NaN"),
            ("heartbeat", "inf"),
            ("connect_timeout", ""),
            ("send_queue", "0"),
            ("send_queue", "1.5"),
            ("receive_queue", "many"),
            ("reconnect_max", "0"),
            ("broker.host", " "),
            ("private_key", ""),
            ("identity", ""),
            ("identity", "web 01"),
            ("identity", "a\u{0}b"),
            ("identity", "caf\u{e9}"),
            ("identity", "node/1"),
        ] {
            let e = err(key, value);
            assert_eq!(e.kind(), ErrorKind::Config, "{key}={value}");
            assert!(e.message().starts_with(key), "{key}={value}: {e}");
        }
        let long = "x".repeat(MAX_IDENTITY_LEN + 1);
        assert!(err("identity", &long).message().contains("identity"));
        let e = err("identity", "web 01");
        assert!(e.message().contains("\"web 01\""), "names the value: {e}");
    }

    #[test]
    fn errors_carry_the_key_as_data() {
        assert_eq!(err("broker.port", "x").key(), Some("broker.port"));
        assert_eq!(err("plugin.zeromq.heartbeat", "x").key(), Some("heartbeat"), "without the prefix");
        assert_eq!(err("brokr.host", "x").key(), Some("brokr.host"), "an unknown key is the key at fault");
        assert_eq!(Config::new().resolve().unwrap_err().key(), Some("broker.host"));
        let mut c = Config::new();
        c.set("broker.host", "h").unwrap();
        assert_eq!(c.resolve().unwrap_err().key(), Some("broker.public_key"));
        c.set("broker.public_key", "/nonexistent/mc0-test/b.public").unwrap();
        c.set("private_key", "/nonexistent/mc0-test/c.private").unwrap();
        let e = c.resolve().unwrap_err();
        assert_eq!((e.kind(), e.key()), (ErrorKind::Key, Some("broker.public_key")));
    }

    #[test]
    fn connect_retry_is_off_unless_asked_for() {
        assert!(!Config::new().connect_retry);
        let c = Config::from_pairs([("connect_retry", "yes"), ("broker.host", "h"), ("curve", "no")]).unwrap();
        assert!(c.connect_retry && c.resolve().unwrap().connect_retry);
        assert_eq!(err("connect_retry", "sometimes").key(), Some("connect_retry"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("borker.host", "x");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("\"borker.host\""), "{e}");
        assert!(e.message().contains("broker.host"), "lists the known keys: {e}");
    }

    #[test]
    fn resolve_requires_host_and_keys() {
        let e = Config::new().resolve().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("broker.host"), "{e}");

        let mut c = Config::new();
        c.set("broker.host", "h").unwrap();
        let e = c.resolve().unwrap_err();
        assert!(e.message().contains("broker.public_key"), "{e}");
        c.set("broker.public_key", "/nonexistent/mc0-test/b.public").unwrap();
        let e = c.resolve().unwrap_err();
        assert!(e.message().contains("private_key"), "{e}");
        c.set("private_key", "/nonexistent/mc0-test/c.private").unwrap();
        let e = c.resolve().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Key);
        assert!(e.message().contains("/nonexistent/mc0-test/b.public"), "{e}");
    }

    fn endpoints(pairs: &[(&str, &str)]) -> Vec<String> {
        let c = Config::from_pairs(pairs.iter().copied().chain([("curve", "no")])).unwrap();
        c.resolve().unwrap().brokers.into_iter().map(|b| b.endpoint).collect()
    }

    #[test]
    fn a_pool_in_either_form() {
        assert_eq!(
            endpoints(&[("broker.host", "a:1, b ,[::1]:3,::2"), ("broker.port", "9")]),
            ["tcp://a:1", "tcp://b:9", "tcp://[::1]:3", "tcp://[::2]:9"]
        );
        assert_eq!(
            endpoints(&[("pool.size", "2"), ("pool.2.host", "b"), ("pool.1.host", "a"), ("pool.1.port", "7")]),
            ["tcp://a:7", "tcp://b:61616"]
        );
        let c = Config::from_pairs([("randomize", "no"), ("reconnect_initial", "0.5")]).unwrap();
        assert!(!c.randomize && Config::new().randomize);
        assert_eq!(c.reconnect_initial, Duration::from_millis(500));
    }

    #[test]
    fn pool_errors_name_the_key() {
        for (value, what) in [("a,,b", "empty entry"), ("a:0", "\"0\" is not a TCP port"), ("a:x,b", "\"x\"")] {
            let e = err("broker.host", value);
            assert_eq!(e.key(), Some("broker.host"), "{value}");
            assert!(e.message().contains(what), "{value}: {e}");
        }
        assert_eq!(err("pool.1.port", "70000").key(), Some("pool.1.port"));
        assert_eq!(err("pool.0.host", "a").key(), Some("pool.0.host"));
        assert_eq!(err("pool.1.hots", "a").key(), Some("pool.1.hots"));
        assert_eq!(err("pool.size", "0").key(), Some("pool.size"));
        let resolve = |pairs: &[(&str, &str)]| {
            Config::from_pairs(pairs.iter().copied().chain([("curve", "no")])).unwrap().resolve().unwrap_err()
        };
        let mixed = resolve(&[("broker.host", "a"), ("pool.size", "1"), ("pool.1.host", "b")]);
        assert!(mixed.message().contains("broker.host") && mixed.message().contains("pool.size"), "{mixed}");
        assert_eq!(resolve(&[("pool.size", "2"), ("pool.1.host", "a")]).key(), Some("pool.2.host"));
        assert_eq!(resolve(&[("pool.1.host", "a")]).key(), Some("pool.size"));
        assert_eq!(
            resolve(&[("pool.size", "1"), ("pool.1.host", "a"), ("pool.2.host", "b")]).key(),
            Some("pool.2.host")
        );
        // A per-broker key file is read as that key.
        let mut c = Config::from_pairs([("pool.size", "1"), ("pool.1.host", "a"), ("private_key", "/x")]).unwrap();
        c.set("pool.1.public_key", "/nonexistent/mc0-test/p1.public").unwrap();
        assert_eq!(c.resolve().unwrap_err().key(), Some("pool.1.public_key"));
    }

    #[test]
    fn an_unresolvable_host_names_the_key_that_set_it() {
        let brokers = |pairs: &[(&str, &str)]| {
            Config::from_pairs(pairs.iter().copied().chain([("curve", "no")])).unwrap().resolve().unwrap().brokers
        };
        let pool =
            brokers(&[("pool.size", "2"), ("pool.1.host", "127.0.0.1"), ("pool.2.host", "no-such-host.invalid")]);
        pool[0].check_host_resolves().unwrap();
        let e = pool[1].check_host_resolves().unwrap_err();
        assert_eq!((e.kind(), e.key()), (ErrorKind::Resolve, Some("pool.2.host")));
        assert!(e.message().contains("\"no-such-host.invalid\" (pool.2.host)"), "{e}");
        let list = brokers(&[("broker.host", "127.0.0.1,no-such-host.invalid")]);
        let e = list[1].check_host_resolves().unwrap_err();
        assert_eq!(e.key(), Some("broker.host"));
        assert!(e.message().contains("(broker.host)"), "{e}");
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let mut c = Config::new();
        c.set("broker.host", "::1").unwrap();
        c.set("curve", "false").unwrap();
        let s = c.resolve().unwrap();
        assert_eq!(s.brokers[0].endpoint, "tcp://[::1]:61616");
        assert!(s.brokers[0].ipv6);
    }

    #[test]
    fn default_identity_is_the_host_name() {
        let mut c = Config::new();
        c.set("broker.host", "h").unwrap();
        c.set("curve", "0").unwrap();
        let s = c.resolve().unwrap();
        assert!(!s.identity.is_empty());
        assert!(!s.identity.contains('\0'));
    }
}
