//! The engine's side of a queue store (`--queue-dir`), without the store:
//! what the queues must write is gathered into a [`Batch`], handed out by
//! [`Engine::take_store_batch`] (the server gives it to the store's writer),
//! and the answers that wait for it (a PUT's OK means "on disk") go out
//! when [`Engine::store_committed`] reports the write. Until then the PUT's
//! messages are held back from consumers, so a failed write can still be
//! refused to its publisher.

use std::collections::VecDeque;
use std::time::Instant;

use mc0::log::Level;
use mc0::protocol::Reply;

use super::clients::Bytes;
use super::transport::Transport;
use super::Engine;
use crate::store::{Batch, Record};

/// A command's answer that waits for a write.
#[derive(Debug)]
struct Answer {
    rid: Bytes,
    id: Option<Vec<u8>>,
    /// A PUT is refused if its write fails; an ACK is answered OK anyway
    /// (the message stays acknowledged in memory).
    put: bool,
}

/// A batch handed to the store and what waits for it.
#[derive(Debug)]
struct Handed {
    n: u64,
    answers: Vec<Answer>,
    /// Delivery ids of its puts.
    seqs: Vec<u64>,
}

/// Writes gathered for the store, and answers waiting for them.
#[derive(Debug, Default)]
pub(super) struct StoreWork {
    batch: Batch,
    answers: Vec<Answer>,
    /// Set by the command being handled when it wrote: `Some(true)` for a
    /// PUT, `Some(false)` for an ACK.
    wrote: Option<bool>,
    handed: VecDeque<Handed>,
    next: u64,
}

impl<T: Transport> Engine<T> {
    /// Keeps queued messages in a store from now on: `records` are what it
    /// held. The server hands [`take_store_batch`](Engine::take_store_batch)'s
    /// writes to the store and reports them with
    /// [`store_committed`](Engine::store_committed).
    pub fn use_store(&mut self, records: Vec<Record>, now: Instant) {
        let n = records.len();
        self.queues.restore(records, now);
        self.hold_queue_topics();
        self.store = Some(StoreWork::default());
        if n > 0 {
            self.out.log.log(Level::Info, format_args!("{n} queued messages restored from the queue store"));
        }
    }

    /// With a store: keeps the PUT's `records` for the next batch; its OK
    /// waits for the write.
    pub(super) fn store_puts(&mut self, records: Vec<Record>) {
        if let Some(work) = &mut self.store {
            work.batch.puts.extend(records);
            work.wrote = Some(true);
        }
    }

    /// With a store: the ACK being handled removed messages; its OK waits
    /// for the write (an acknowledged message stays gone across a kill -9).
    pub(super) fn store_acked(&mut self) {
        if let Some(work) = &mut self.store {
            work.wrote.get_or_insert(false);
        }
    }

    /// What was just stored has no answer waiting for it (a message from
    /// another broker): the next command's answer must not wait in its
    /// place.
    pub(super) fn nobody_waits_for_store(&mut self) {
        if let Some(work) = &mut self.store {
            work.wrote = None;
        }
    }

    /// Whether the answer of the command just handled waits for the store
    /// (and if so, keeps it). A PUT without ID waits too: a failed write
    /// is still reported to its publisher.
    pub(super) fn answer_later(&mut self, rid: &[u8], id: Option<&[u8]>, ok: bool) -> bool {
        let Some(work) = &mut self.store else { return false };
        match work.wrote.take() {
            Some(put) if ok && (put || id.is_some()) => {
                work.answers.push(Answer { rid: Bytes::from(rid), id: id.map(<[u8]>::to_vec), put });
                true
            }
            _ => false,
        }
    }

    /// What the store must write next (numbered), if anything: the puts
    /// and removals since the last call.
    pub fn take_store_batch(&mut self) -> Option<(u64, Batch)> {
        let removed = self.queues.take_removed();
        let work = self.store.as_mut()?;
        work.batch.removals.extend(removed);
        if work.batch.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut work.batch);
        work.next += 1;
        let seqs = batch.puts.iter().map(|r| r.message.seq).collect();
        work.handed.push_back(Handed { n: work.next, answers: std::mem::take(&mut work.answers), seqs });
        Some((work.next, batch))
    }

    /// The store wrote the batches numbered up to `upto` (or failed to):
    /// their answers go out and their messages to consumers (or, failed,
    /// they are taken back and their PUTs refused).
    pub fn store_committed(&mut self, upto: u64, result: Result<(), String>, now: Instant) {
        let Some(work) = &mut self.store else { return };
        let mut done = Vec::new();
        while work.handed.front().is_some_and(|h| h.n <= upto) {
            done.push(work.handed.pop_front().expect("front"));
        }
        for handed in done {
            match &result {
                Ok(()) => {
                    if let Some(&last) = handed.seqs.iter().max() {
                        self.queues.settle(last);
                    }
                }
                Err(e) => {
                    self.queues.unpush(&handed.seqs);
                    self.out.log.log(
                        Level::Error,
                        format_args!("{} queued messages not stored, their PUTs refused: {e}", handed.seqs.len()),
                    );
                }
            }
            for answer in handed.answers {
                let id = answer.id.as_deref();
                match (&result, answer.put) {
                    (Err(e), true) => self.reply_error(&answer.rid, &format!("not stored: {e}"), id, now),
                    _ => {
                        if let Some(id) = id {
                            self.reply(&answer.rid, Reply::Ok { id }, now);
                        }
                    }
                }
            }
        }
        self.dispatch_queues(now);
    }
}
