//! Where the engine puts the result of a request a caller waits for.
//!
//! A Mutex/Condvar slot rather than `std::sync::mpsc`: waiting on a channel
//! registers a `std::thread::current()` handle for the waiting thread, which
//! Rust never frees for threads it did not start (C and Ruby callers), so
//! every such caller thread would leak it (valgrind: "possibly lost").

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Error;

/// The sending half: answered once; dropping it unanswered answers Closed.
pub(crate) struct Answer(Arc<Slot>);

/// The waiting half.
pub(crate) struct Waiter(Arc<Slot>);

#[derive(Default)]
struct Slot {
    value: Mutex<Option<Result<(), Error>>>,
    ready: Condvar,
}

pub(crate) fn oneshot() -> (Answer, Waiter) {
    let slot = Arc::new(Slot::default());
    (Answer(slot.clone()), Waiter(slot))
}

impl Answer {
    pub fn send(self, result: Result<(), Error>) {
        self.set(result);
    }

    fn set(&self, result: Result<(), Error>) {
        let mut value = self.0.value.lock().unwrap_or_else(|e| e.into_inner());
        if value.is_none() {
            *value = Some(result);
            self.0.ready.notify_all();
        }
    }
}

impl Drop for Answer {
    /// An answer dropped unsent (engine gone) tells the caller at once.
    fn drop(&mut self) {
        self.set(Err(Error::closed()));
    }
}

impl Waiter {
    /// The answer, or None after `timeout` (`Duration::ZERO`: only looks).
    pub fn wait(&self, timeout: Duration) -> Option<Result<(), Error>> {
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(super::far_future);
        let mut value = self.0.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = value.take() {
                return Some(result);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            value = self.0.ready.wait_timeout(value, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::ErrorKind;

    #[test]
    fn answered_once_and_closed_when_dropped() {
        let (answer, waiter) = oneshot();
        assert!(waiter.wait(Duration::ZERO).is_none());
        answer.send(Ok(()));
        assert_eq!(waiter.wait(Duration::ZERO), Some(Ok(())));
        let (answer, waiter) = oneshot();
        drop(answer);
        assert_eq!(waiter.wait(Duration::from_secs(5)).unwrap().unwrap_err().kind(), ErrorKind::Closed);
    }
}
