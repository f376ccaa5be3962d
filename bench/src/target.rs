//! The brokers a run measures: mc0d (spawned or already running) and the raw
//! libzmq loop (this binary's `raw-broker` mode, spawned as its own process
//! so that its CPU, RSS and threads compare like for like with mc0d's).

use super::clients::Endpoint;
use super::cluster::Cluster;
use super::raw::Stamp;
use super::sockets::Ctx;
use super::{clients, sockets};
use crate::Result;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::protocol;

/// The TTL of a start-up probe's session (it disconnects at once).
const PROBE_TTL_MS: u64 = 10_000;

#[derive(Clone, Debug)]
pub enum Kind {
    /// Spawn this mc0d binary on a free loopback port.
    Mc0d(PathBuf),
    /// Spawn the raw libzmq ROUTER loop (`mc0-bench raw-broker`).
    Raw,
    /// A broker someone else started.
    External { addr: String, key_file: Option<PathBuf>, pid: Option<u32> },
    /// `brokers` of this mc0d joined with `--cluster` over as many
    /// nats-servers (see [`Cluster`]).
    Cluster { mc0d: PathBuf, brokers: usize },
}

#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    pub kind: Kind,
    /// More arguments for a spawned mc0d (the `queue` scenario's modes).
    pub mc0d_args: Vec<String>,
}

/// Files the spawned brokers share: one CURVE keypair per bench run and,
/// with `--key-seed`, the allowlist of the clients' keys.
pub struct Keys {
    pub dir: PathBuf,
    pub private_file: PathBuf,
    pub public: [u8; 32],
    /// `--key-seed`, and the allowlist file listing the keys it gives.
    pub seeded: Option<(u64, PathBuf)>,
}

