//! Where queued messages are kept across restarts (`--queue-dir`), behind a
//! small interface ([`Store`]) so another backend (NATS JetStream for a
//! cluster) can follow. The broker's socket thread never waits for the
//! disk: it writes the journal itself through Linux AIO where the file
//! system allows `O_DIRECT` ([`DirectStore`]), else it hands the writes to
//! a store thread ([`StoreThread`]); `--queue-writer` chooses
//! ([`StoreWriter`]).
//!
//! The disk store is [redb](https://docs.rs/redb): an embedded, pure-Rust,
//! actively maintained B-tree store with ACID transactions and crash
//! safety (copy-on-write pages, checksummed commits; a database left open
//! by a kill -9 is repaired on the next open). `sled` is unmaintained.
//! In front of it is a journal of our own (`queues.journal`),
//! because a redb commit of one 1 KB PUT costs 0.34–0.52 ms here and one
//! record written in place in the journal 0.20–0.22 ms (`commit_cost`
//! below, docs/BENCHMARKS.md): where a publisher awaits each OK, that is
//! most of the difference to plain pub/sub.
//!
//! Write policy (group commit): one journal write is in flight at a time,
//! and every write handed over meanwhile goes into the next journal
//! record, PUTs and removals together. A record holding a PUT is on disk
//! (`RWF_DSYNC` through AIO, or `fdatasync` on the store thread) before
//! the broker sends the OKs of its PUTs, so an acknowledged message
//! survives a kill -9 and a power loss. One with only acknowledgements and
//! expiries is written without a sync (the next one takes it along): after
//! a power loss an acknowledged message may come back, which at-least-once
//! allows; after a kill -9 it does not (the ACK's OK waits for the write).
//! When the journal (16 MiB) is full, and at every start, a checkpoint
//! moves its net effect into redb in one fsynced transaction (a message
//! put and acknowledged in between never reaches redb) and the journal
//! starts over; a batch that does not fit goes into redb with it. The cost
//! is measured in docs/BENCHMARKS.md.

mod aio;
mod direct;
mod journal;
mod thread;

pub use direct::DirectStore;
pub use thread::{Committed, StoreThread};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};

use journal::Journal;

use crate::config::QueueWriter;
use crate::engine::queues::Stored;
use crate::error::BrokerError;

/// Delivery id -> the encoded message (see [`encode`]).
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

/// The store's own facts: [`GENERATION`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The journal generation that follows the last checkpoint: only the
/// journal's records of this generation are newer than redb.
const GENERATION: &str = "journal generation";

/// redb's file in `--queue-dir`.
pub const FILE_NAME: &str = "queues.redb";

/// The journal's file in `--queue-dir`.
pub const JOURNAL_FILE_NAME: &str = "queues.journal";

/// redb's cache.
const REDB_CACHE: usize = 32 << 20;

/// The journal's size (its file is this big from the start): 16 MiB holds
/// about 14,000 PUTs of 1 KB between two checkpoints.
pub const JOURNAL_CAPACITY: u64 = 16 << 20;

/// A message as the store keeps it: its queue and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Vec<u8>,
    pub name: Vec<u8>,
    pub message: Stored,
}

/// One write: messages to keep and delivery ids to forget.
#[derive(Debug, Default)]
pub struct Batch {
    pub puts: Vec<Record>,
    /// Messages done with (acknowledged or expired). A removal never comes
    /// before the put of the same message.
    pub removals: Vec<u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.removals.is_empty()
    }

    /// Appends `other`, which came later.
    pub fn append(&mut self, other: Batch) {
        self.puts.extend(other.puts);
        self.removals.extend(other.removals);
    }
}

/// How the socket thread gets its batches written: by itself through
/// `O_DIRECT` AIO where the file system allows ([`DirectStore`]), else by a
/// [`StoreThread`] (tmpfs, …). Either way it never waits for the disk.
pub enum StoreWriter {
    Direct(Box<DirectStore>),
    Thread(StoreThread),
}

