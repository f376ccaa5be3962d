//! The NATS side of a clustered broker: one thread with its own
//! current-thread tokio runtime runs the `async-nats` client.
//!
//! - loop → NATS: [`ToCluster`] over an unbounded tokio channel (sending
//!   never blocks the loop and takes no lock);
//! - NATS → loop: `[topic, payload]` messages over an inproc PAIR the loop
//!   polls together with the ROUTER.
//!
//! The connection is opened with `no_echo` (a broker never gets its own
//! publishes back), retried from the start while NATS is unreachable, and
//! re-established (to any URL) when lost; `async-nats` then renews every
//! subscription. What could not be published meanwhile is counted and
//! logged ([`ClusterCounters`]): across brokers delivery is at most once,
//! as in core NATS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};
use futures_util::StreamExt;
use mc0::log::Level;
use tokio::sync::mpsc;

use super::subject;
use crate::engine::ToCluster;
use crate::error::BrokerError;
use crate::inproc;
use crate::logger::{Logger, RateLimit};

/// Where the loop's end of the PAIR is bound.
const INBOX_ENDPOINT: &str = "inproc://mc0d-cluster";
/// What the broker assumes of `max_payload` until a server announced it:
/// nats-server's default.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Reconnect attempts back off up to this (async-nats's default goes to
/// several seconds; a broker wants its peers back quickly).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Messages from NATS waiting for the PAIR before subscribers wait.
const INBOUND_QUEUE: usize = 8192;
/// Publishes the client may queue while the connection is up.
const CLIENT_CAPACITY: usize = 65_536;
/// On stop, how long pending publishes may take to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// `--cluster` and the options that go with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://host:4222`, `tls://…`); any of them will do.
    pub urls: Vec<String>,
    /// The subjects' first token (`--cluster-name`).
    pub name: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey: Option<PathBuf>,
    /// CA certificates (PEM) to verify the NATS servers with; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The bridge's counters, read by the loop for the status line.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    up: AtomicBool,
    max_payload: AtomicUsize,
    forwarded: AtomicU64,
    received: AtomicU64,
    unforwarded: AtomicU64,
}

impl ClusterCounters {
    /// Whether the NATS connection is up.
    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// The connected server's `max_payload` (the default before any).
    pub fn max_payload(&self) -> usize {
        match self.max_payload.load(Relaxed) {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        }
    }

    /// `(forwarded, received, unforwarded)`: messages published to NATS,
    /// received from it, and not published because it was unreachable.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.forwarded.load(Relaxed), self.received.load(Relaxed), self.unforwarded.load(Relaxed))
    }
}

impl std::fmt::Display for ClusterCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (forwarded, received, unforwarded) = self.counts();
        let state = if self.up() { "up" } else { "down" };
        write!(f, "cluster={state} forwarded={forwarded} received={received} unforwarded={unforwarded}")
    }
}

/// A running bridge; dropping it stops the thread (after a bounded flush).
pub struct Bridge {
    inbox: zmq::Socket,
    to_nats: Option<mpsc::UnboundedSender<ToCluster>>,
    counters: Arc<ClusterCounters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Checks the options (readable files, a valid name) and starts the
    /// NATS thread. NATS need not be reachable: the thread keeps trying.
    pub fn start(ctx: &zmq::Context, options: &ClusterOptions, log: &Logger) -> Result<Bridge, BrokerError> {
        let connect = connect_options(options)?;
        // Unbounded: the NATS thread's queue is what bounds it.
        let (inbox, outlet) = inproc::pair(ctx, INBOX_ENDPOINT, "cluster")?;
        outlet.set_linger(0).map_err(|e| BrokerError(format!("cannot set ZMQ_LINGER on the cluster socket: {e}")))?;
        let (to_nats, from_loop) = mpsc::unbounded_channel();
        let counters = Arc::new(ClusterCounters::default());
        let nats = Nats {
            name: options.name.clone(),
            urls: options.urls.clone(),
            counters: counters.clone(),
            log: log.clone(),
            outlet,
            unforwarded_warn: RateLimit::new(Duration::from_secs(10)),
        };
        let thread = std::thread::Builder::new()
            .name("mc0d-nats".into())
            .spawn(move || nats.run(connect, from_loop))
            .map_err(|e| BrokerError(format!("cannot start the NATS thread: {e}")))?;
        Ok(Bridge { inbox, to_nats: Some(to_nats), counters, thread: Some(thread) })
    }

