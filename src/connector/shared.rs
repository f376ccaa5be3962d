//! What the callers' handle and the engine thread share: the queue of
//! requests (with the pipe that wakes the engine), the inbox of received
//! messages, the closing flag, the counters and the current routing id.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::message::{Counters, Message};
use super::oneshot::Answer;
use super::wake::Waker;
use super::{Error, ErrorKind};

/// A publish on its way to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub topic: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    /// When its time-to-live runs out: it is then never sent.
    pub expires: Option<Instant>,
}

/// What a caller asks of the engine.
pub(crate) enum Request {
    /// With `queue`, as a consumer of that queue of the topic.
    Subscribe {
        topic: Vec<u8>,
        queue: Option<Vec<u8>>,
        answer: Answer,
    },
    /// Acknowledges queue deliveries (no answer: at least once).
    Ack {
        deliveries: Vec<u64>,
    },
    Unsubscribe {
        topic: Vec<u8>,
        answer: Answer,
    },
    /// Holds one slot of [`Counters::queued_publishes`].
    Publish(Publish),
    /// Answered once every publish queued before it is acknowledged or dropped.
    Flush {
        answer: Answer,
    },
    Close {
        answer: Answer,
    },
}

pub(crate) struct Requests {
    pub items: VecDeque<Request>,
    /// False once the engine has exited: nobody would answer.
    pub open: bool,
}

pub(crate) struct Inbox {
    pub messages: VecDeque<Message>,
    pub closed: bool,
}

pub(crate) struct Shared {
    pub requests: Mutex<Requests>,
    pub waker: Waker,
    pub inbox: Mutex<Inbox>,
    pub inbox_ready: Condvar,
    /// Set by close(): new calls fail with Closed at once.
    pub closing: AtomicBool,
    pub counters: Arc<Counters>,
    /// The current socket's routing id (a new socket replaces one the
    /// engine gave up on).
    pub routing_id: Mutex<String>,
}

impl Shared {
    pub fn new() -> Result<Shared, Error> {
        Ok(Shared {
            requests: Mutex::new(Requests { items: VecDeque::new(), open: true }),
            waker: Waker::new().map_err(|e| Error::new(ErrorKind::Zmq, format!("cannot create a pipe: {e}")))?,
            inbox: Mutex::new(Inbox { messages: VecDeque::new(), closed: false }),
            inbox_ready: Condvar::new(),
            closing: AtomicBool::new(false),
            counters: Arc::default(),
            routing_id: Mutex::new(String::new()),
        })
    }

    /// Queues a request for the engine and wakes it.
    pub fn push(&self, request: Request) -> Result<(), Error> {
        {
            let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            if !requests.open {
                return Err(Error::closed());
            }
            requests.items.push_back(request);
        }
        self.waker.wake();
        Ok(())
    }

    /// Everything queued so far, for the engine.
    pub fn take_requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).items.drain(..).collect()
    }

    /// Refuses further requests (the engine is exiting); returns the ones
    /// still queued so that they can be answered.
    pub fn stop_requests(&self) -> Vec<Request> {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.open = false;
        requests.items.drain(..).collect()
    }

    pub fn close_inbox(&self) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.inbox_ready.notify_all();
    }

    pub fn routing_id(&self) -> String {
        self.routing_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_routing_id(&self, rid: &str) {
        *self.routing_id.lock().unwrap_or_else(|e| e.into_inner()) = rid.to_string();
    }
}
