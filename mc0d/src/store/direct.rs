//! The store as the socket thread runs it where the file system allows
//! `O_DIRECT` (ext4, XFS, …): each journal record is written through Linux
//! AIO ([`Aio`]) with `RWF_DSYNC`, and its completion wakes the socket
//! thread's poll, so a PUT's OK waits for one flushed write and no thread
//! hand-off. The checkpoints (redb transactions, up to the whole journal)
//! run on a thread of their own.
//!
//! The write policy is [`DiskStore`]'s: one record per group of batches,
//! synced when it holds a PUT; one write (record or checkpoint) in flight
//! at a time, and what the engine hands over meanwhile gathers into the
//! next one (group commit). A batch that does not fit in what is left of
//! the journal goes into redb with the checkpoint that empties it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::aio::Aio;
use super::journal::{BlockWrite, Journal, NewEnd};
use super::thread::Committed;
use super::{next_generation, Batch, DiskStore, Pending, Redb, Writes};

/// A [`DiskStore`] whose journal the socket thread writes itself.
pub struct DirectStore {
    journal: Journal,
    /// The journal opened `O_DIRECT`.
    file: File,
    aio: Aio,
    since_checkpoint: Pending,
    checkpoints: Checkpoints,
    in_flight: Option<InFlight>,
    /// Batches handed over while a write was in flight, and the number of
    /// the last.
    gathering: Option<(u64, Batch)>,
    answers: VecDeque<Committed>,
}

/// The write in flight and what waits for it.
enum InFlight {
    Record { upto: u64, writes: Writes, then: NewEnd, len: usize },
    Checkpoint { upto: u64, generation: u64 },
}

/// What the checkpoint thread gets: what the journal holds, the batch that
/// did not fit, the next generation.
type Job = (Pending, Writes, u64);

/// The checkpoint thread, which owns redb. It answers with what the journal
/// held (taken back if the checkpoint failed) and the result.
struct Checkpoints {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<(Pending, Result<(), String>)>,
    thread: Option<JoinHandle<()>>,
}

