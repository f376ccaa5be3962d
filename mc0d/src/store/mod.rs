//! Where queued messages are kept across restarts (`--queue-dir`), behind a
//! small interface ([`Store`]) so another backend (NATS JetStream for a
//! cluster) can follow. The store runs on a thread of its own
//! ([`StoreThread`]), so the broker's socket thread never waits for the
//! disk.
//!
//! The disk store is [redb](https://docs.rs/redb): an embedded, pure-Rust,
//! actively maintained B-tree store with ACID transactions and crash
//! safety (copy-on-write pages, checksummed commits; a database left open
//! by a kill -9 is repaired on the next open). `sled` is unmaintained.
//! One commit of a 1 KB PUT costs redb 0.4 ms on a quiet machine here,
//! against 0.3 ms for one append and fdatasync of the same bytes
//! (`commit_cost` below, docs/BENCHMARKS.md): a journal in front of redb,
//! or `fjall` (an LSM tree with such a journal), would save at most that
//! 0.1 ms, and only where one PUT is awaited at a time, so the simpler
//! store stays.
//!
//! Write policy (group commit): every write that reached the store thread
//! while it was committing the previous one goes into the next transaction,
//! PUTs and removals together. A transaction holding a PUT is **fsynced**
//! (`Durability::Immediate`) before the broker sends the OKs of its PUTs,
//! so an acknowledged message survives a kill -9 and a power loss. One with
//! only acknowledgements and expiries is written without fsync
//! (`Durability::Eventual`; the next fsync takes it along): after a power
//! loss an acknowledged message may come back, which at-least-once allows;
//! after a kill -9 it does not (the ACK's OK waits for the write). The cost
//! is measured in docs/BENCHMARKS.md.

mod thread;

pub use thread::StoreThread;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::engine::queues::Stored;
use crate::error::BrokerError;

/// Delivery id -> the encoded message (see [`encode`]).
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

/// The file in `--queue-dir`.
pub const FILE_NAME: &str = "queues.redb";

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

/// What the queues need from storage.
pub trait Store: Send {
    /// Writes `batch` in one transaction, puts before removals. Once it
    /// returns `Ok` the puts are durable (their OKs follow); removals may
    /// be weaker (see the module's write policy).
    fn commit(&mut self, batch: &Batch) -> Result<(), String>;
}

/// [`Store`] in a redb file.
pub struct DiskStore {
    db: Database,
    path: PathBuf,
}

impl DiskStore {
    /// Opens (or creates) `dir/queues.redb` and reads every message in it.
    /// Errors name the file and leave it as it was.
    pub fn open(dir: &Path, now: Instant) -> Result<(DiskStore, Vec<Record>), BrokerError> {
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
        let db = if path.exists() {
            Database::open(&path).map_err(|e| fail("open the queue store", &e))?
        } else {
            Database::create(&path).map_err(|e| fail("create the queue store", &e))?
        };
        let mut records = Vec::new();
        {
            let txn = db.begin_write().map_err(|e| fail("write", &e))?;
            {
                let table = txn.open_table(MESSAGES).map_err(|e| fail("read", &e))?;
                for entry in table.iter().map_err(|e| fail("read", &e))? {
                    let (key, value) = entry.map_err(|e| fail("read", &e))?;
                    let record = decode(key.value(), value.value(), now)
                        .ok_or_else(|| fail("read", &format!("message {} is corrupt", key.value())))?;
                    records.push(record);
                }
            }
            txn.commit().map_err(|e| fail("write", &e))?;
        }
        Ok((DiskStore { db, path }, records))
    }
}

impl Store for DiskStore {
    fn commit(&mut self, batch: &Batch) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let fail = |e: &dyn std::fmt::Display| format!("queue store {}: {e}", self.path.display());
        let mut txn = self.db.begin_write().map_err(|e| fail(&e))?;
        txn.set_durability(if batch.puts.is_empty() { Durability::Eventual } else { Durability::Immediate });
        {
            let mut table = txn.open_table(MESSAGES).map_err(|e| fail(&e))?;
            let mut buf = Vec::new();
            for r in &batch.puts {
                buf.clear();
                encode(r, &mut buf);
                table.insert(r.message.seq, &buf[..]).map_err(|e| fail(&e))?;
            }
            for seq in &batch.removals {
                table.remove(seq).map_err(|e| fail(&e))?;
            }
        }
        txn.commit().map_err(|e| fail(&e))
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
mod tests {
    use super::*;

    #[test]
    fn records_survive_encoding_and_a_reopen() {
        let dir = std::env::temp_dir().join(format!("mc0d-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
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

    /// What one commit of a 1 KB PUT costs here, next to the floor of one
    /// append and fdatasync of the same bytes (docs/BENCHMARKS.md):
    ///
    ///     cargo test --release -p mc0d --lib commit_cost -- --ignored --nocapture
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn commit_cost() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("mc0d-commit-cost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = Instant::now();
        let n = 1000u64;
        let (mut store, _) = DiskStore::open(&dir, now).unwrap();
        let message =
            |seq| Stored { seq, headers: Vec::new(), body: vec![b'x'; 1024], expires: None, redelivered: false };
        let record = |seq| Record { topic: b"t".to_vec(), name: b"q".to_vec(), message: message(seq) };
        let start = Instant::now();
        for seq in 1..=n {
            store.commit(&Batch { puts: vec![record(seq)], removals: Vec::new() }).unwrap();
        }
        let redb = start.elapsed().as_secs_f64() * 1e3 / n as f64;
        let mut journal = std::fs::File::create(dir.join("journal")).unwrap();
        let start = Instant::now();
        for _ in 0..n {
            journal.write_all(&[b'x'; 1100]).unwrap();
            journal.sync_data().unwrap();
        }
        let append = start.elapsed().as_secs_f64() * 1e3 / n as f64;
        println!("MEASURE one 1 KB PUT per commit: redb {redb:.3} ms, append + fdatasync {append:.3} ms");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