/// What the socket thread polls for a [`StoreWriter`]'s answers.
pub enum Wake<'a> {
    Socket(&'a zmq::Socket),
    Fd(std::os::fd::RawFd),
}

impl StoreWriter {
    /// Starts writing `store` as `who` says, and says how (for the log).
    pub fn start(ctx: &zmq::Context, store: DiskStore, who: QueueWriter) -> Result<(StoreWriter, String), BrokerError> {
        let (store, why_not) = match who {
            QueueWriter::Thread => (store, "--queue-writer thread".to_string()),
            QueueWriter::Auto | QueueWriter::Aio => match DirectStore::new(store) {
                Ok(direct) => {
                    let how = "written O_DIRECT through Linux AIO by the socket thread";
                    return Ok((StoreWriter::Direct(Box::new(direct)), how.into()));
                }
                Err(refused) if who == QueueWriter::Aio => {
                    return Err(BrokerError(format!("--queue-writer aio: cannot write {}", refused.1)));
                }
                Err(refused) => *refused,
            },
        };
        let thread = StoreThread::start(ctx, Box::new(store))?;
        Ok((StoreWriter::Thread(thread), format!("written and fdatasynced by a store thread ({why_not})")))
    }

    /// Hands over batch number `n` (numbers rise by one).
    pub fn submit(&mut self, n: u64, batch: Batch) {
        match self {
            StoreWriter::Direct(direct) => direct.submit(n, batch),
            StoreWriter::Thread(thread) => thread.submit(n, batch),
        }
    }

    pub fn wake(&self) -> Wake<'_> {
        match self {
            StoreWriter::Direct(direct) => Wake::Fd(direct.completion_fd()),
            StoreWriter::Thread(thread) => Wake::Socket(thread.results()),
        }
    }

    /// The next answer, if any: batches up to its number are written, or
    /// failed.
    pub fn try_result(&mut self) -> Result<Option<Committed>, BrokerError> {
        match self {
            StoreWriter::Direct(direct) => Ok(direct.try_result()),
            StoreWriter::Thread(thread) => {
                thread.try_result().map_err(|e| BrokerError(format!("queue store receive failed: {e}")))
            }
        }
    }

    /// Whether its thread (store or checkpoint) still runs.
    pub fn is_running(&self) -> bool {
        match self {
            StoreWriter::Direct(direct) => direct.is_running(),
            StoreWriter::Thread(thread) => thread.is_running(),
        }
    }

    /// Writes what was handed over and returns the last answers.
    pub fn finish(&mut self) -> Vec<Committed> {
        match self {
            StoreWriter::Direct(direct) => direct.finish(),
            StoreWriter::Thread(thread) => thread.finish(),
        }
    }
}

/// What the queues need from storage.
pub trait Store: Send {
    /// Writes `batch` in one transaction, puts before removals. Once it
    /// returns `Ok` the puts are durable (their OKs follow); removals may
    /// be weaker (see the module's write policy).
    fn commit(&mut self, batch: &Batch) -> Result<(), String>;
}

/// [`Store`] in `--queue-dir`: a journal in front of a redb file.
/// Commits go to the journal; redb takes what the journal holds at each
/// checkpoint, in one transaction.
pub struct DiskStore {
    redb: Redb,
    journal: Journal,
    /// The net effect of what the journal holds and redb does not yet.
    since_checkpoint: Pending,
}

/// The redb file: written only by checkpoints.
struct Redb {
    db: Database,
    path: PathBuf,
}

impl Redb {
    /// Writes what the journal holds (`journaled`), then `writes` (a batch
    /// that did not fit in the journal), and the journal's next
    /// `generation`, in one fsynced transaction.
    fn checkpoint(&mut self, journaled: &Pending, writes: &Writes, generation: u64) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("queue store {}: {e}", self.path.display());
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut table = txn.open_table(MESSAGES).map_err(|e| fail(&e))?;
            let journaled_puts = journaled.puts.iter().map(|(seq, encoded)| (*seq, encoded));
            for (seq, encoded) in journaled_puts.chain(writes.puts.iter().map(|(seq, encoded)| (*seq, encoded))) {
                table.insert(seq, &encoded[..]).map_err(|e| fail(&e))?;
            }
            for seq in journaled.removals.iter().chain(&writes.removals) {
                table.remove(seq).map_err(|e| fail(&e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| fail(&e))?;
            meta.insert(GENERATION, generation).map_err(|e| fail(&e))?;
        }
        txn.commit().map_err(|e| fail(&e))
    }
}

