//! Where queued messages are kept across restarts (`--queue-dir`), behind a
//! small interface ([`Store`]) so another backend (NATS JetStream for a
//! cluster) can follow.
//!
//! The disk store is [redb](https://docs.rs/redb): an embedded, pure-Rust,
//! actively maintained B-tree store with ACID transactions and crash
//! safety (copy-on-write pages, checksummed commits; a database left open
//! by a kill -9 is repaired on the next open). `sled` is unmaintained;
//! `fjall` is an LSM tree tuned for write-heavy workloads we do not need.
//!
//! Write policy: a PUT to a queue is written and **fsynced**
//! (`Durability::Immediate`) before its OK is sent, so an acknowledged
//! message survives a kill -9 and a power loss. Acknowledgements and
//! expiries are written without fsync (`Durability::Eventual`): after a
//! power loss an acknowledged message may come back, which at-least-once
//! allows. The cost, one fsync per PUT on the broker's thread, is measured
//! in docs/BENCHMARKS.md.

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

/// What the queues need from storage.
pub trait Store {
    /// Keeps `records` durably before returning (the PUT's OK follows).
    fn put(&mut self, records: &[Record]) -> Result<(), String>;
    /// Forgets the messages with these delivery ids (acknowledged or
    /// expired); durability may be weaker than [`put`](Store::put)'s.
    fn remove(&mut self, seqs: &[u64]) -> Result<(), String>;
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

    fn write(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&mut redb::Table<u64, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("queue store {}: {e}", self.path.display());
        let mut txn = self.db.begin_write().map_err(|e| fail(&e))?;
        txn.set_durability(durability);
        {
            let mut table = txn.open_table(MESSAGES).map_err(|e| fail(&e))?;
            f(&mut table).map_err(|e| fail(&e))?;
        }
        txn.commit().map_err(|e| fail(&e))
    }
}

impl Store for DiskStore {
    fn put(&mut self, records: &[Record]) -> Result<(), String> {
        self.write(Durability::Immediate, |table| {
            for r in records {
                table.insert(r.message.seq, &encode(r)[..])?;
            }
            Ok(())
        })
    }

    fn remove(&mut self, seqs: &[u64]) -> Result<(), String> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.write(Durability::Eventual, |table| {
            for seq in seqs {
                table.remove(seq)?;
            }
            Ok(())
        })
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
/// headers, body; lengths as little-endian u32.
fn encode(r: &Record) -> Vec<u8> {
    let m = &r.message;
    let mut out = Vec::with_capacity(32 + r.topic.len() + m.body.len());
    out.push(1);
    push_bytes(&mut out, &r.topic);
    push_bytes(&mut out, &r.name);
    let now = Instant::now();
    out.extend_from_slice(&m.expires.map_or(0, |at| wall_ms(at, now).max(1)).to_le_bytes());
    out.extend_from_slice(&(m.headers.len() as u32).to_le_bytes());
    for (k, v) in &m.headers {
        push_bytes(&mut out, k);
        push_bytes(&mut out, v);
    }
    push_bytes(&mut out, &m.body);
    out
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
            store.put(std::slice::from_ref(&record)).unwrap();
            let mut other = record.clone();
            other.message.seq = 8;
            store.put(&[other]).unwrap();
            store.remove(&[8]).unwrap();
        }
        let (_, loaded) = DiskStore::open(&dir, now).unwrap();
        assert_eq!(loaded, vec![record.clone()]);
        assert!(decode(7, &encode(&record)[..5], now).is_none(), "a truncated record is refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
