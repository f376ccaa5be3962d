//! What the broker sends: MESSAGEs for the inbox, and the OK or ERROR that
//! settles each command by its ID.

use std::time::Instant;

use super::{Pending, Session, State};
use crate::connector::logging::clog;
use crate::connector::message::{Counters, Message};
use crate::connector::{Error, ErrorKind};
use crate::keys::key_to_z85;
use crate::log::Level;
use crate::protocol::{self, Reply};

impl Session {
    /// Frames received from the broker.
    pub fn on_frames(&mut self, frames: &[Vec<u8>], now: Instant) {
        self.heartbeat.heard(now);
        let reply = match Reply::parse(frames, &self.limits) {
            Ok(reply) => reply,
            Err(e) => {
                clog!(Level::Warn, "mc0 connector {}: ignoring a malformed message from the broker: {e}", self.rid);
                return;
            }
        };
        match reply {
            Reply::Noop => {}
            Reply::Message { topic, headers, body } => {
                Counters::add(&self.counters.received, 1);
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                let mut message = Message {
                    topic: text(topic),
                    headers: Vec::with_capacity(headers.len()),
                    body: if body.len() == 1 { body[0].to_vec() } else { body.concat() },
                    sender: None,
                    sender_key: None,
                };
                for (name, value) in headers {
                    match name {
                        n if n == protocol::SENDER.as_bytes() => message.sender = Some(text(value)),
                        n if n == protocol::SENDER_KEY.as_bytes() => message.sender_key = Some(text(value)),
                        n if n == protocol::QUEUE_DELIVERY.as_bytes() => self.unfold(value, &mut message),
                        _ => message.headers.push((text(name), value.to_vec())),
                    }
                }
                self.deliveries.push(message);
            }
            Reply::Ok { id } => {
                if let Some(id) = parse_id(id) {
                    self.on_ok(id, now);
                }
            }
            Reply::Error { message, id } => {
                let message = String::from_utf8_lossy(message).into_owned();
                self.on_error(message, id.and_then(parse_id), now);
            }
        }
    }

    /// A compact delivery's `QUEUE-DELIVERY` becomes the `QUEUE` and
    /// `DELIVERY` headers a classic one carries, so applications see one
    /// form. It proves that this session's broker reads ACK id lists.
    fn unfold(&mut self, value: &[u8], message: &mut Message) {
        match protocol::parse_queue_delivery(value) {
            Ok((delivery, queue)) => {
                message.headers.push((protocol::QUEUE.to_string(), queue.to_vec()));
                message.headers.push((protocol::DELIVERY.to_string(), delivery.to_vec()));
                // Not from a session being replaced: its broker may be gone.
                self.lists_acks |= self.state == State::Ready;
            }
            Err(e) => {
                clog!(Level::Warn, "mc0 connector {}: a queue delivery from the broker has {e}", self.rid);
                message.headers.push((protocol::QUEUE_DELIVERY.to_string(), value.to_vec()));
            }
        }
    }

    pub(super) fn on_ok(&mut self, id: u64, now: Instant) {
        let Some(pending) = self.pending.remove(&id) else {
            // An answer to a command settled as lost, e.g. after a re-handshake.
            return;
        };
        if !matches!(pending, Pending::Connect) {
            self.settle_answered_before(id, now);
        }
        self.settle_ok(id, pending, now);
    }

    /// The broker answers one client's commands in order, so an answer to
    /// `id` means every earlier command was handled too: their answers were
    /// dropped on the way (a broker drops replies to a client whose queue is
    /// full). Without this a lost OK would pin its PUT in flight forever.
    /// (Not for CONNECT: commands before it went to a broker that forgot us.)
    pub(super) fn settle_answered_before(&mut self, id: u64, now: Instant) {
        while let Some((&first, _)) = self.pending.first_key_value() {
            if first >= id {
                break;
            }
            let pending = self.pending.remove(&first).expect("present");
            if matches!(pending, Pending::Connect) {
                // Cannot precede a later answer; keep it to be safe.
                self.pending.insert(first, pending);
                break;
            }
            self.settle_ok(first, pending, now);
        }
    }

    pub(super) fn settle_ok(&mut self, id: u64, pending: Pending, now: Instant) {
        match pending {
            Pending::Connect => self.on_handshake_ok(id, now),
            Pending::Sub { topics } => self.sub_ok(id, topics),
            Pending::Unsub { answer } => {
                if let Some(answer) = answer {
                    answer.send(Ok(()));
                }
            }
            Pending::Put(q) => {
                self.finish_publish(q.seq, true);
                self.check_flushes();
            }
            Pending::Probe => {}
            Pending::Disconnect => self.exit = true,
        }
    }