/// A [`Batch`] encoded for the journal and redb.
#[derive(Default)]
struct Writes {
    /// Delivery id -> the encoded message (see [`encode`]).
    puts: Vec<(u64, Vec<u8>)>,
    removals: Vec<u64>,
}

impl Writes {
    fn encode(batch: &Batch) -> Writes {
        let puts = batch
            .puts
            .iter()
            .map(|r| {
                let mut encoded = Vec::new();
                encode(r, &mut encoded);
                (r.message.seq, encoded)
            })
            .collect();
        Writes { puts, removals: batch.removals.clone() }
    }

    /// Only a PUT's OK waits for the disk; an acknowledgement or an expiry
    /// lost to a power cut brings a message back, which at least once
    /// allows (after a kill -9 it does not: the kernel has it).
    fn needs_sync(&self) -> bool {
        !self.puts.is_empty()
    }

    /// The journal record's payload: the puts (delivery id, encoded
    /// message), then the removals; counts and lengths as little-endian u32.
    fn payload(&self) -> Vec<u8> {
        let size = 8 + self.puts.iter().map(|(_, e)| 12 + e.len()).sum::<usize>() + 8 * self.removals.len();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.puts.len() as u32).to_le_bytes());
        for (seq, encoded) in &self.puts {
            out.extend_from_slice(&seq.to_le_bytes());
            push_bytes(&mut out, encoded);
        }
        out.extend_from_slice(&(self.removals.len() as u32).to_le_bytes());
        for seq in &self.removals {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }
}

/// Writes made since the last checkpoint, reduced to their effect: a
/// message put and removed in between never reaches redb.
#[derive(Default)]
struct Pending {
    /// Delivery id -> encoded message.
    puts: BTreeMap<u64, Vec<u8>>,
    /// Messages redb holds that are to go.
    removals: Vec<u64>,
}

impl Pending {
    fn put(&mut self, seq: u64, encoded: Vec<u8>) {
        self.puts.insert(seq, encoded);
    }

    fn remove(&mut self, seq: u64) {
        if self.puts.remove(&seq).is_none() {
            self.removals.push(seq);
        }
    }

    /// Takes in a batch that is in the journal now.
    fn record(&mut self, writes: Writes) {
        for (seq, encoded) in writes.puts {
            self.put(seq, encoded);
        }
        for seq in writes.removals {
            self.remove(seq);
        }
    }

    /// Applies a journal record's payload (see [`Writes::payload`]); `None`
    /// if it does not parse.
    fn apply(&mut self, payload: &[u8]) -> Option<()> {
        let mut r = Reader(payload);
        for _ in 0..r.u32()? {
            let seq = r.u64()?;
            let encoded = r.bytes()?;
            self.put(seq, encoded);
        }
        for _ in 0..r.u32()? {
            self.remove(r.u64()?);
        }
        r.0.is_empty().then_some(())
    }
}

impl DiskStore {
    /// Opens (or creates) `dir/queues.redb` and `dir/queues.journal`, and
    /// reads every message in them. Errors name the file and leave it as it
    /// was.
    pub fn open(dir: &Path, now: Instant) -> Result<(DiskStore, Vec<Record>), BrokerError> {
        Self::open_with(dir, now, JOURNAL_CAPACITY)
    }

