//! `--brokers N`: N mc0d joined with `--cluster`, each to its own
//! nats-server, the nats-servers routed to each other on loopback (the
//! layout `tests/cluster.rs` tests). A scenario's client (request) or
//! publisher (fanout) uses the first broker, [`Running::endpoint`]; its
//! nodes or subscribers spread over [`Running::endpoints`].
//!
//! A SUB is acknowledged by the broker before its NATS subscription has
//! reached the other NATS servers, so a scenario waits with
//! [`Cluster::settle`] (through NATS's monitoring port) before it measures:
//! otherwise the first messages would find no interest across brokers.

use super::raw::Stamp;
use super::target::{free_port, rss_kib_of, Keys, Kind, Running, Target};
use crate::Result;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `nats-server` package puts it; `nats-server` on PATH otherwise.
const NATS_SERVER: &str = "/usr/sbin/nats-server";
/// The bound on a NATS server's start and its routes forming.
const NATS_START: Duration = Duration::from_secs(15);

/// One nats-server of the run; killed on drop.
struct Nats {
    child: Child,
    port: u16,
    http: u16,
    /// Its standard error.
    log: std::path::PathBuf,
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// GET `path` on the monitoring port, as JSON.
    fn monitor(&self, path: &str) -> Result<Value> {
        let failed = |e: std::io::Error| format!("nats-server monitoring on port {}: {e}", self.http);
        let mut stream = TcpStream::connect(("127.0.0.1", self.http)).map_err(failed)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(failed)?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(failed)?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(failed)?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).map_err(|e| format!("nats-server {path}: {e}"))
    }

    /// A number from `/varz` (`subscriptions`, `connections`, `routes`).
    fn varz(&self, field: &str) -> Result<u64> {
        self.monitor("/varz")?[field].as_u64().ok_or_else(|| format!("nats-server /varz has no {field}"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` every 50 ms until it holds; `what` names it in the error.
fn wait_until(what: &str, deadline: Instant, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let mut last = String::new();
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!(" ({e})"),
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not in time{last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` nats-servers routed to each other, once every one has its routes.
/// The ports are picked free just before and may be taken meanwhile (by a
/// test running beside): a start that fails, say because a server exited,
/// is tried again on new ports.
fn start_nats(n: usize, keys: &Keys) -> Result<Vec<Nats>> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match try_start_nats(n, keys) {
            Ok(nats) => return Ok(nats),
            Err(StartFailed(e)) if attempt < ATTEMPTS => {
                eprintln!("mc0-bench: {e}; again on other ports");
                attempt += 1;
            }
            Err(StartFailed(e)) => return Err(e),
        }
    }
}

/// Why starting the nats-servers failed (each attempt's own error).
struct StartFailed(String);

fn try_start_nats(n: usize, keys: &Keys) -> std::result::Result<Vec<Nats>, StartFailed> {
    let exe = if Path::new(NATS_SERVER).exists() { NATS_SERVER } else { "nats-server" };
    let ports: Vec<(u16, u16, u16)> =
        (0..n).map(|_| Ok((free_port()?, free_port()?, free_port()?))).collect::<Result<_>>().map_err(StartFailed)?;
    let mut nats = Vec::new();
    for (i, &(port, http, route)) in ports.iter().enumerate() {
        let routes: Vec<String> =
            ports.iter().filter(|p| p.2 != route).map(|p| format!("nats-route://127.0.0.1:{}", p.2)).collect();
        let conf = keys.dir.join(format!("nats-{i}.conf"));
        let log = keys.dir.join(format!("nats-{i}.log"));
        let text = format!(
            "server_name: bench{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
             cluster {{\n  name: mc0bench\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
            routes.join(", ")
        );
        std::fs::write(&conf, text).map_err(|e| StartFailed(format!("{}: {e}", conf.display())))?;
        let stderr = std::fs::File::create(&log).map_err(|e| StartFailed(format!("{}: {e}", log.display())))?;
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| StartFailed(format!("cannot start {exe} (--brokers needs NATS): {e}")))?;
        nats.push(Nats { child, port, http, log });
    }
    let deadline = Instant::now() + NATS_START;
    for server in &mut nats {
        let mut exited = None;
        let routed = wait_until("the NATS routes", deadline, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                exited = Some(status);
                return Ok(true);
            }
            Ok(server.varz("routes")? + 1 >= n as u64)
        });
        if let Some(status) = exited {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            let last = log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            return Err(StartFailed(format!("nats-server on port {} exited ({status}): {last}", server.port)));
        }
        routed.map_err(StartFailed)?;
    }
    Ok(nats)
}

/// The brokers but the first, and the NATS servers under them.
pub struct Cluster {
    pub brokers: Vec<Running>,
    nats: Vec<Nats>,
    /// Each NATS server's subscriptions before any client subscribed (its
    /// system account's own).
    baseline: Vec<u64>,
}

impl Cluster {
    /// Starts `n` nats-servers routed to each other and one `mc0d --cluster`
    /// on each; returns the first broker, holding the rest.
    pub fn start(label: &str, mc0d: &Path, n: usize, curve: bool, keys: &Keys) -> Result<Running> {
        if n == 0 {
            return Err("--brokers must be at least 1".into());
        }
        let nats = start_nats(n, keys)?;
        let baseline = nats.iter().map(|s| s.varz("subscriptions")).collect::<Result<Vec<_>>>()?;
        let one = Target { label: label.into(), kind: Kind::Mc0d(mc0d.into()), mc0d_args: Vec::new() };
        let mut brokers = nats
            .iter()
            .map(|s| one.spawn(curve, keys, Stamp::None, None, &["--cluster".into(), s.url()]))
            .collect::<Result<Vec<_>>>()?;
        let deadline = Instant::now() + NATS_START;
        for server in &nats {
            wait_until("mc0d's link to NATS", deadline, || Ok(server.varz("connections")? >= 1))?;
        }
        let mut first = brokers.remove(0);
        first.cluster = Some(Cluster { brokers, nats, baseline });
        Ok(first)
    }

    /// Waits until every NATS server holds `subscriptions` more than at
    /// the start: with one subject per (broker, topic it has subscribers
    /// for), each server holds them all, its own broker's directly and the
    /// others' through the routes, once interest has spread.
    pub fn settle(&self, subscriptions: usize, deadline: Instant) -> Result<()> {
        for (server, base) in self.nats.iter().zip(&self.baseline) {
            let want = base + subscriptions as u64;
            wait_until(&format!("{subscriptions} subscriptions on every NATS server"), deadline, || {
                Ok(server.varz("subscriptions")? >= want)
            })?;
        }
        Ok(())
    }

    /// "subscriptions 50004/50004/50004, RSS 61/60/60 MiB": each NATS
    /// server's subscriptions (above its own) and RSS.
    pub fn nats_figures(&self) -> String {
        let subs: Vec<String> = self
            .nats
            .iter()
            .zip(&self.baseline)
            .map(|(s, base)| s.varz("subscriptions").map_or("?".into(), |n| n.saturating_sub(*base).to_string()))
            .collect();
        let rss: Vec<String> =
            self.nats.iter().map(|s| rss_kib_of(s.child.id()).map_or("?".into(), |k| (k / 1024).to_string())).collect();
        format!("NATS subscriptions {}, nats-server RSS {} MiB", subs.join("/"), rss.join("/"))
    }

    pub fn check_alive(&mut self) -> Result<()> {
        for broker in &mut self.brokers {
            broker.check_alive()?;
        }
        for server in &mut self.nats {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("nats-server on port {} exited: {status}", server.port));
            }
        }
        Ok(())
    }
}