impl DirectStore {
    /// Takes `store` over if its journal can be written `O_DIRECT` through
    /// AIO here, which a first write proves (it rewrites the journal's
    /// first block as it is); else gives it back with the reason.
    pub fn new(store: DiskStore) -> Result<DirectStore, Box<(DiskStore, String)>> {
        let prepared = (|| {
            let file = store.journal.open_direct()?;
            let mut aio = Aio::new()?;
            let signal = aio.signal()?;
            let BlockWrite { buf, offset, .. } = store.journal.block_write_of_tail();
            let len = buf.as_slice().len();
            aio.submit(&file, buf, offset, true)?;
            match aio.completed(true) {
                Some(Ok(n)) if n == len => Ok((file, aio, signal)),
                Some(Ok(n)) => Err(std::io::Error::other(format!("a write of {len} bytes wrote {n}"))),
                Some(Err(e)) => Err(e),
                None => Err(std::io::Error::other("the write did not complete")),
            }
        })();
        let (file, aio, signal) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                let reason = store.journal.error(&e);
                return Err(Box::new((store, reason)));
            }
        };
        let DiskStore { redb, journal, since_checkpoint } = store;
        let checkpoints = match Checkpoints::start(redb, signal) {
            Ok(checkpoints) => checkpoints,
            Err((redb, e)) => return Err(Box::new((DiskStore { redb, journal, since_checkpoint }, e))),
        };
        Ok(DirectStore {
            journal,
            file,
            aio,
            since_checkpoint,
            checkpoints,
            in_flight: None,
            gathering: None,
            answers: VecDeque::new(),
        })
    }

    /// Takes batch number `n` (numbers rise by one); it is written at once,
    /// or with the others that come while a write is in flight.
    pub fn submit(&mut self, n: u64, batch: Batch) {
        match &mut self.gathering {
            Some((upto, gathered)) => {
                gathered.append(batch);
                *upto = n;
            }
            None => self.gathering = Some((n, batch)),
        }
        self.start_next();
    }

    /// The descriptor to poll: readable once a write completed.
    pub fn completion_fd(&self) -> RawFd {
        self.aio.completion_fd()
    }

    /// The next answer, if any: batches up to its number are written, or
    /// failed.
    pub fn try_result(&mut self) -> Option<Committed> {
        self.aio.clear_signal();
        self.reap(false);
        self.answers.pop_front()
    }

    /// Whether the checkpoint thread still runs.
    pub fn is_running(&self) -> bool {
        self.checkpoints.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Writes everything handed over and returns the answers not taken yet.
    pub fn finish(&mut self) -> Vec<Committed> {
        self.start_next();
        while self.in_flight.is_some() {
            self.reap(true);
        }
        self.answers.drain(..).collect()
    }

    /// Starts writing what gathered, unless a write is in flight.
    fn start_next(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some((upto, batch)) = self.gathering.take() else { return };
        if batch.is_empty() {
            self.answer_now(upto, Ok(()));
            return;
        }
        let writes = Writes::encode(&batch);
        let payload = writes.payload();
        if !self.journal.fits(payload.len()) {
            let generation = next_generation(self.journal.generation());
            let journaled = std::mem::take(&mut self.since_checkpoint);
            match self.checkpoints.start_job((journaled, writes, generation)) {
                Ok(()) => self.in_flight = Some(InFlight::Checkpoint { upto, generation }),
                Err((journaled, e)) => {
                    self.since_checkpoint = journaled;
                    self.answer_now(upto, Err(e));
                }
            }
            return;
        }
        let BlockWrite { buf, offset, then } = self.journal.block_write(&payload, writes.needs_sync());
        let len = buf.as_slice().len();
        match self.aio.submit(&self.file, buf, offset, writes.needs_sync()) {
            Ok(()) => self.in_flight = Some(InFlight::Record { upto, writes, then, len }),
            Err(e) => {
                let e = self.journal.error(&e);
                self.answer_now(upto, Err(e));
            }
        }
    }

    /// An answer that no completion will signal (the write could not
    /// start): the poll is woken for it all the same, so it goes out on the
    /// next turn rather than after the poll's longest sleep.
    fn answer_now(&mut self, upto: u64, result: Result<(), String>) {
        self.answers.push_back((upto, result));
        self.aio.signal_now();
    }

    /// Takes in the write in flight if it completed (with `wait`, once it
    /// did), and starts the next.
    fn reap(&mut self, wait: bool) {
        match self.in_flight.take() {
            None => {}
            Some(InFlight::Record { upto, writes, then, len }) => match self.aio.completed(wait) {
                None => self.in_flight = Some(InFlight::Record { upto, writes, then, len }),
                Some(Ok(n)) if n == len => {
                    self.journal.wrote(then);
                    self.since_checkpoint.record(writes);
                    self.answers.push_back((upto, Ok(())));
                }
                // The journal's end stays: the next record takes its place.
                Some(Ok(n)) => {
                    let e = format!("a write of {len} bytes wrote {n}");
                    self.answers.push_back((upto, Err(self.journal.error(&e))));
                }
                Some(Err(e)) => self.answers.push_back((upto, Err(self.journal.error(&e)))),
            },
            Some(InFlight::Checkpoint { upto, generation }) => match self.checkpoints.result(wait) {
                None => self.in_flight = Some(InFlight::Checkpoint { upto, generation }),
                Some(Ok(())) => {
                    self.journal.restart(generation);
                    self.answers.push_back((upto, Ok(())));
                }
                Some(Err((journaled, e))) => {
                    self.since_checkpoint = journaled;
                    self.answers.push_back((upto, Err(e)));
                }
            },
        }
        self.start_next();
    }
}