    fn open_with(dir: &Path, now: Instant, journal_capacity: u64) -> Result<(DiskStore, Vec<Record>), BrokerError> {
        let path = dir.join(FILE_NAME);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError(format!("--queue-dir: cannot {what} {}: {e}", path.display()))
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BrokerError(format!("--queue-dir: cannot create {}: {e}", dir.display())))?;
        }
        // An existing file is opened, never created anew: a file redb does
        // not recognize is reported, not replaced.
        let mut builder = redb::Builder::new();
        // The broker holds every queued message in memory and reads redb
        // only at the start: redb's cache (1 GiB by default) buys nothing.
        builder.set_cache_size(REDB_CACHE);
        let db = if path.exists() {
            builder.open(&path).map_err(|e| fail("open the queue store", &e))?
        } else {
            builder.create(&path).map_err(|e| fail("create the queue store", &e))?
        };
        let mut stored = BTreeMap::new();
        let generation;
        {
            let txn = db.begin_read().map_err(|e| fail("read", &e))?;
            match txn.open_table(MESSAGES) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| fail("read", &e))? {
                        let (key, value) = entry.map_err(|e| fail("read", &e))?;
                        stored.insert(key.value(), value.value().to_vec());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(fail("read", &e)),
            }
            generation = match txn.open_table(META) {
                Ok(table) => table.get(GENERATION).map_err(|e| fail("read", &e))?.map_or(1, |g| g.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => 1,
                Err(e) => return Err(fail("read", &e)),
            };
        }
        let (journal, payloads) = Journal::open(&dir.join(JOURNAL_FILE_NAME), generation, journal_capacity)?;
        let mut store =
            DiskStore { redb: Redb { db, path: path.clone() }, journal, since_checkpoint: Pending::default() };
        for payload in &payloads {
            store.since_checkpoint.apply(payload).ok_or_else(|| {
                BrokerError(format!(
                    "--queue-dir: cannot read the queue journal {}: a record is corrupt",
                    store.journal.path().display()
                ))
            })?;
        }
        let Pending { puts, removals } = &store.since_checkpoint;
        for seq in removals {
            stored.remove(seq);
        }
        stored.extend(puts.iter().map(|(seq, encoded)| (*seq, encoded.clone())));
        let mut records = Vec::with_capacity(stored.len());
        for (seq, encoded) in &stored {
            records.push(decode(*seq, encoded, now).ok_or_else(|| fail("read", &format!("message {seq} is corrupt")))?);
        }
        // Every start begins a generation: redb takes what the journal
        // held, and the journal starts over.
        store.checkpoint(&Writes::default()).map_err(BrokerError)?;
        Ok((store, records))
    }

    /// Moves what the journal holds, and `writes`, into redb in one fsynced
    /// transaction with the next generation, and starts the journal over.
    fn checkpoint(&mut self, writes: &Writes) -> Result<(), String> {
        let generation = next_generation(self.journal.generation());
        self.redb.checkpoint(&self.since_checkpoint, writes, generation)?;
        self.since_checkpoint = Pending::default();
        self.journal.restart(generation);
        Ok(())
    }
}

/// The journal generation after `current`: random, not `current + 1`.
/// Bytes a client chose (a message body) lie in the journal behind the
/// records of the next generations; with a generation nobody can guess,
/// they are never read as one of its records, even where such a record
/// would start.
fn next_generation(current: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        // Keyed SipHash: std seeds each RandomState from the OS's randomness.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(current);
        let next = hasher.finish();
        if next != current && next != 0 {
            return next;
        }
    }
}

impl Store for DiskStore {
    /// One journal record; a batch that does not fit in what is left of the
    /// journal goes into redb with the checkpoint that empties it.
    fn commit(&mut self, batch: &Batch) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let writes = Writes::encode(batch);
        let payload = writes.payload();
        if !self.journal.fits(payload.len()) {
            return self.checkpoint(&writes);
        }
        self.journal.append(&payload, writes.needs_sync())?;
        self.since_checkpoint.record(writes);
        Ok(())
    }
}

