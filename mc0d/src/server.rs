//! The broker's one network thread: [`Broker::bind`] sets up the ZAP
//! handler, the allowlist watcher and the ROUTER; [`Broker::run`] is the
//! loop that owns the ROUTER, feeds what it reads to the [`Engine`], and
//! drives its timers and the allowlist reloads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mc0::keys::{key_to_z85, Key, KeyPair};
use mc0::log::Level;

use crate::auth::allowlist::{Allowlist, Fingerprint, Role};
use crate::auth::watch::{self, Watcher};
use crate::auth::zap::{SharedAllowlist, ZapHandler};
use crate::cluster::{payload, Bridge};
use crate::config::Config;
use crate::engine::{Conn, Engine, Origin};
use crate::error::BrokerError;
use crate::logger::Logger;
use crate::metrics::{Hub, MetricsServer, Publisher};
use crate::router::Router;
use crate::stats::Stats;
use crate::store::{StoreWriter, Wake};
use crate::zmsg::Msg;

/// Longest the loop sleeps in one poll, so a stop request is seen promptly
/// even when the signal lands on a libzmq thread rather than this one.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// Messages handled per wake-up before timers get a turn.
const BATCH: usize = 1024;

/// The allowlist machinery of a running broker.
struct Keys {
    path: PathBuf,
    shared: SharedAllowlist,
    watcher: Watcher,
    poll: Option<Duration>,
}

