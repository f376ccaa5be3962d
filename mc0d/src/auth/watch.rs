//! Keeps the allowlist current off the broker thread: reloads it when asked
//! (SIGHUP) and when polling notices a change on disk. Reading and stat-ing
//! thousands of key files takes long enough (about 170 ms for 10 000 keys)
//! that doing it on the broker thread would stall every client.
//!
//! A new list goes to the ZAP handler at once (through the shared
//! allowlist) and to the broker loop as a [`Reloaded`] event, on which it
//! drops the sessions of removed keys. A list that fails to load is
//! reported and the previous one stays in force.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::allowlist::{Allowlist, Fingerprint};
use super::zap::SharedAllowlist;
use crate::error::BrokerError;
use crate::logger::Logger;
use mc0::log::Level;

/// A list that was loaded and is now in force for new handshakes.
#[derive(Debug)]
pub struct Reloaded {
    pub list: Arc<Allowlist>,
    /// "SIGHUP" or "changed on disk".
    pub reason: &'static str,
    /// Time spent reading it.
    pub took: Duration,
    pub added: usize,
    pub removed: usize,
}

/// The watcher thread; stopped and joined on drop.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    requested: Arc<AtomicBool>,
    events: mpsc::Receiver<Reloaded>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `path`, whose state when `shared` was loaded is
    /// `fingerprint`; `poll: None` reloads only on request.
    pub fn start(
        path: PathBuf,
        fingerprint: Fingerprint,
        poll: Option<Duration>,
        shared: SharedAllowlist,
        log: Logger,
    ) -> Result<Watcher, BrokerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let requested = Arc::new(AtomicBool::new(false));
        let (tx, events) = mpsc::channel();
        let (stop2, requested2) = (stop.clone(), requested.clone());
        let thread = std::thread::Builder::new()
            .name("mc0d-keys".into())
            .spawn(move || {
                let mut state = State { path, fingerprint, shared, log, tx };
                state.run(poll, &stop2, &requested2);
            })
            .map_err(|e| BrokerError(format!("cannot start the authorized-keys thread: {e}")))?;
        Ok(Watcher { stop, requested, events, thread: Some(thread) })
    }

    /// Asks for a reload now (SIGHUP).
    pub fn request_reload(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// The next list that came into force, if any.
    pub fn try_next(&self) -> Option<Reloaded> {
        self.events.try_recv().ok()
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

struct State {
    path: PathBuf,
    /// The state of `path` when it was last loaded (or failed to load).
    fingerprint: Fingerprint,
    shared: SharedAllowlist,
    log: Logger,
    tx: mpsc::Sender<Reloaded>,
}

impl State {
    fn run(&mut self, poll: Option<Duration>, stop: &AtomicBool, requested: &AtomicBool) {
        let mut next_poll = poll.map(|p| Instant::now() + p);
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if requested.swap(false, Ordering::SeqCst) {
                self.reload("SIGHUP");
            } else if let (Some(at), Some(every)) = (next_poll, poll) {
                if now >= at {
                    next_poll = Some(now + every);
                    if Fingerprint::of(&self.path) != self.fingerprint {
                        self.reload("changed on disk");
                    }
                }
            }
            // Unparked early by a request or by stop; the cap keeps a lost
            // wake-up from mattering.
            let wait = next_poll.map_or(Duration::from_secs(1), |at| at.saturating_duration_since(Instant::now()));
            std::thread::park_timeout(wait.min(Duration::from_secs(1)));
        }
    }

    fn reload(&mut self, reason: &'static str) {
        let started = Instant::now();
        // Taken before reading, so an edit made meanwhile is noticed by the
        // next poll.
        self.fingerprint = Fingerprint::of(&self.path);
        let current = || self.shared.read().unwrap_or_else(|p| p.into_inner()).clone();
        match Allowlist::load(&self.path) {
            Ok(list) => {
                let list = Arc::new(list);
                let old = std::mem::replace(&mut *self.shared.write().unwrap_or_else(|p| p.into_inner()), list.clone());
                let event = Reloaded {
                    added: list.missing_from(&old),
                    removed: old.missing_from(&list),
                    list,
                    reason,
                    took: started.elapsed(),
                };
                // The receiver only goes away when the broker stops.
                let _ = self.tx.send(event);
            }
            Err(e) => self.log.log(
                Level::Error,
                format_args!(
                    "cannot reload the authorized keys ({reason}): {e}; the previous {} keys stay in force",
                    current().len()
                ),
            ),
        }
    }
}
