//! The topics the session holds, counted by holder.
//!
//! Several callers may hold one topic (MCollective agents share a reply
//! topic): the first subscribe sends SUB, later ones only count; an
//! unsubscribe only counts down, and the last one sends UNSUB. Every held
//! topic is re-subscribed with each new session. A topic's state says what
//! the broker of the current session knows; an answer to a SUB changes a
//! topic only while that SUB is the topic's latest, so a late answer never
//! undoes a newer subscribe.

use std::time::Instant;

use super::{Pending, Session, State, TOPICS_PER_SUB};
use crate::connector::logging::clog;
use crate::connector::oneshot::Answer;
use crate::connector::{Error, ErrorKind};
use crate::log::Level;
use crate::protocol::Command;

pub(super) struct Topic {
    /// Subscribe calls minus unsubscribe calls; at 0 the topic is dropped.
    holders: u32,
    state: TopicState,
    /// Subscribe calls waiting for the broker's answer.
    waiters: Vec<Answer>,
    /// The queue of the topic this is a membership of; `None`: a plain
    /// subscription. A topic is held one way only.
    queue: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicState {
    /// Not (yet) subscribed in this session: made by the next (re-)subscribe.
    Wanted,
    /// The SUB with this ID is on its way.
    Subscribing(u64),
    Subscribed,
}

impl Session {
    pub(super) fn subscribe(&mut self, topic: Vec<u8>, queue: Option<Vec<u8>>, answer: Answer, _now: Instant) {
        if self.closing.is_some() {
            answer.send(Err(Error::closed()));
            return;
        }
        // With connect_retry nobody waits for the broker before the first
        // session: the topic is held and subscribed as soon as there is one.
        let no_wait = self.first.as_ref().is_some_and(|f| f.answer.is_none());
        let ready = self.state == State::Ready;
        let held = self.topics.entry(topic.clone()).or_insert(Topic {
            holders: 0,
            state: TopicState::Wanted,
            waiters: Vec::new(),
            queue: queue.clone(),
        });
        if held.queue != queue {
            let how = |q: &Option<Vec<u8>>| match q {
                Some(q) => format!("as a consumer of queue {:?}", String::from_utf8_lossy(q)),
                None => "plainly".to_string(),
            };
            answer.send(Err(Error::invalid(format!(
                "topic {:?} is already subscribed {}, not {}",
                String::from_utf8_lossy(&topic),
                how(&held.queue),
                how(&queue)
            ))));
            return;
        }
        held.holders += 1;
        match held.state {
            TopicState::Subscribed => answer.send(Ok(())),
            TopicState::Subscribing(_) => held.waiters.push(answer),
            TopicState::Wanted if no_wait => answer.send(Ok(())),
            TopicState::Wanted => held.waiters.push(answer),
        }
        if ready && held.state == TopicState::Wanted {
            self.send_sub(vec![topic]);
        }
    }

    pub(super) fn unsubscribe(&mut self, topic: Vec<u8>, answer: Answer, _now: Instant) {
        if self.closing.is_some() {
            answer.send(Err(Error::closed()));
            return;
        }
        let Some(held) = self.topics.get_mut(&topic) else {
            // Not held: nothing to undo.
            answer.send(Ok(()));
            return;
        };
        if held.holders > 1 {
            held.holders -= 1;
            answer.send(Ok(()));
            return;
        }
        let held = self.topics.remove(&topic).expect("present");
        // Subscribed, then unsubscribed by another caller: both done.
        for waiter in held.waiters {
            waiter.send(Ok(()));
        }
        if self.state == State::Ready && held.state != TopicState::Wanted {
            let id = self.next_id();
            let frames = Command::Unsub {
                id: Some(id.to_string().as_bytes()),
                queue: held.queue.as_deref(),
                topics: vec![&topic],
            }
            .to_frames();
            self.pending.insert(id, Pending::Unsub { answer: Some(answer) });
            self.send(id, frames);
        } else {
            // The broker does not have it in this session; the next one
            // will not get it.
            answer.send(Ok(()));
        }
    }

