//! Topic -> subscribers. Topics match by exact bytes (no wildcards), so a
//! hash map gives O(1) lookup per PUT. Each client also keeps the set of its
//! own topics (in [`super::clients::Client::topics`]) so forgetting a client
//! costs O(its topics), not O(all topics).
//!
//! In a cluster the table also says which topics the broker holds NATS
//! interest in: those with a subscriber, and those a queue holds
//! ([`hold`](Subscriptions::hold)), so a queue gets what other brokers
//! publish while no consumer of it is connected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::clients::{Bytes, Client};

#[derive(Debug, Default)]
pub struct Subscriptions {
    by_topic: HashMap<Bytes, HashSet<Bytes>>,
    /// (client, topic) pairs, kept so the metrics need no scan.
    pairs: usize,
    /// In a cluster: each topic that gained its first subscriber (true) or
    /// lost its last (false), in order, until taken (see
    /// [`take_interest`](Subscriptions::take_interest)).
    interest: Option<Vec<(Bytes, bool)>>,
    /// Topics held in the interest without a subscriber: those with a queue.
    held: HashSet<Bytes>,
}

impl Subscriptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts recording interest changes (a broker in a cluster); the
    /// topics held now are recorded as gained.
    pub fn track_interest(&mut self) {
        if self.interest.is_none() {
            let held = self.held.iter().filter(|t| !self.by_topic.contains_key(*t));
            self.interest = Some(self.by_topic.keys().chain(held).map(|t| (t.clone(), true)).collect());
        }
    }

    /// Holds `topic` in the interest whether or not it has subscribers
    /// (`on`: its first queue came), or stops holding it (its last queue
    /// went).
    pub fn hold(&mut self, topic: &Bytes, on: bool) {
        let changed = if on { self.held.insert(topic.clone()) } else { self.held.remove(topic) };
        if changed && !self.by_topic.contains_key(topic) {
            if let Some(interest) = &mut self.interest {
                interest.push((topic.clone(), on));
            }
        }
    }

    /// The interest changes recorded since the last call, oldest first.
    pub fn take_interest(&mut self) -> std::vec::Drain<'_, (Bytes, bool)> {
        self.interest.get_or_insert_with(Vec::new).drain(..)
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.by_topic.len()
    }

    /// Number of (client, topic) subscriptions.
    pub fn count(&self) -> usize {
        self.pairs
    }

    /// Adds `client` to `topic`; returns the shared topic key (for the
    /// client's own set) and whether it was new.
    pub fn subscribe(&mut self, topic: &[u8], client: &Bytes) -> (Bytes, bool) {
        if let Some((key, set)) = self.by_topic.get_key_value(topic) {
            let key = key.clone();
            let set_has = set.contains(client);
            if !set_has {
                self.by_topic.get_mut(topic).expect("present").insert(client.clone());
                self.pairs += 1;
            }
            return (key, !set_has);
        }
        let key: Bytes = Arc::from(topic);
        self.by_topic.insert(key.clone(), HashSet::from([client.clone()]));
        self.pairs += 1;
        if let Some(interest) = &mut self.interest {
            if self.held.is_empty() || !self.held.contains(topic) {
                interest.push((key.clone(), true));
            }
        }
        (key, true)
    }

    /// Removes `client` from `topic`; true if it was subscribed.
    pub fn unsubscribe(&mut self, topic: &[u8], client: &[u8]) -> bool {
        let Some(set) = self.by_topic.get_mut(topic) else { return false };
        let removed = set.remove(client);
        self.pairs -= usize::from(removed);
        if set.is_empty() {
            if let Some((key, _)) = self.by_topic.remove_entry(topic) {
                if let Some(interest) = &mut self.interest {
                    if self.held.is_empty() || !self.held.contains(&key) {
                        interest.push((key, false));
                    }
                }
            }
        }
        removed
    }

    /// Removes a client that is being forgotten from each of its topics.
    pub fn forget(&mut self, client: &Client) {
        for topic in &client.topics {
            self.unsubscribe(topic, &client.id);
        }
    }

    /// Every topic with its subscribers.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &HashSet<Bytes>)> {
        self.by_topic.iter()
    }

    /// Every current subscriber of `topic`.
    pub fn subscribers(&self, topic: &[u8]) -> impl Iterator<Item = &Bytes> {
        self.by_topic.get(topic).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Arc::from(s.as_bytes())
    }

    #[test]
    fn subscribe_unsubscribe_and_lookup() {
        let mut s = Subscriptions::new();
        let (a, c) = (b("a"), b("c"));
        assert!(s.subscribe(b"t", &a).1);
        assert!(!s.subscribe(b"t", &a).1);
        assert!(s.subscribe(b"t", &c).1);
        assert!(s.subscribe(b"u", &a).1);
        assert_eq!(s.topic_count(), 2);
        let mut subs: Vec<_> = s.subscribers(b"t").map(|x| x.to_vec()).collect();
        subs.sort();
        assert_eq!(subs, vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(s.subscribers(b"nope").count(), 0);
        assert!(s.unsubscribe(b"t", b"a"));
        assert!(!s.unsubscribe(b"t", b"a"));
        assert!(s.unsubscribe(b"t", b"c"));
        assert_eq!(s.topic_count(), 1, "empty topics are dropped");
        assert!(!s.unsubscribe(b"nope", b"a"));
    }

    #[test]
    fn interest_is_first_in_last_out() {
        let mut s = Subscriptions::new();
        s.subscribe(b"before", &b("a"));
        s.track_interest();
        let (a, c) = (b("a"), b("c"));
        s.subscribe(b"t", &a);
        s.subscribe(b"t", &c);
        s.unsubscribe(b"t", b"a");
        s.unsubscribe(b"before", b"a");
        s.unsubscribe(b"t", b"c");
        let got: Vec<_> = s.take_interest().map(|(t, on)| (t.to_vec(), on)).collect();
        let expected = [("before", true), ("t", true), ("before", false), ("t", false)];
        assert_eq!(got, expected.map(|(t, on)| (t.as_bytes().to_vec(), on)));
        assert_eq!(s.take_interest().count(), 0);
    }

    #[test]
    fn a_held_topic_keeps_its_interest_without_subscribers() {
        let mut s = Subscriptions::new();
        let (q, before) = (b("q"), b("before"));
        s.hold(&before, true);
        s.track_interest();
        s.hold(&q, true);
        s.subscribe(b"q", &b("a"));
        s.unsubscribe(b"q", b"a");
        s.subscribe(b"q", &b("a"));
        s.hold(&q, false);
        s.hold(&before, false);
        s.unsubscribe(b"q", b"a");
        let got: Vec<_> = s.take_interest().map(|(t, on)| (t.to_vec(), on)).collect();
        let expected = [("before", true), ("q", true), ("before", false), ("q", false)];
        assert_eq!(got, expected.map(|(t, on)| (t.as_bytes().to_vec(), on)));
    }
}