    /// The loop's end of the PAIR: `[topic, payload]` per message from NATS.
    pub fn inbox(&self) -> &zmq::Socket {
        &self.inbox
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    /// The same counters, for a reader on another thread (the metrics).
    pub fn shared_counters(&self) -> Arc<ClusterCounters> {
        self.counters.clone()
    }

    /// Whether the NATS thread still runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Hands work to the NATS thread (never blocks).
    pub fn send(&self, work: ToCluster) {
        if let Some(tx) = &self.to_nats {
            // Fails only once the thread is gone, which the loop checks.
            let _ = tx.send(work);
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.to_nats = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads what the options name now, so a missing file stops mc0d at start
/// with its name rather than later in a log line.
fn connect_options(options: &ClusterOptions) -> Result<ConnectOptions, BrokerError> {
    if options.urls.is_empty() {
        return Err(BrokerError("--cluster needs at least one NATS URL".into()));
    }
    if !subject::valid_cluster_name(&options.name) {
        return Err(BrokerError(format!(
            "--cluster-name {:?}: use letters, digits and - _ : @ / + = , only (it is the subjects' first token)",
            options.name
        )));
    }
    let read = |what: &str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| BrokerError(format!("cannot read the {what} {}: {e}", path.display())))
    };
    let mut connect = ConnectOptions::new();
    match (&options.user, &options.password) {
        (Some(user), Some(password)) => connect = connect.user_and_password(user.clone(), password.clone()),
        (None, None) => {}
        _ => return Err(BrokerError("--cluster-user and --cluster-password go together".into())),
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(path) = &options.creds {
        connect = connect
            .credentials(&read("NATS credentials file", path)?)
            .map_err(|e| BrokerError(format!("bad NATS credentials file {}: {e}", path.display())))?;
    }
    if let Some(path) = &options.nkey {
        connect = connect.nkey(read("NATS nkey seed file", path)?.trim().to_string());
    }
    if let Some(path) = &options.tls_ca {
        read("NATS CA file", path)?;
        connect = connect.add_root_certificates(path.clone()).require_tls(true);
    }
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => {
            read("NATS client certificate", cert)?;
            read("NATS client key", key)?;
            connect = connect.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        (None, None) => {}
        _ => return Err(BrokerError("--cluster-tls-cert and --cluster-tls-key go together".into())),
    }
    Ok(connect
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(CLIENT_CAPACITY)
        .reconnect_delay_callback(|attempt| (Duration::from_millis(100) * attempt as u32).min(MAX_RECONNECT_DELAY))
        .name(format!("mc0d {}", mc0::VERSION)))
}

/// The NATS thread's state.
struct Nats {
    name: String,
    urls: Vec<String>,
    counters: Arc<ClusterCounters>,
    log: Logger,
    outlet: zmq::Socket,
    unforwarded_warn: RateLimit,
}

impl Nats {
    fn run(mut self, connect: ConnectOptions, from_loop: mpsc::UnboundedReceiver<ToCluster>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                self.log.log(Level::Error, format_args!("cluster: cannot start the NATS runtime: {e}"));
                return;
            }
        };
        runtime.block_on(self.serve(connect, from_loop));
    }

    async fn serve(&mut self, connect: ConnectOptions, mut from_loop: mpsc::UnboundedReceiver<ToCluster>) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let connect = connect.event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(event);
            }
        });
        let urls = self.urls.join(",");
        self.log.log(Level::Info, format_args!("cluster {:?}: connecting to NATS at {urls}", self.name));
        let client = match connect.connect(self.urls.as_slice()).await {
            Ok(client) => client,
            Err(e) => {
                self.log.log(Level::Error, format_args!("cluster: cannot connect to NATS at {urls}: {e}"));
                return;
            }
        };
        let (inbound_tx, mut inbound) = mpsc::channel::<(Arc<[u8]>, bytes::Bytes)>(INBOUND_QUEUE);
        let mut subscriptions: HashMap<Arc<[u8]>, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            tokio::select! {
                work = from_loop.recv() => match work {
                    None => break,
                    Some(ToCluster::Interest(topic, true)) => {
                        let subject = subject::encode(&self.name, &topic);
                        match client.subscribe(subject.clone()).await {
                            Ok(mut subscriber) => {
                                let tx = inbound_tx.clone();
                                let key = topic.clone();
                                let task = tokio::spawn(async move {
                                    while let Some(message) = subscriber.next().await {
                                        if tx.send((key.clone(), message.payload)).await.is_err() {
                                            break;
                                        }
                                    }
                                });
                                if let Some(old) = subscriptions.insert(topic, task) {
                                    old.abort();
                                }
                            }
                            Err(e) => self.log.log(
                                Level::Error,
                                format_args!("cluster: cannot subscribe to {subject}: {e}; messages from other brokers to it are lost"),
                            ),
                        }
                    }
                    Some(ToCluster::Interest(topic, false)) => {
                        // Dropping the subscriber (with its task) unsubscribes.
                        if let Some(task) = subscriptions.remove(&topic) {
                            task.abort();
                        }
                    }
                    Some(ToCluster::Publish(topic, payload)) => self.publish(&client, &topic, payload).await,
                },
                Some((topic, payload)) = inbound.recv() => {
                    self.counters.received.fetch_add(1, Relaxed);
                    // Blocks only if libzmq cannot allocate; the PAIR has no HWM.
                    let _ = self.outlet.send_multipart([&topic[..], &payload[..]], 0);
                },
                Some(event) = events.recv() => self.event(&client, event),
            }
        }
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await;
        for (_, task) in subscriptions.drain() {
            task.abort();
        }
    }

    async fn publish(&mut self, client: &async_nats::Client, topic: &[u8], payload: Vec<u8>) {
        let result = if self.counters.up() {
            client.publish(subject::encode(&self.name, topic), payload.into()).await.map_err(|e| e.to_string())
        } else {
            Err("not connected to NATS".to_string())
        };
        match result {
            Ok(()) => {
                self.counters.forwarded.fetch_add(1, Relaxed);
            }
            Err(why) => {
                let total = self.counters.unforwarded.fetch_add(1, Relaxed) + 1;
                if let Some(suppressed) = self.unforwarded_warn.allow(Instant::now()) {
                    self.log.log(
                        Level::Warn,
                        format_args!(
                            "cluster: a message to \"{}\" reached only this broker's subscribers: {why} \
                             ({suppressed} more since the last warning; unforwarded={total})",
                            topic.escape_ascii()
                        ),
                    );
                }
            }
        }
    }

    fn event(&mut self, client: &async_nats::Client, event: Event) {
        match event {
            Event::Connected => {
                let info = client.server_info();
                self.counters.max_payload.store(info.max_payload, Relaxed);
                self.counters.up.store(true, Relaxed);
                self.log.log(
                    Level::Info,
                    format_args!(
                        "cluster {:?}: connected to NATS server {} ({}:{}, version {}, max_payload {})",
                        self.name, info.server_name, info.host, info.port, info.version, info.max_payload
                    ),
                );
            }
            Event::Disconnected => {
                self.counters.up.store(false, Relaxed);
                self.log.log(
                    Level::Warn,
                    format_args!(
                        "cluster {:?}: lost the NATS connection; reconnecting (to any of {}); until then messages \
                         reach only this broker's subscribers",
                        self.name,
                        self.urls.join(",")
                    ),
                );
            }
            other => self.log.log(Level::Warn, format_args!("cluster {:?}: NATS: {other}", self.name)),
        }
    }
}