impl Keys {
    fn current(&self) -> Arc<Allowlist> {
        self.shared.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A bound broker, ready to [`run`](Broker::run).
pub struct Broker {
    config: Config,
    router: Router,
    endpoint: String,
    public_key: Option<Key>,
    log: Logger,
    /// With CURVE.
    zap: Option<ZapHandler>,
    /// With `--authorized-keys`.
    keys: Option<Keys>,
    /// With `--metrics`: the listener and what the loop publishes to it.
    metrics: Option<(MetricsServer, Publisher)>,
    /// With `--cluster`.
    cluster: Option<Bridge>,
    /// With `--queue-dir`: the store's writer, how it writes (for the log)
    /// and what the store held.
    store: Option<(StoreWriter, String, Vec<crate::store::Record>)>,
}

impl Broker {
    /// Creates and binds the ROUTER socket (after starting the ZAP handler
    /// when an allowlist is configured). Fails (naming the cause) on a
    /// libzmq without CURVE, a bad key, an unreadable or malformed
    /// allowlist, or an address that cannot be bound.
    pub fn bind(config: Config) -> Result<Broker, BrokerError> {
        let err = |what: &str, e: zmq::Error| BrokerError(format!("cannot {what}: {e}"));
        let log = Logger::new(config.log_level);
        // First: a queue dir that cannot be used stops the start before
        // anything else is set up.
        let store = match &config.queue_dir {
            Some(dir) => Some(crate::store::DiskStore::open(dir, std::time::Instant::now())?),
            None => None,
        };
        let public_key = match &config.curve_secret_key {
            Some(secret) => {
                mc0::ensure_curve_support().map_err(BrokerError)?;
                Some(KeyPair::from_secret(*secret).map_err(BrokerError)?.public)
            }
            None => None,
        };
        let ctx = zmq::Context::new();
        ctx.set_io_threads(config.io_threads.max(1)).map_err(|e| err("set io threads", e))?;
        let curve = config.curve_secret_key.is_some();
        let keys = match &config.authorized_keys {
            None => None,
            Some(path) => {
                if !curve {
                    return Err(BrokerError(
                        "--authorized-keys needs CURVE: without it clients have no key to check".into(),
                    ));
                }
                // Taken before reading, so an edit made while loading is
                // noticed by the next poll.
                let fingerprint = Fingerprint::of(path);
                let list = Allowlist::load(path).map_err(|e| BrokerError(e.0))?;
                let shared: SharedAllowlist = Arc::new(RwLock::new(Arc::new(list)));
                let poll = config.authorized_keys_poll;
                let watcher = Watcher::start(path.clone(), fingerprint, poll, shared.clone(), log.clone())?;
                Some(Keys { path: path.clone(), shared, watcher, poll })
            }
        };
        let zap = if curve {
            let zap = ZapHandler::start(&ctx, keys.as_ref().map(|k| k.shared.clone()), log.clone())?;
            zap.self_test(&ctx)?;
            Some(zap)
        } else {
            None
        };
        let (mut router, endpoint) = Router::bind(&ctx, &config, &log)?;
        let metrics = match config.metrics {
            None => None,
            Some(addr) => {
                let hub = Arc::new(Hub::default());
                if let Some(zap) = &zap {
                    hub.set_key_refusals(zap.refusals());
                }
                let (publisher, wake) = Publisher::new(hub.clone())
                    .map_err(|e| BrokerError(format!("cannot set up the metrics wake-up: {e}")))?;
                router.wake_on(wake);
                Some((MetricsServer::start(addr, hub)?, publisher))
            }
        };
        let cluster = match &config.cluster {
            Some(options) => Some(Bridge::start(&ctx, options, &log)?),
            None => None,
        };
        let store = match store {
            Some((store, records)) => {
                let (writer, how) = StoreWriter::start(&ctx, store, config.queue_writer)?;
                Some((writer, how, records))
            }
            None => None,
        };
        Ok(Broker { config, router, endpoint, public_key, log, zap, keys, metrics, cluster, store })
    }

    /// The endpoint the socket is bound to, e.g. `tcp://*:61616`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where `--metrics` listens (the port chosen when given 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(server, _)| server.addr())
    }

    /// The CURVE public key clients must use, when CURVE is on.
    pub fn public_key(&self) -> Option<&Key> {
        self.public_key.as_ref()
    }

    /// Serves until `stop` becomes true; reloads the allowlist whenever
    /// `reload` is set (and clears it). Returns the final counters.
    pub fn run(self, stop: &AtomicBool, reload: &AtomicBool) -> Result<Stats, BrokerError> {
        let Broker { config, router, endpoint, public_key, log, zap, keys, metrics, cluster, store } = self;
        match &public_key {
            Some(k) => log.log(
                Level::Info,
                format_args!("mc0d {} listening on {endpoint} (CURVE, public key {})", mc0::VERSION, key_to_z85(k)),
            ),
            None => log.log(
                Level::Warn,
                format_args!(
                    "mc0d {} listening on {endpoint} WITHOUT CURVE (--no-curve): clients are neither \
                     authenticated nor encrypted, and any client can read any topic",
                    mc0::VERSION
                ),
            ),
        }
        if let Some((server, _)) = &metrics {
            log.log(
                Level::Info,
                format_args!(
                    "metrics on http://{}/metrics, sessions on /connz, status page on / (keep it on loopback or \
                     behind a proxy)",
                    server.addr()
                ),
            );
        }
        let mut engine = Engine::new(router, &config);
        let store = store.map(|(writer, how, records)| {
            log.log(Level::Info, format_args!("queue store journal {how}"));
            engine.use_store(records, Instant::now());
            writer
        });
        if let Some(keys) = &keys {
            let list = keys.current();
            let polled = match keys.poll {
                Some(p) => format!("checked for changes every {} s", p.as_secs_f64()),
                None => "not polled".into(),
            };
            log.log(
                Level::Info,
                format_args!(
                    "only the {} authorized keys in {} may connect, each as the identity it is listed under \
                     ({}; --identity-check {}; reloaded on SIGHUP, {polled})",
                    list.len(),
                    keys.path.display(),
                    roles(&list),
                    config.identity_check.as_str()
                ),
            );
            if list.is_empty() {
                log.log(Level::Warn, format_args!("the authorized keys list is empty: no client can connect"));
            }
            warn_unnamed(&log, &list);
            engine.set_allowlist(Some(list), Instant::now());
        } else if public_key.is_some() {
            log.log(
                Level::Info,
                format_args!(
                    "any client with the broker's public key may connect (no --authorized-keys): its routing id \
                     stays tied to its key, but it may use any identity and topic"
                ),
            );
        }
        let (_listener, mut publisher) = metrics.unzip();
        if let (Some(publisher), Some(keys)) = (&mut publisher, &keys) {
            publisher.allowlist_keys = keys.current().len();
        }
        if let Some(bridge) = &cluster {
            engine.join_cluster(bridge.counters().max_payload());
            if let Some(publisher) = &mut publisher {
                publisher.cluster = Some(bridge.shared_counters());
            }
        }
        let mut server = Server {
            engine,
            zap,
            keys,
            cluster,
            store,
            frames: Vec::new(),
            user: String::new(),
            log: log.clone(),
            publisher,
        };
        let result = server.serve(stop, reload, config.status_interval);
        server.finish_store();
        let stats = server.engine.stats();
        server.engine.flush_suppressed();
        let cluster = server.cluster_status(&stats);
        match &result {
            Ok(()) => log.log(Level::Info, format_args!("stopping: {stats}{cluster}")),
            Err(e) => log.log(Level::Error, format_args!("stopping on error: {e}; {stats}{cluster}")),
        }
        result.map(|()| stats)
    }
}

/// "3 node keys, 1 client key, 2 of either role", for the log.
fn roles(list: &Allowlist) -> String {
    let (nodes, clients) = (list.with_role(Role::Node), list.with_role(Role::Client));
    format!("{nodes} node keys, {clients} client keys, {} of either role", list.len() - nodes - clients)
}

/// Names that are not MCollective identities, one warning each, at most
/// this many per load (the rest are counted).
const MAX_NAME_WARNINGS: usize = 20;

/// Keys listed without a name (or under one that is not an identity) cannot
/// connect; say so, naming the places, whenever a list loads.
fn warn_unnamed(log: &Logger, list: &Allowlist) {
    let warnings = list.warnings();
    for warning in warnings.iter().take(MAX_NAME_WARNINGS) {
        log.log(Level::Warn, format_args!("{warning}"));
    }
    if warnings.len() > MAX_NAME_WARNINGS {
        log.log(
            Level::Warn,
            format_args!(
                "{} more authorized keys are listed under a name that is not an MCollective identity",
                warnings.len() - MAX_NAME_WARNINGS
            ),
        );
    }
    let n = list.unnamed();
    if n > 0 {
        log.log(
            Level::Warn,
            format_args!(
                "{n} authorized keys are listed without a name (or one that is not an MCollective identity): they \
                 cannot be bound to an MCollective identity, so their CONNECT is refused (allowed and logged with \
                 --identity-check log; give each the name its node or client uses as identity)"
            ),
        );
    }
}

/// The receiving side: the ROUTER loop that feeds an [`Engine`] and keeps
/// the allowlist current.
struct Server {
    engine: Engine<Router>,
    zap: Option<ZapHandler>,
    keys: Option<Keys>,
    cluster: Option<Bridge>,
    /// With `--queue-dir`.
    store: Option<StoreWriter>,
    /// Reused receive buffer: routing id followed by the message frames.
    frames: Vec<Msg>,
    /// The current message's `User-Id` (with CURVE only).
    user: String,
    log: Logger,
    publisher: Option<Publisher>,
}

/// What [`Server::receive`] read besides the frames.
struct Received {
    /// Frames past the limit, read and discarded.
    extra: usize,
    has_user: bool,
    conn: Option<Conn>,
}

impl Server {
    fn serve(&mut self, stop: &AtomicBool, reload: &AtomicBool, status_interval: Duration) -> Result<(), BrokerError> {
        let mut next_status = Instant::now() + status_interval;
        // Heartbeats alone do not make the status line worth repeating.
        let key =
            |s: &Stats| (s.clients, s.topics, s.puts, s.delivered, s.buffered, s.drops, s.violations, s.impostors);
        let stats = self.engine.stats();
        let mut last_status = (key(&stats), self.cluster_status(&stats));
        // The last instant at which a receive found nothing waiting: clients
        // are only expired for silence up to it (see Engine::tick_drained).
        let mut drained = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if reload.swap(false, Ordering::SeqCst) {
                match &self.keys {
                    Some(keys) => keys.watcher.request_reload(),
                    None => self.log.log(Level::Info, format_args!("SIGHUP: no --authorized-keys to reload")),
                }
            }
            if self.zap.as_ref().is_some_and(|z| !z.is_running()) {
                return Err(BrokerError("the ZAP handler stopped; refusing to serve without it".into()));
            }
            if self.keys.as_ref().is_some_and(|k| !k.watcher.is_running()) {
                return Err(BrokerError("the authorized-keys thread stopped; refusing to serve without it".into()));
            }
            if self.cluster.as_ref().is_some_and(|c| !c.is_running()) {
                return Err(BrokerError("the NATS thread stopped; refusing to serve without it".into()));
            }
            if self.store.as_ref().is_some_and(|s| !s.is_running()) {
                return Err(BrokerError(
                    "the queue store's thread (store or checkpoint) stopped; refusing to serve without it".into(),
                ));
            }
            while let Some(reloaded) = self.keys.as_ref().and_then(|k| k.watcher.try_next()) {
                self.apply(reloaded, now);
            }
            self.engine.tick_drained(now, drained);
            if let Some(publisher) = &mut self.publisher {
                let router = self.engine.transport();
                let peers = router.peers.as_ref().expect("kept with --metrics");
                publisher.publish(&self.engine, peers, router.handshake_failures, now);
            }
            if now >= next_status {
                self.engine.flush_suppressed();
                let stats = self.engine.stats();
                let status = (key(&stats), self.cluster_status(&stats));
                if status != last_status {
                    self.log.log(Level::Info, format_args!("status: {stats}{}", status.1));
                    last_status = status;
                }
                next_status = now + status_interval;
            }
            let mut wake = (now + MAX_WAIT).min(next_status);
            if let Some(deadline) = self.engine.next_deadline() {
                wake = wake.min(deadline);
            }
            // Round up so a deadline 0.3 ms away does not spin.
            let timeout = wake.saturating_duration_since(now).as_micros().div_ceil(1000) as i64;
            let mut others: Vec<&zmq::Socket> = self.cluster.as_ref().map(Bridge::inbox).into_iter().collect();
            let mut fds = Vec::new();
            match self.store.as_ref().map(StoreWriter::wake) {
                Some(Wake::Socket(socket)) => others.push(socket),
                Some(Wake::Fd(fd)) => fds.push(fd),
                None => {}
            }
            let polled = if others.is_empty() && fds.is_empty() {
                self.engine.transport_mut().poll(timeout)
            } else {
                self.engine.transport_mut().poll_with(&others, &fds, timeout)
            };
            match polled {
                // Even after a timeout: the receive below finding nothing is
                // what moves `drained` on.
                Ok(()) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(BrokerError(format!("poll failed: {e}"))),
            }
            for _ in 0..BATCH {
                let at = Instant::now();
                match self.receive() {
                    Ok(Some(received)) => {
                        let origin =
                            Origin { user: received.has_user.then_some(self.user.as_str()), conn: received.conn };
                        self.engine.handle_received(&self.frames, received.extra, origin, at);
                    }
                    Ok(None) => {
                        drained = at;
                        break;
                    }
                    Err(e) => return Err(BrokerError(format!("receive failed: {e}"))),
                }
            }
            if self.cluster.is_some() {
                self.exchange_with_cluster()?;
            }
            if self.store.is_some() {
                self.exchange_with_store()?;
            }
        }
        Ok(())
    }

