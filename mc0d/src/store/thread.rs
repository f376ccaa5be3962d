//! The store's own thread: the socket thread hands it numbered [`Batch`]es
//! and never waits; the thread commits everything that arrived while it
//! was busy in one transaction (group commit) and answers over an inproc
//! PAIR the socket thread polls with the ROUTER: `[number]` when every batch
//! up to that number is written, `[number, error]` when they failed.

use std::sync::mpsc;
use std::thread::JoinHandle;

use super::{Batch, Store};
use crate::error::BrokerError;
use crate::inproc;

/// Where the socket thread's end of the PAIR is bound.
const ENDPOINT: &str = "inproc://mc0d-store";

/// A running store thread; dropping it writes what it was given and stops
/// the thread.
pub struct StoreThread {
    results: zmq::Socket,
    to_store: Option<mpsc::Sender<(u64, Batch)>>,
    thread: Option<JoinHandle<()>>,
}

/// What the store thread answered: batches up to `upto` are written, or
/// failed with the error.
pub type Committed = (u64, Result<(), String>);

impl StoreThread {
    pub fn start(ctx: &zmq::Context, mut store: Box<dyn Store>) -> Result<StoreThread, BrokerError> {
        // Unbounded: at most one answer per batch handed over.
        let (results, outlet) = inproc::pair(ctx, ENDPOINT, "store")?;
        let (to_store, batches) = mpsc::channel::<(u64, Batch)>();
        let thread = std::thread::Builder::new()
            .name("mc0d-store".into())
            .spawn(move || {
                while let Ok((mut upto, mut batch)) = batches.recv() {
                    // Group commit: everything that came while the last
                    // commit ran goes into this one.
                    while let Ok((n, more)) = batches.try_recv() {
                        batch.append(more);
                        upto = n;
                    }
                    let token = upto.to_le_bytes();
                    let sent = match store.commit(&batch) {
                        Ok(()) => outlet.send(&token[..], 0),
                        Err(e) => outlet.send_multipart([&token[..], e.as_bytes()], 0),
                    };
                    // Only a closed context fails: the broker is stopping.
                    if sent.is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| BrokerError(format!("cannot start the store thread: {e}")))?;
        Ok(StoreThread { results, to_store: Some(to_store), thread: Some(thread) })
    }

    /// Hands batch number `n` (numbers rise by one) to the thread.
    pub fn submit(&self, n: u64, batch: Batch) {
        if let Some(to_store) = &self.to_store {
            // Fails only once the thread is gone, which `is_running` reports.
            let _ = to_store.send((n, batch));
        }
    }

    /// The socket to poll for answers.
    pub fn results(&self) -> &zmq::Socket {
        &self.results
    }

    /// The next answer waiting, if any.
    pub fn try_result(&self) -> Result<Option<Committed>, zmq::Error> {
        let frames = match self.results.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => frames,
            // A signal (SIGHUP's key reload) interrupting the receive is no
            // error: the answer is read on the next turn.
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        };
        let upto = frames.first().and_then(|f| f.as_slice().try_into().ok()).map_or(0, u64::from_le_bytes);
        let result = match frames.get(1) {
            None => Ok(()),
            Some(error) => Err(String::from_utf8_lossy(error).into_owned()),
        };
        Ok(Some((upto, result)))
    }

    /// Whether the thread still runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Writes what was handed over, stops the thread and returns its last
    /// answers (so the OKs of the last writes can still be sent).
    pub fn finish(&mut self) -> Vec<Committed> {
        self.to_store = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut answers = Vec::new();
        while let Ok(Some(answer)) = self.try_result() {
            answers.push(answer);
        }
        answers
    }
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        self.finish();
    }
}