/// Wall-clock milliseconds: what an expiry is stored as, so it still means
/// the same after a restart.
fn wall_ms(at: Instant, now: Instant) -> u64 {
    let wall = SystemTime::now() + at.saturating_duration_since(now);
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Version byte, topic, name, expiry (wall ms, 0: none), header count,
/// headers, body; lengths as little-endian u32. Appended to `out`.
fn encode(r: &Record, out: &mut Vec<u8>) {
    let m = &r.message;
    out.reserve(32 + r.topic.len() + m.body.len());
    out.push(1);
    push_bytes(out, &r.topic);
    push_bytes(out, &r.name);
    let now = Instant::now();
    out.extend_from_slice(&m.expires.map_or(0, |at| wall_ms(at, now).max(1)).to_le_bytes());
    out.extend_from_slice(&(m.headers.len() as u32).to_le_bytes());
    for (k, v) in &m.headers {
        push_bytes(out, k);
        push_bytes(out, v);
    }
    push_bytes(out, &m.body);
}

/// Reads [`encode`]'s fields in order; `None` once anything is missing.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let head = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self.u32()? as usize;
        Some(self.take(len)?.to_vec())
    }
}

fn decode(seq: u64, bytes: &[u8], now: Instant) -> Option<Record> {
    let mut r = Reader(bytes);
    if r.take(1)? != [1] {
        return None;
    }
    let topic = r.bytes()?;
    let name = r.bytes()?;
    let expires_ms = r.u64()?;
    let count = r.u32()? as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        headers.push((r.bytes()?, r.bytes()?));
    }
    let body = r.bytes()?;
    if !r.0.is_empty() {
        return None;
    }
    let expires = (expires_ms > 0).then(|| {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        now + Duration::from_millis(expires_ms.saturating_sub(now_ms))
    });
    Some(Record { topic, name, message: Stored { seq, headers, body, expires, redelivered: false } })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A new directory for a store test, on the disk the workspace is on:
    /// never tmpfs, which may have no `O_DIRECT` for the direct writes and
    /// nothing to flush for `commit_cost`.
    pub(crate) fn disk_dir(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/mc0d-unit-tests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn records_survive_encoding_and_a_reopen() {
        let dir = disk_dir("store");
        let now = Instant::now();
        let record = Record {
            topic: b"t".to_vec(),
            name: b"q".to_vec(),
            message: Stored {
                seq: 7,
                headers: vec![(b"X-A".to_vec(), b"\x00".to_vec())],
                body: b"body".to_vec(),
                expires: None,
                redelivered: false,
            },
        };
        {
            let (mut store, loaded) = DiskStore::open(&dir, now).unwrap();
            assert!(loaded.is_empty());
            let mut other = record.clone();
            other.message.seq = 8;
            store.commit(&Batch { puts: vec![record.clone(), other], removals: vec![8] }).unwrap();
        }
        let (_, loaded) = DiskStore::open(&dir, now).unwrap();
        assert_eq!(loaded, vec![record.clone()]);
        let mut encoded = Vec::new();
        encode(&record, &mut encoded);
        assert!(decode(7, &encoded[..5], now).is_none(), "a truncated record is refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    pub(crate) fn record(seq: u64, body: &[u8]) -> Record {
        Record {
            topic: b"t".to_vec(),
            name: b"q".to_vec(),
            message: Stored { seq, headers: Vec::new(), body: body.to_vec(), expires: None, redelivered: false },
        }
    }

    pub(crate) fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.message.seq).collect()
    }

    /// Dropping a store without a checkpoint is what a kill -9 leaves: the
    /// journal holds what redb does not.
    #[test]
    fn the_journal_brings_back_what_redb_has_not_taken_yet() {
        let dir = disk_dir("store-journal");
        let now = Instant::now();
        let (mut store, _) = DiskStore::open(&dir, now).unwrap();
        store
            .commit(&Batch { puts: vec![record(1, b"a"), record(2, b"b"), record(3, b"c")], removals: vec![] })
            .unwrap();
        store.commit(&Batch { puts: vec![], removals: vec![2] }).unwrap();
        drop(store);
        let (mut store, loaded) = DiskStore::open(&dir, now).unwrap();
        assert_eq!(loaded, vec![record(1, b"a"), record(3, b"c")]);
        // That open was a checkpoint: removals now reach redb itself.
        store.commit(&Batch { puts: vec![record(4, b"d")], removals: vec![1] }).unwrap();
        drop(store);
        let (_, loaded) = DiskStore::open(&dir, now).unwrap();
        assert_eq!(seqs(&loaded), vec![3, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A journal too small for the traffic: checkpoints as it fills, and a
    /// batch bigger than all of it goes straight into redb.
    #[test]
    fn a_full_journal_checkpoints_and_an_oversized_batch_goes_straight_to_redb() {
        let dir = disk_dir("store-small");
        let now = Instant::now();
        let capacity = 512;
        let (mut store, _) = DiskStore::open_with(&dir, now, capacity).unwrap();
        let mut generations = std::collections::HashSet::new();
        for seq in 1..=20 {
            store.commit(&Batch { puts: vec![record(seq, &[b'x'; 60])], removals: vec![] }).unwrap();
            if seq % 2 == 0 {
                store.commit(&Batch { puts: vec![], removals: vec![seq - 1] }).unwrap();
            }
            generations.insert(store.journal.generation());
        }
        assert!(generations.len() > 3, "checkpointed on the way");
        store.commit(&Batch { puts: vec![record(21, &[b'y'; 1000])], removals: vec![2, 4] }).unwrap();
        drop(store);
        let (_, loaded) = DiskStore::open_with(&dir, now, capacity).unwrap();
        assert_eq!(seqs(&loaded), vec![6, 8, 10, 12, 14, 16, 18, 20, 21]);
        assert_eq!(loaded.last().unwrap().message.body, vec![b'y'; 1000]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Not `current + 1`, nor anything else a client could work out.
    #[test]
    fn the_next_generation_cannot_be_guessed_from_the_current_one() {
        let next: std::collections::HashSet<u64> = (0..100).map(|_| next_generation(7)).collect();
        assert_eq!(next.len(), 100, "a new one every time");
        assert!(!next.contains(&7) && !next.contains(&8) && !next.contains(&0));
    }

    #[test]
    fn a_journal_that_is_not_ours_stops_the_open_naming_it() {
        let dir = disk_dir("store-foreign");
        let journal = dir.join(JOURNAL_FILE_NAME);
        std::fs::write(&journal, b"not a journal").unwrap();
        let err = DiskStore::open(&dir, Instant::now()).err().unwrap();
        assert!(err.0.contains(journal.to_str().unwrap()), "{}", err.0);
        assert_eq!(std::fs::read(&journal).unwrap(), b"not a journal");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What one commit of a 1 KB PUT costs here: through the journal, as a
    /// redb transaction of its own (the store before the journal), and the
    /// floor of one append and fdatasync of the same bytes
    /// (docs/BENCHMARKS.md):
    ///
    ///     cargo test --release -p mc0d --lib commit_cost -- --ignored --nocapture
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn commit_cost() {
        use std::io::Write;
        let dir = disk_dir("commit-cost");
        let now = Instant::now();
        let n = 1000u64;
        let (mut store, _) = DiskStore::open(&dir, now).unwrap();
        let body = [b'x'; 1024];
        let per_put = |start: Instant| start.elapsed().as_secs_f64() * 1e3 / n as f64;
        let start = Instant::now();
        for seq in 1..=n {
            store.commit(&Batch { puts: vec![record(seq, &body)], removals: Vec::new() }).unwrap();
        }
        let journal = per_put(start);
        let start = Instant::now();
        for seq in n + 1..=2 * n {
            let txn = store.redb.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(MESSAGES).unwrap();
                let mut encoded = Vec::new();
                encode(&record(seq, &body), &mut encoded);
                table.insert(seq, &encoded[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let redb = per_put(start);
        let mut file = std::fs::File::create(dir.join("appended")).unwrap();
        let start = Instant::now();
        for _ in 0..n {
            file.write_all(&[b'x'; 1100]).unwrap();
            file.sync_data().unwrap();
        }
        let append = per_put(start);
        println!(
            "MEASURE one 1 KB PUT per commit: journal {journal:.3} ms, redb transaction {redb:.3} ms, \
             append + fdatasync {append:.3} ms"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