    /// Sends the answers of what the store wrote, and hands it what the
    /// engine must write next (the batch read since the last turn: one
    /// transaction, see `store`).
    fn exchange_with_store(&mut self) -> Result<(), BrokerError> {
        let Some(store) = &mut self.store else { return Ok(()) };
        while let Some((upto, result)) = store.try_result()? {
            self.engine.store_committed(upto, result, Instant::now());
        }
        if let Some((n, batch)) = self.engine.take_store_batch() {
            store.submit(n, batch);
        }
        Ok(())
    }

    /// On stop: the store writes what it was handed, and what it wrote is
    /// answered.
    fn finish_store(&mut self) {
        let Some(store) = &mut self.store else { return };
        if let Some((n, batch)) = self.engine.take_store_batch() {
            store.submit(n, batch);
        }
        for (upto, result) in store.finish() {
            self.engine.store_committed(upto, result, Instant::now());
        }
    }

    /// ` cluster=up forwarded=… received=… unforwarded=… unqueued=…` for
    /// the status line; empty without `--cluster`.
    fn cluster_status(&self, stats: &Stats) -> String {
        self.cluster.as_ref().map(|c| format!(" {} unqueued={}", c.counters(), stats.unqueued)).unwrap_or_default()
    }

    /// Delivers what other brokers published (a batch at most) and hands
    /// the engine's interest changes and publishes to the NATS thread.
    fn exchange_with_cluster(&mut self) -> Result<(), BrokerError> {
        let Some(bridge) = &self.cluster else { return Ok(()) };
        self.engine.set_cluster_max_payload(bridge.counters().max_payload());
        for _ in 0..BATCH {
            let message = match bridge.inbox().recv_multipart(zmq::DONTWAIT) {
                Ok(message) => message,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(BrokerError(format!("cluster receive failed: {e}"))),
            };
            let decoded = match message.as_slice() {
                [topic, bytes] => payload::decode(bytes).map(|frames| (topic, frames)),
                _ => None,
            };
            match decoded {
                Some((topic, frames)) => {
                    self.engine.deliver_from_cluster(topic, frames, Instant::now());
                }
                // Only another mc0d (or something else on its subjects) can
                // send one: named, never delivered.
                None => self
                    .log
                    .log(Level::Warn, format_args!("cluster: ignored a message from NATS that is not an mc0d message")),
            }
        }
        self.engine.take_cluster_work(|work| bridge.send(work));
        Ok(())
    }