impl Drop for DirectStore {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Checkpoints {
    /// Starts the thread; `signal` (the AIO eventfd) wakes the socket
    /// thread's poll when a checkpoint is done.
    fn start(mut redb: Redb, signal: File) -> Result<Checkpoints, (Redb, String)> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel();
        // The thread gets redb only once it runs, so a failed start keeps it.
        let (hand_over, take) = mpsc::channel::<Redb>();
        let thread = std::thread::Builder::new().name("mc0d-checkpoint".into()).spawn(move || {
            let Ok(mut redb) = take.recv() else { return };
            for (journaled, writes, generation) in inbox {
                let result = redb.checkpoint(&journaled, &writes, generation);
                if outbox.send((journaled, result)).is_err() {
                    break;
                }
                // A full counter (it never is: the socket thread clears it
                // at every turn) would only delay the wake to the next poll.
                let _ = (&signal).write_all(&1u64.to_ne_bytes());
            }
        });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => return Err((redb, format!("cannot start the checkpoint thread: {e}"))),
        };
        if let Err(mpsc::SendError(back)) = hand_over.send(redb) {
            redb = back;
            return Err((redb, "the checkpoint thread stopped at its start".into()));
        }
        Ok(Checkpoints { jobs: Some(jobs), done, thread: Some(thread) })
    }

    fn start_job(&self, job: Job) -> Result<(), (Pending, String)> {
        let Some(jobs) = &self.jobs else { return Err((job.0, "the checkpoint thread is stopping".into())) };
        jobs.send(job).map_err(|mpsc::SendError((journaled, _, _))| {
            (journaled, "the checkpoint thread stopped; queued messages cannot be stored".to_string())
        })
    }

    /// The checkpoint's result once it is done (with `wait`, waits for it);
    /// a failure gives back what the journal held.
    fn result(&self, wait: bool) -> Option<Result<(), (Pending, String)>> {
        let answer = if wait { self.done.recv().ok() } else { self.done.try_recv().ok() };
        match answer {
            Some((_, Ok(()))) => Some(Ok(())),
            Some((journaled, Err(e))) => Some(Err((journaled, e))),
            None if wait || self.thread.as_ref().is_some_and(JoinHandle::is_finished) => {
                Some(Err((Pending::default(), "the checkpoint thread stopped".into())))
            }
            None => None,
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::store::tests::{disk_dir, record, seqs};
    use crate::store::{Record, Store};

    fn direct(dir: &Path, capacity: u64) -> DirectStore {
        let (store, _) = DiskStore::open_with(dir, Instant::now(), capacity).unwrap();
        DirectStore::new(store).map_err(|refused| refused.1).expect("O_DIRECT AIO on the workspace's disk")
    }

    /// Waits (at most 10 s) until batch `upto` is answered; returns the
    /// answers.
    fn answers_until(store: &mut DirectStore, upto: u64) -> Vec<Committed> {
        let mut answers = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while answers.last().is_none_or(|(n, _)| *n < upto) {
            assert!(Instant::now() < deadline, "batch {upto} answered in time: {answers:?}");
            let mut fds = [libc::pollfd { fd: store.completion_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: one pollfd, for at most 100 ms.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            answers.extend(std::iter::from_fn(|| store.try_result()));
        }
        answers
    }

    fn reopened(dir: &Path, capacity: u64) -> Vec<Record> {
        DiskStore::open_with(dir, Instant::now(), capacity).unwrap().1
    }

    #[test]
    fn batches_handed_over_during_a_write_go_into_the_next_and_come_back_after_a_reopen() {
        let dir = disk_dir("direct-group");
        let mut store = direct(&dir, 1 << 20);
        store.submit(1, Batch { puts: vec![record(1, b"a")], removals: vec![] });
        // While the first is in flight: gathered into one more write.
        store.submit(2, Batch { puts: vec![record(2, b"b")], removals: vec![] });
        store.submit(3, Batch { puts: vec![record(3, b"c")], removals: vec![1] });
        let answers = answers_until(&mut store, 3);
        assert!(answers.iter().all(|(_, r)| r.is_ok()), "{answers:?}");
        assert!(answers.len() <= 2, "2 and 3 in one write: {answers:?}");
        drop(store);
        assert_eq!(seqs(&reopened(&dir, 1 << 20)), vec![2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An answer that needs no write (here: an empty batch) wakes the poll
    /// at once, as a completion would.
    #[test]
    fn an_answer_without_a_write_wakes_the_poll() {
        let dir = disk_dir("direct-now");
        let mut store = direct(&dir, 1 << 20);
        store.submit(1, Batch::default());
        let mut fds = [libc::pollfd { fd: store.completion_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one pollfd, not waiting.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) }, 1, "readable at once");
        assert_eq!(store.try_result(), Some((1, Ok(()))));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) }, 0, "cleared by taking the answer");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A journal too small for the traffic: checkpoints on their thread as
    /// it fills, and a batch bigger than all of it goes into redb with one.
    #[test]
    fn a_full_journal_checkpoints_on_its_thread_and_an_oversized_batch_goes_to_redb() {
        let dir = disk_dir("direct-small");
        let capacity = 2 * 4096;
        let mut store = direct(&dir, capacity);
        let mut generations = std::collections::HashSet::new();
        for seq in 1..=100 {
            store.submit(seq, Batch { puts: vec![record(seq, &[b'x'; 300])], removals: vec![] });
            answers_until(&mut store, seq);
            generations.insert(store.journal.generation());
        }
        assert!(generations.len() > 3, "checkpointed on the way");
        store.submit(101, Batch { puts: vec![record(101, &[b'y'; 10_000])], removals: (1..=99).collect() });
        assert!(answers_until(&mut store, 101).iter().all(|(_, r)| r.is_ok()));
        drop(store);
        let loaded = reopened(&dir, capacity);
        assert_eq!(seqs(&loaded), vec![100, 101]);
        assert_eq!(loaded[1].message.body, vec![b'y'; 10_000]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_it_cannot_write_direct_is_given_back_with_the_reason() {
        let dir = disk_dir("direct-refused");
        // Not made of whole blocks: no O_DIRECT writes.
        let capacity = 4096 + 512;
        let (store, _) = DiskStore::open_with(&dir, Instant::now(), capacity).unwrap();
        let (mut store, why) = *DirectStore::new(store).err().expect("refused");
        assert!(why.contains("queues.journal") && why.contains("multiple of 4096"), "{why}");
        // Still usable, as the store thread uses it.
        store.commit(&Batch { puts: vec![record(1, b"a")], removals: vec![] }).unwrap();
        drop(store);
        assert_eq!(seqs(&reopened(&dir, capacity)), vec![1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// How long a 1 KB PUT alone waits for its answer, the wake-up of the
    /// waiting thread included: written by the socket thread through AIO,
    /// and by the store thread (docs/BENCHMARKS.md). Blocks of 500 in turn,
    /// so both see the same minutes of the disk:
    ///
    ///     cargo test --release -p mc0d --lib answer_latency -- --ignored --nocapture
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn answer_latency() {
        use crate::store::StoreThread;
        let (aio_dir, thread_dir) = (disk_dir("latency-aio"), disk_dir("latency-thread"));
        let mut direct = direct(&aio_dir, crate::store::JOURNAL_CAPACITY);
        let ctx = zmq::Context::new();
        let (store, _) = DiskStore::open(&thread_dir, Instant::now()).unwrap();
        let thread = StoreThread::start(&ctx, Box::new(store)).unwrap();
        let (mut aio_ms, mut thread_ms) = (Vec::new(), Vec::new());
        let mut n = 0;
        for _ in 0..4 {
            let start = Instant::now();
            for _ in 0..500 {
                n += 1;
                direct.submit(n, Batch { puts: vec![record(n, &[b'x'; 1024])], removals: vec![] });
                answers_until(&mut direct, n);
            }
            aio_ms.push(start.elapsed().as_secs_f64() * 1e3 / 500.0);
            let start = Instant::now();
            for _ in 0..500 {
                n += 1;
                thread.submit(n, Batch { puts: vec![record(n, &[b'x'; 1024])], removals: vec![] });
                thread.results().poll(zmq::POLLIN, 10_000).unwrap();
                assert_eq!(thread.try_result().unwrap().map(|(upto, _)| upto), Some(n));
            }
            thread_ms.push(start.elapsed().as_secs_f64() * 1e3 / 500.0);
        }
        let show = |ms: &[f64]| ms.iter().map(|m| format!("{m:.3}")).collect::<Vec<_>>().join(", ");
        println!("MEASURE 1 KB PUT alone, ms to its answer: aio {}; store thread {}", show(&aio_ms), show(&thread_ms));
        drop((direct, thread));
        std::fs::remove_dir_all(&aio_dir).unwrap();
        std::fs::remove_dir_all(&thread_dir).unwrap();
    }

    /// One step of the equivalence test: a batch of puts (body sizes) and
    /// removals (indexes into the messages put so far).
    type Step = (Vec<usize>, Vec<usize>);

    fn step() -> impl Strategy<Value = Step> {
        (proptest::collection::vec(0usize..3000, 0..4), proptest::collection::vec(any::<usize>(), 0..3))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever the batches, and however they gather, the socket
        /// thread's direct writes leave the same messages as the store
        /// thread's buffered ones.
        #[test]
        fn direct_writes_keep_what_buffered_writes_keep(steps in proptest::collection::vec(step(), 1..40), wait_every in 1u64..5) {
            let capacity = 4 * 4096;
            let buffered_dir = disk_dir("equal-buffered");
            let direct_dir = disk_dir("equal-direct");
            let (mut buffered, _) = DiskStore::open_with(&buffered_dir, Instant::now(), capacity).unwrap();
            let mut direct = direct(&direct_dir, capacity);
            let mut put = Vec::new();
            let mut seq = 0;
            for (n, (bodies, removals)) in steps.into_iter().enumerate() {
                let n = n as u64 + 1;
                let mut batch = Batch::default();
                for size in bodies {
                    seq += 1;
                    batch.puts.push(record(seq, &vec![b'a' + (seq % 26) as u8; size]));
                    put.push(seq);
                }
                for i in removals {
                    if !put.is_empty() {
                        batch.removals.push(put.swap_remove(i % put.len()));
                    }
                }
                buffered.commit(&batch).unwrap();
                direct.submit(n, batch);
                if n % wait_every == 0 {
                    prop_assert!(answers_until(&mut direct, n).iter().all(|(_, r)| r.is_ok()));
                }
            }
            prop_assert!(direct.finish().iter().all(|(_, r)| r.is_ok()));
            drop((buffered, direct));
            let mut expected = put.clone();
            expected.sort_unstable();
            prop_assert_eq!(seqs(&reopened(&buffered_dir, capacity)), expected.clone());
            prop_assert_eq!(reopened(&direct_dir, capacity), reopened(&buffered_dir, capacity));
            std::fs::remove_dir_all(&buffered_dir).unwrap();
            std::fs::remove_dir_all(&direct_dir).unwrap();
        }
    }
}