    /// One SUB for `topics`, which are all held the same way (plainly, or
    /// as consumers of one queue name).
    fn send_sub(&mut self, topics: Vec<Vec<u8>>) {
        let id = self.next_id();
        let queue = topics.first().and_then(|t| self.topics.get(t)).and_then(|h| h.queue.clone());
        // Every membership asks for the compact delivery form: a broker
        // that does not know it ignores the ask.
        let frames = Command::Sub {
            id: Some(id.to_string().as_bytes()),
            queue: queue.as_deref(),
            compact: true,
            topics: topics.iter().map(|t| &t[..]).collect(),
        }
        .to_frames();
        for topic in &topics {
            if let Some(held) = self.topics.get_mut(topic) {
                held.state = TopicState::Subscribing(id);
            }
        }
        self.pending.insert(id, Pending::Sub { topics });
        self.send(id, frames);
    }

    /// A new session: the broker holds none of our topics.
    pub(super) fn mark_all_wanted(&mut self) {
        for held in self.topics.values_mut() {
            held.state = TopicState::Wanted;
        }
    }

    /// Re-makes every held topic, in SUBs of at most [`TOPICS_PER_SUB`].
    pub(super) fn resubscribe(&mut self) {
        // One SUB per way of holding (plain, or each queue name).
        let mut wanted: std::collections::BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>> = Default::default();
        for (topic, held) in self.topics.iter().filter(|(_, t)| t.state == TopicState::Wanted) {
            wanted.entry(held.queue.clone()).or_default().push(topic.clone());
        }
        for topics in wanted.into_values() {
            for chunk in topics.chunks(TOPICS_PER_SUB) {
                self.send_sub(chunk.to_vec());
            }
        }
    }

    /// The topics of SUB `id` that still wait for it.
    fn waiting_on(&self, id: u64, topics: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        topics
            .into_iter()
            .filter(|t| self.topics.get(t).is_some_and(|h| h.state == TopicState::Subscribing(id)))
            .collect()
    }

    pub(super) fn sub_ok(&mut self, id: u64, topics: Vec<Vec<u8>>) {
        for topic in self.waiting_on(id, topics) {
            let held = self.topics.get_mut(&topic).expect("present");
            held.state = TopicState::Subscribed;
            for waiter in held.waiters.drain(..) {
                waiter.send(Ok(()));
            }
        }
    }

    /// The SUB's answer will never come: made again with the next session.
    pub(super) fn sub_lost(&mut self, id: u64, topics: Vec<Vec<u8>>) {
        for topic in self.waiting_on(id, topics) {
            self.topics.get_mut(&topic).expect("present").state = TopicState::Wanted;
        }
    }

    /// The broker refused SUB `id` (mc0d refuses a SUB as a whole). Several
    /// topics are asked for again one by one, so that one topic the broker
    /// will not give us does not cost the others; a single refused topic is
    /// no longer held, and its waiting callers get the broker's error.
    pub(super) fn sub_refused(&mut self, id: u64, topics: Vec<Vec<u8>>, message: &str) {
        // The culprit may be a topic of the SUB that is no longer held.
        let several = topics.len() > 1;
        let topics = self.waiting_on(id, topics);
        if several && self.state == State::Ready {
            for topic in topics {
                self.send_sub(vec![topic]);
            }
            return;
        }
        for topic in topics {
            let held = self.topics.remove(&topic).expect("present");
            let name = String::from_utf8_lossy(&topic);
            if held.holders as usize > held.waiters.len() {
                clog!(
                    Level::Warn,
                    "mc0 connector {}: broker refused the subscription to {name:?}: {message}",
                    self.rid
                );
            }
            for waiter in held.waiters {
                waiter.send(Err(Error::new(ErrorKind::Broker, format!("subscribe: {message}"))));
            }
        }
    }

    /// Closing: every waiting subscribe gets Closed.
    pub(super) fn close_topics(&mut self) {
        for held in std::mem::take(&mut self.topics).into_values() {
            for waiter in held.waiters {
                waiter.send(Err(Error::closed()));
            }
        }
    }
}

#[cfg(test)]
impl Session {
    /// Each held topic and its number of holders.
    pub fn held_topics(&self) -> std::collections::BTreeMap<Vec<u8>, u32> {
        self.topics.iter().map(|(t, h)| (t.clone(), h.holders)).collect()
    }
}