    /// Drops the sessions of keys a reloaded list no longer holds.
    fn apply(&mut self, reloaded: watch::Reloaded, now: Instant) {
        let watch::Reloaded { list, reason, took, added, removed } = reloaded;
        let dropped = self.engine.set_allowlist(Some(list.clone()), now);
        self.log.log(
            Level::Info,
            format_args!(
                "authorized keys reloaded ({reason}) in {} ms: {} keys, {added} added, {removed} removed; \
                 {dropped} sessions dropped ({})",
                took.as_millis(),
                list.len(),
                roles(&list)
            ),
        );
        warn_unnamed(&self.log, &list);
        if let Some(publisher) = &mut self.publisher {
            publisher.allowlist_keys = list.len();
            publisher.allowlist_reloads += 1;
        }
    }

    /// Reads one whole message into `self.frames` (and its `User-Id` into
    /// `self.user`); `Ok(None)` when nothing is waiting. Frames beyond the
    /// limit are read and discarded (so a hostile sender cannot make the
    /// broker hold them).
    fn receive(&mut self) -> Result<Option<Received>, zmq::Error> {
        self.frames.clear();
        let keep = self.engine.limits().max_frames.saturating_add(1);
        let curve = self.zap.is_some();
        let mut received = Received { extra: 0, has_user: false, conn: None };
        loop {
            let first = self.frames.is_empty() && received.extra == 0;
            let mut msg = Msg::new();
            match msg.recv(&mut self.engine.transport_mut().socket, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if first => return Ok(None),
                // An interrupted read is retried, never taken for "nothing
                // waiting": that answer lets expiry count silence up to now.
                // The rest of a multipart message is already here (libzmq
                // delivers them atomically).
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
            // Metadata comes with the frames read off the wire, not with the
            // routing-id frame the ROUTER puts in front.
            if self.frames.len() == 1 && received.extra == 0 {
                received.conn = msg.source_fd();
                if let Some(conn) = received.conn {
                    self.engine.transport_mut().note_peer(conn, &self.frames[0], &msg);
                }
                if curve {
                    self.user.clear();
                    if let Some(user) = msg.property(b"User-Id\0") {
                        self.user.push_str(user);
                        received.has_user = true;
                    }
                }
            }
            let more = msg.more();
            if self.frames.len() < keep {
                self.frames.push(msg);
            } else {
                received.extra += 1;
            }
            if !more {
                return Ok(Some(received));
            }
        }
    }
}