    /// Settles a command whose answer will never come. Returns 1 for a
    /// dropped PUT (for the caller's log line), else 0.
    pub(super) fn settle_lost(&mut self, id: u64, pending: Pending) -> u64 {
        match pending {
            Pending::Connect | Pending::Probe | Pending::Disconnect => 0,
            Pending::Sub { topics } => {
                self.sub_lost(id, topics);
                0
            }
            Pending::Unsub { answer } => {
                if let Some(answer) = answer {
                    answer.send(Ok(()));
                }
                0
            }
            Pending::Put(q) => {
                self.finish_publish(q.seq, false);
                1
            }
        }
    }

    pub(super) fn on_error(&mut self, message: String, id: Option<u64>, now: Instant) {
        if message == protocol::ACCESS_DENIED {
            // Our key was revoked (or never authorized): nothing on this
            // connection will be served. A new socket is refused at the
            // handshake until the key is listed again.
            self.key_refused("the broker answered \"access denied\"", now);
            return;
        }
        let not_connected = message == protocol::NOT_CONNECTED || message.starts_with("not connected");
        let pending = id.and_then(|id| self.pending.remove(&id).map(|p| (id, p)));
        let rid = self.rid.clone();
        let Some((id, pending)) = pending else {
            // A "not connected" to a command of a session already
            // replaced says nothing about the current one.
            if not_connected && id.map_or(true, |id| id >= self.session_start) {
                self.renegotiate(now);
            } else if !not_connected {
                clog!(Level::Warn, "mc0 connector {rid}: broker error: {message}");
            }
            return;
        };
        match pending {
            Pending::Connect => {
                let error = Error::new(ErrorKind::Broker, format!("broker refused CONNECT: {message}"));
                if let Some(answer) = self.first.as_mut().and_then(|f| f.answer.take()) {
                    answer.send(Err(error));
                    self.exit = true;
                } else {
                    clog!(Level::Error, "mc0 connector {rid}: {error}");
                    self.reset_link(error.message(), now);
                }
            }
            Pending::Put(q) if not_connected => {
                // Never delivered: send it again after the re-handshake.
                self.inflight_puts -= 1;
                self.requeue(q);
                self.renegotiate(now);
            }
            other if not_connected => {
                // Subscriptions are made again by the re-handshake.
                self.settle_lost(id, other);
                self.renegotiate(now);
            }
            Pending::Sub { topics } => {
                self.settle_answered_before(id, now);
                self.sub_refused(id, topics, &message);
            }
            Pending::Unsub { answer } => {
                self.settle_answered_before(id, now);
                if let Some(answer) = answer {
                    answer.send(Err(Error::new(ErrorKind::Broker, format!("unsubscribe: {message}"))));
                }
            }
            Pending::Put(q) => {
                self.settle_answered_before(id, now);
                clog!(
                    Level::Warn,
                    "mc0 connector {rid}: broker refused a publish to {:?}: {message}",
                    String::from_utf8_lossy(&q.publish.topic)
                );
                self.finish_publish(q.seq, false);
                self.check_flushes();
            }
            Pending::Probe => clog!(Level::Warn, "mc0 connector {rid}: broker error on NOOP: {message}"),
            Pending::Disconnect => self.exit = true,
        }
    }

    /// The broker will not serve our key: fails `connect()` if it is still
    /// waiting; else reports it once per episode and resets the link (the
    /// transport does not retry by itself), so a key listed again is picked
    /// up after the usual backoff.
    pub(super) fn key_refused(&mut self, how: &str, now: Instant) {
        let key = self.settings.curve.as_ref().map_or_else(|| "(none: curve is off)".into(), |k| key_to_z85(&k.public));
        let message = format!(
            "broker refused our key {key} ({how}): it is not in the authorized keys of broker {}; \
             ask its operator to add our public key",
            self.server().endpoint
        );
        self.counters.note_error(message.clone());
        if self.first_failed(Error::new(ErrorKind::Broker, message.clone()), now) {
            return;
        }
        if !std::mem::replace(&mut self.refused, true) {
            clog!(Level::Error, "mc0 connector {}: {message}; retrying", self.rid);
        }
        self.reset_link(&message, now);
    }
}

fn parse_id(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse() {
        assert_eq!(parse_id(b"17"), Some(17));
        assert_eq!(parse_id(b"x"), None);
        assert_eq!(parse_id(b"\xff"), None);
    }
}