impl Keys {
    /// With `seed`, also writes the allowlist of up to `clients` clients of
    /// each kind (see [`clients::allowlist`]).
    pub fn create(seed: Option<u64>, clients: usize) -> Result<Keys> {
        let dir = std::env::temp_dir().join(format!("mc0-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pair = mc0::keys::KeyPair::generate()?;
        let (_, private_file) =
            mc0::keys::write_keypair(dir.join("broker"), &pair, true).map_err(|e| format!("broker keys: {e}"))?;
        let seeded = match seed {
            Some(seed) => {
                let file = dir.join("authorized_keys");
                std::fs::write(&file, clients::allowlist(seed, clients)?)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                Some((seed, file))
            }
            None => None,
        };
        Ok(Keys { dir, private_file, public: pair.public, seeded })
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker ready to take clients.
pub struct Running {
    pub label: String,
    pub endpoint: Endpoint,
    pub pid: Option<u32>,
    child: Option<Child>,
    /// With [`Kind::Cluster`]: the other brokers and the NATS servers (this
    /// one is the first broker).
    pub cluster: Option<Cluster>,
}

/// Resident set size of process `pid` in KiB (from /proc).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl Target {
    /// Starts (or, for an external broker, reaches) the broker: a spawned
    /// mc0d with `keys`' allowlist when there is one, the raw loop with
    /// `stamp`.
    pub fn start(&self, curve: bool, keys: &Keys, stamp: Stamp, drop_every: Option<u64>) -> Result<Running> {
        if let Kind::Cluster { mc0d, brokers } = &self.kind {
            return Cluster::start(&self.label, mc0d, *brokers, curve, keys);
        }
        self.spawn(curve, keys, stamp, drop_every, &[])
    }

    /// [`Target::start`] of one broker, with `extra` arguments for a spawned mc0d.
    pub fn spawn(
        &self,
        curve: bool,
        keys: &Keys,
        stamp: Stamp,
        drop_every: Option<u64>,
        extra: &[String],
    ) -> Result<Running> {
        let (child, addr, server_key, pid) = match &self.kind {
            Kind::External { addr, key_file, pid } => {
                let key = match (curve, key_file) {
                    (false, _) => None,
                    (true, Some(f)) => Some(mc0::keys::read_key_file(f).map_err(|e| e.to_string())?),
                    (true, None) => return Err("--broker needs --broker-key FILE (or --no-curve)".into()),
                };
                (None, addr.clone(), key, *pid)
            }
            Kind::Cluster { .. } => return Err("a cluster is started by Target::start".into()),
            Kind::Mc0d(_) | Kind::Raw => {
                let port = free_port()?;
                let mut cmd = match &self.kind {
                    Kind::Mc0d(path) => Command::new(path),
                    _ => {
                        let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
                        c.args(["raw-broker", "--stamp", stamp.as_str()]);
                        if let Some(k) = drop_every {
                            c.args(["--drop-every", &k.to_string()]);
                        }
                        c
                    }
                };
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
                if curve {
                    cmd.arg("--curve-private-key").arg(&keys.private_file);
                } else {
                    cmd.arg("--no-curve");
                }
                if matches!(self.kind, Kind::Mc0d(_)) {
                    cmd.args(["--log-level", "warn"]).args(&self.mc0d_args);
                    if let Some((_, allowlist)) = &keys.seeded {
                        cmd.arg("--authorized-keys").arg(allowlist);
                    }
                    cmd.args(extra);
                }
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
                let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", self.describe()))?;
                let pid = child.id();
                (Some(child), format!("127.0.0.1:{port}"), curve.then_some(keys.public), Some(pid))
            }
        };
        let mut running = Running {
            label: self.label.clone(),
            endpoint: Endpoint {
                addr: format!("tcp://{addr}"),
                server_key,
                key_seed: keys.seeded.as_ref().map(|(seed, _)| *seed),
            },
            pid,
            child,
            cluster: None,
        };
        running.wait_ready(Duration::from_secs(15))?;
        Ok(running)
    }
}

impl Target {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Mc0d(path) => path.display().to_string(),
            Kind::Raw => "the raw broker (mc0-bench raw-broker)".into(),
            Kind::External { addr, .. } => addr.clone(),
            Kind::Cluster { mc0d, brokers } => format!("{brokers} x {}", mc0d.display()),
        }
    }
}

impl Running {
    /// Polls the broker with CONNECT until it acknowledges (it binds
    /// asynchronously after the spawn).
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let ctx = Ctx::new(1, 64)?;
        let mut frames = Vec::new();
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{} exited during start-up: {status}", self.label));
                }
            }
            // A routing id of its own per attempt: an earlier attempt's
            // connection may still hold the last one.
            let rid = format!("{} {} {attempt}", clients::PROBE, std::process::id());
            let s = clients::dealer(&ctx, &self.endpoint, rid.as_bytes())?;
            let probe =
                protocol::Command::Connect { version: clients::VERSION, ttl_ms: PROBE_TTL_MS, id: Some(b"probe") };
            clients::send_command(&s, &probe).map_err(|e| e.to_string())?;
            if s.poll(zmq::POLLIN, 300).map_err(|e| e.to_string())? > 0 {
                let n = sockets::recv(&s, &mut frames, 0).map_err(|e| e.to_string())?;
                if let clients::Reply::Ok(b"probe") = clients::classify(&clients::views(&frames[..n])) {
                    let _ = sockets::send(&s, &[b"", b"DISCONNECT"], 0);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer CONNECT on {} within {limit:?}",
                    self.label, self.endpoint.addr
                ));
            }
        }
    }

    /// Resident set size in KiB (from /proc), when the pid is known.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.pid?)
    }

    /// User + system CPU time consumed so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some((utime + stime) as f64 / hz)
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{} exited: {status}", self.label));
            }
        }
        match self.cluster.as_mut() {
            Some(cluster) => cluster.check_alive(),
            None => Ok(()),
        }
    }

    /// Every broker's endpoint, this one first.
    pub fn endpoints(&self) -> Vec<&Endpoint> {
        let others = self.cluster.iter().flat_map(|c| c.brokers.iter().map(|b| &b.endpoint));
        std::iter::once(&self.endpoint).chain(others).collect()
    }

    /// The RSS of every broker together, in KiB.
    pub fn brokers_rss_kib(&self) -> Option<u64> {
        let others = self.cluster.iter().flat_map(|c| c.brokers.iter().map(Running::rss_kib));
        std::iter::once(self.rss_kib()).chain(others).sum()
    }

    /// Waits until the brokers' `subscriptions` (one per broker and topic)
    /// reached every NATS server (see [`Cluster::settle`]); at once
    /// without a cluster.
    pub fn settle(&self, subscriptions: usize, deadline: Instant) -> Result<()> {
        match &self.cluster {
            Some(cluster) => cluster.settle(subscriptions, deadline),
            None => Ok(()),
        }
    }

    /// A context sized for `clients` sockets with the run's I/O threads.
    pub fn context(io_threads: i32, clients: usize) -> Result<Arc<Ctx>> {
        Ctx::new(io_threads, clients + 64)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
