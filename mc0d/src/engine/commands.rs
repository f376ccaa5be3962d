//! What each command from a known client (or a CONNECT) does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mc0::log::Level;
use mc0::protocol::{Command, Reply, SENDER, SENDER_KEY};

use super::acl;
use super::clients::Session;
use super::shared::Shared;
use super::transport::Transport;
use super::{show, Engine, Sender};
use crate::stats::RefusalReason;

impl<T: Transport> Engine<T> {
    /// Runs a parsed command from a known client (or a CONNECT); an error is
    /// a limit or rule the command would break, and nothing of it was done.
    pub(super) fn execute(
        &mut self,
        rid: &[u8],
        sender: &Sender<'_>,
        command: Command<'_>,
        now: Instant,
    ) -> Result<(), String> {
        match command {
            Command::Connect { version, ttl_ms, .. } => {
                if let Some(actor) = sender.actor() {
                    self.judge(rid, sender, "CONNECT", acl::check_connect(actor, rid), now)?;
                }
                let key = match sender.key {
                    Some(_) => format!(", key {}", self.describe(sender.key)),
                    None => String::new(),
                };
                let session = Session {
                    user: match sender.listed {
                        Some((key, _)) => Some(key.clone()),
                        None => sender.key.map(Arc::from),
                    },
                    identity: sender.listed.and_then(|(_, entry)| entry.name.clone()),
                    conn: sender.conn,
                };
                // As for a session that moves: an earlier end of this
                // connection number is not this connection's.
                self.connections_lost(true, now);
                let old = self.clients.connect(rid, session, Duration::from_millis(ttl_ms), now);
                self.out.stats.connects += 1;
                let version = String::from_utf8_lossy(version);
                match old {
                    Some(old) => {
                        self.subs.forget(&old);
                        self.forget_consumer(rid, now);
                        self.out.log.log(
                            Level::Info,
                            format_args!(
                                "client {} reconnected (version {version:?}, ttl {ttl_ms} ms{key}; {} old subscriptions dropped)",
                                show(rid),
                                old.topics.len()
                            ),
                        );
                    }
                    None => self.out.log.log(
                        Level::Info,
                        format_args!("client {} connected (version {version:?}, ttl {ttl_ms} ms{key})", show(rid)),
                    ),
                }
            }
            Command::Disconnect { .. } => {
                if let Some(client) = self.clients.remove(rid) {
                    self.subs.forget(&client);
                    self.out.stats.disconnects += 1;
                    self.forget_consumer(rid, now);
                }
                self.out.log.log(Level::Info, format_args!("client {} disconnected", show(rid)));
            }
            Command::Sub { queue: Some(name), compact, topics, .. } => {
                self.join_queues(rid, sender, name, compact, &topics, now)?
            }
            Command::Unsub { queue: Some(name), topics, .. } => self.leave_queues(rid, name, &topics, now),
            Command::Ack { deliveries, .. } => self.ack(rid, &deliveries),
            Command::Sub { topics, .. } => {
                let Some(client) = self.clients.get(rid) else { return Ok(()) };
                let mut new: Vec<&[u8]> = topics.iter().copied().filter(|t| !client.topics.contains(*t)).collect();
                new.sort_unstable();
                new.dedup();
                if client.topics.len() + new.len() > self.max_subscriptions {
                    self.out.stats.refused.add(RefusalReason::LimitExceeded, 1);
                    return Err(format!(
                        "too many subscriptions: {} held + {} new, over the limit of {} per client",
                        client.topics.len(),
                        new.len(),
                        self.max_subscriptions
                    ));
                }
                if let Some(actor) = sender.actor() {
                    let verdict = new.iter().try_for_each(|t| acl::check_subscribe(actor, t));
                    self.judge(rid, sender, "SUB", verdict, now)?;
                }
                let Some(client) = self.clients.get_mut(rid) else { return Ok(()) };
                let debug = self.out.log.enabled(Level::Debug);
                for topic in new {
                    let (key, _) = self.subs.subscribe(topic, &client.id);
                    client.topics.insert(key);
                    if debug {
                        self.out
                            .log
                            .log(Level::Debug, format_args!("client {} subscribed to {}", show(rid), show(topic)));
                    }
                }
            }
            Command::Unsub { topics, .. } => {
                let Some(client) = self.clients.get_mut(rid) else { return Ok(()) };
                let debug = self.out.log.enabled(Level::Debug);
                for topic in topics {
                    self.subs.unsubscribe(topic, rid);
                    client.topics.remove(topic);
                    if debug {
                        self.out
                            .log
                            .log(Level::Debug, format_args!("client {} unsubscribed from {}", show(rid), show(topic)));
                    }
                }
            }
            Command::Put { topic, mut headers, body, .. } => {
                let size: usize = body.iter().map(|b| b.len()).sum();
                if size > self.max_body_size {
                    self.out.stats.refused.add(RefusalReason::LimitExceeded, 1);
                    return Err(format!("body is {size} bytes, over the limit of {}", self.max_body_size));
                }
                if let Some(actor) = sender.actor() {
                    self.judge(rid, sender, "PUT", acl::check_publish(actor, topic, &self.policy), now)?;
                }
                let queued = self.queues.has_topic(topic);
                if queued {
                    self.check_queue_room(topic, &headers, size)?;
                }
                let local = self.subs.subscribers(topic).next().is_some();
                let mut delivered = 0usize;
                if local || queued || self.cluster.is_some() {
                    // The broker's stamp replaces any the client sent.
                    headers.retain(|(name, _)| *name != SENDER.as_bytes() && *name != SENDER_KEY.as_bytes());
                    let stamp = sender.stamp().map(|(header, value)| (header.as_bytes(), value.as_bytes()));
                    let headers: Vec<(&[u8], &[u8])> = stamp.into_iter().chain(headers).collect();
                    let forward = local || self.cluster.is_some();
                    // Only a queued message needs its parts again after the
                    // frames are built: no copy on the plain pub/sub path.
                    let (frames, kept) = if queued {
                        let frames = forward.then(|| {
                            Reply::Message { topic, headers: headers.clone(), body: body.clone() }.to_frames()
                        });
                        (frames, Some((headers, body)))
                    } else {
                        (forward.then(|| Reply::Message { topic, headers, body }.to_frames()), None)
                    };
                    // The cluster first: a message NATS refuses (over its
                    // max_payload) is refused as a whole, kept nowhere.
                    if let (Some(cluster), Some(frames)) = (&mut self.cluster, &frames) {
                        cluster.publish(topic, frames, &self.out.log)?;
                    }
                    if let Some((headers, body)) = kept {
                        // A connection that ended must not pass its routing
                        // id's deliveries on to one that took the id since.
                        self.connections_lost(true, now);
                        self.enqueue(topic, &headers, &body, now)?;
                    }
                    if let (true, Some(frames)) = (local, frames) {
                        // Built once; recipients share it (see `shared`).
                        delivered = self.fan_out(topic, &mut Shared::new(frames), now);
                    }
                }
                self.out.stats.puts += 1;
                self.out.stats.delivered += delivered as u64;
                if self.out.log.enabled(Level::Debug) {
                    self.out.log.log(
                        Level::Debug,
                        format_args!("PUT {} ({size} bytes) from {} delivered to {delivered}", show(topic), show(rid)),
                    );
                }
            }
            Command::Noop { .. } => {}
        }
        Ok(())
    }
}
