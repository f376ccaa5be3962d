//! The queue store's journal (`--queue-dir/queues.journal`): the store's
//! writes land here first, one record per commit, so a PUT costs one small
//! write and one `fdatasync` instead of a B-tree commit. redb takes the
//! journal's contents in one transaction at each checkpoint (when the
//! journal is full, and at every start).
//!
//! Why a file written in place: the file is filled with zeros once, when
//! it is created, and then only ever overwritten. `fdatasync` of blocks
//! that already exist has no file size or block allocation to log, so it
//! costs about a third less than an appending one on the disks measured
//! (docs/BENCHMARKS.md), and an `O_DIRECT` write of them is one write and
//! one cache flush.
//!
//! Two ways to write a record, with the same bytes on disk up to the end:
//! [`append`](Journal::append) (`pwrite`, then `fdatasync` if asked: the
//! store thread's), and [`block_write`](Journal::block_write), whole
//! 4 KiB blocks for `O_DIRECT` (the socket thread's, through AIO): the
//! bytes already in the block that holds the end (kept in memory as the
//! tail), the record, and zeros to the end of its last block. The
//! rewritten bytes in front are the same as on disk, so a torn write
//! cannot change them.
//!
//! Layout: the 8-byte [`MAGIC`], then records back to back from the front:
//! payload length (u32, its top bit set for a record written with a sync),
//! CRC-32 (u32) of generation, that length field and payload, generation
//! (u64), payload; little-endian. A checkpoint starts the
//! journal over at the front with the next generation, which redb stores
//! in the same transaction, so the records of older generations left
//! behind the new ones are never read again: reading stops at the first
//! record that is not of the current generation or fails its CRC (the
//! zeros, or the torn tail of a write cut off by a crash, whose commit
//! was never answered).
//!
//! A record written with a sync is followed by the next one only once the
//! sync returned. So such a record that fails its CRC while the record
//! right after it is intact was damaged after it was on disk, and its
//! commit was answered: the journal is refused, naming the file and the
//! record's offset, rather than read up to there and overwritten. (A
//! record written without a sync may be torn by a power loss while later
//! ones reached the disk: the kernel writes pages back in any order.)
//! Journals of before that flag ([`MAGIC_UNFLAGGED`]) are read as ever.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::aio::{BlockBuf, BLOCK};
use crate::error::BrokerError;

/// The first bytes of a journal file.
pub const MAGIC: &[u8; 8] = b"mc0djnl2";

/// The first bytes of a journal whose records have no sync flag (written
/// by an mc0d of before December 2026); read as they are, then marked
/// [`MAGIC`].
const MAGIC_UNFLAGGED: &[u8; 8] = b"mc0djnl1";

/// The length field's bit that says the record was written with a sync.
const SYNCED: u32 = 1 << 31;

/// Length, CRC and generation in front of each payload.
const RECORD_HEADER: usize = 16;

/// The journal file, positioned after its last record.
pub struct Journal {
    file: File,
    path: PathBuf,
    capacity: u64,
    end: u64,
    generation: u64,
    /// The bytes from the start of the block that holds `end` up to `end`:
    /// an `O_DIRECT` write of the next record writes whole blocks, so it
    /// rewrites them in front of the record.
    tail: Vec<u8>,
}

/// A record laid out for an `O_DIRECT` write: whole blocks from the one
/// that holds the journal's end, the record, zeros to the next block.
pub struct BlockWrite {
    pub buf: BlockBuf,
    pub offset: u64,
    pub then: NewEnd,
}

/// The journal's end and tail once a [`BlockWrite`] is written.
pub struct NewEnd {
    end: u64,
    tail: Vec<u8>,
}

impl Journal {
    /// Opens the journal at `path`, or creates it filled with zeros to
    /// `capacity` bytes, and returns it with the payloads of the records of
    /// `generation` in order. Errors name the file and leave it as it was.
    pub fn open(path: &Path, generation: u64, capacity: u64) -> Result<(Journal, Vec<Vec<u8>>), BrokerError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError(format!("--queue-dir: cannot {what} the queue journal {}: {e}", path.display()))
        };
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(created)
            .open(path)
            .map_err(|e| fail(if created { "create" } else { "open" }, &e))?;
        let mut contents = Vec::new();
        if created {
            contents.extend_from_slice(MAGIC);
        } else {
            file.read_to_end(&mut contents).map_err(|e| fail("read", &e))?;
            if !contents.starts_with(MAGIC) && !contents.starts_with(MAGIC_UNFLAGGED) {
                return Err(fail("use", &"it is not an mc0d queue journal (no mc0djnl2 or mc0djnl1 at its start)"));
            }
        }
        // Read before anything is written, so a refused journal is left
        // as it was.
        let flagged = contents.starts_with(MAGIC);
        let (payloads, end) = records(&contents, generation, flagged).map_err(|e| fail("read", &e))?;
        let payloads = payloads.into_iter().map(<[u8]>::to_vec).collect();
        if !flagged {
            // An mc0djnl1 journal (a new one starts with MAGIC): its records
            // read the same with the flag unset.
            file.write_all_at(MAGIC, 0).and_then(|()| file.sync_data()).map_err(|e| fail("write", &e))?;
        }
        let capacity = capacity.max(contents.len() as u64);
        if (contents.len() as u64) < capacity {
            // Real zeros, not a hole or fallocate's unwritten extents: the
            // blocks must exist for the in-place writes to stay cheap.
            let mut fill = vec![0; capacity as usize - contents.len()];
            let at = if created {
                fill.splice(0..0, MAGIC.iter().copied());
                0
            } else {
                contents.len() as u64
            };
            file.write_all_at(&fill, at).map_err(|e| fail("write", &e))?;
            file.sync_all().map_err(|e| fail("write", &e))?;
            if created {
                // The file's name must survive a power loss too.
                if let Some(dir) = path.parent() {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("write", &e))?;
                }
            }
        }
        let tail = contents[block_start(end) as usize..end as usize].to_vec();
        Ok((Journal { file, path: path.to_path_buf(), capacity, end, generation, tail }, payloads))
    }

    /// Whether a record of `payload_len` bytes still fits.
    pub fn fits(&self, payload_len: usize) -> bool {
        self.end + (RECORD_HEADER + payload_len) as u64 <= self.capacity
    }

    /// Writes one record after the last; with `sync`, returns once it is on
    /// disk (`fdatasync`), else once the kernel has it (it survives a kill
    /// of the broker, not a power loss). The caller checked [`fits`](Self::fits).
    pub fn append(&mut self, payload: &[u8], sync: bool) -> Result<(), String> {
        let record = self.record(payload, sync);
        self.file.write_all_at(&record, self.end).map_err(|e| self.error(&e))?;
        if sync {
            self.file.sync_data().map_err(|e| self.error(&e))?;
        }
        // Only a written record moves the end: after a failed write the
        // next one takes its place.
        self.wrote(self.after(&record));
        Ok(())
    }

    /// Opens the file again for `O_DIRECT` writes of [`block_write`](Self::block_write)s;
    /// fails where the file system has no `O_DIRECT` (tmpfs) or the
    /// journal is not made of whole blocks.
    pub fn open_direct(&self) -> std::io::Result<File> {
        if self.capacity % BLOCK as u64 != 0 {
            return Err(std::io::Error::other(format!("its size is not a multiple of {BLOCK} bytes")));
        }
        OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&self.path)
    }

    /// The next record laid out for an `O_DIRECT` write (the caller checked
    /// [`fits`](Self::fits)); [`wrote`](Self::wrote) moves the end once it is
    /// written.
    pub fn block_write(&self, payload: &[u8], sync: bool) -> BlockWrite {
        self.blocks_with(&self.record(payload, sync))
    }

    /// The block that holds the end, as it is (up to the end) and will be
    /// (zeros after it): what a first `O_DIRECT` write can rewrite to prove
    /// that such writes work here.
    pub fn block_write_of_tail(&self) -> BlockWrite {
        self.blocks_with(&[])
    }

    /// Whole blocks from the one that holds the end: the tail, `record`,
    /// zeros.
    fn blocks_with(&self, record: &[u8]) -> BlockWrite {
        let offset = block_start(self.end);
        let then = self.after(record);
        let blocks = (then.end - offset).div_ceil(BLOCK as u64).max(1);
        let mut buf = BlockBuf::zeroed(blocks as usize * BLOCK);
        let bytes = buf.as_mut_slice();
        bytes[..self.tail.len()].copy_from_slice(&self.tail);
        bytes[self.tail.len()..self.tail.len() + record.len()].copy_from_slice(record);
        BlockWrite { buf, offset, then }
    }

    /// The end and tail once `record` is written after the end.
    fn after(&self, record: &[u8]) -> NewEnd {
        let end = self.end + record.len() as u64;
        // The tail and the record run from the start of the end's block;
        // the new tail starts at the start of the new end's block.
        let skip = (block_start(end) - block_start(self.end)) as usize;
        NewEnd { end, tail: self.tail.iter().chain(record).skip(skip).copied().collect() }
    }

    /// A [`block_write`](Self::block_write) (or an [`append`](Self::append))
    /// was written whole.
    pub fn wrote(&mut self, then: NewEnd) {
        (self.end, self.tail) = (then.end, then.tail);
    }

    /// Starts over at the front with `generation`, once a checkpoint holds
    /// everything written so far.
    pub fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.end = MAGIC.len() as u64;
        self.tail = MAGIC.to_vec();
    }

    /// An I/O error, naming the journal.
    pub fn error(&self, e: &dyn std::fmt::Display) -> String {
        format!("queue journal {}: {e}", self.path.display())
    }

    /// Record header and payload.
    fn record(&self, payload: &[u8], sync: bool) -> Vec<u8> {
        let length = payload.len() as u32 | if sync { SYNCED } else { 0 };
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(&checksum(self.generation, length, payload).to_le_bytes());
        record.extend_from_slice(&self.generation.to_le_bytes());
        record.extend_from_slice(payload);
        record
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Where the block that holds byte `at` starts.
fn block_start(at: u64) -> u64 {
    at - at % BLOCK as u64
}

fn checksum(generation: u64, length: u32, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&generation.to_le_bytes());
    crc.update(&length.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// The payloads of `generation`'s records from the front of `contents`,
/// and where the next record goes; an error for a damaged synced record
/// that an intact one follows (see the module's documentation), if the
/// records are `flagged`.
fn records(contents: &[u8], generation: u64, flagged: bool) -> Result<(Vec<&[u8]>, u64), String> {
    let mut payloads = Vec::new();
    let mut at = MAGIC.len();
    loop {
        match record_at(contents, at, generation) {
            Slot::Intact(payload) => {
                payloads.push(payload);
                at += RECORD_HEADER + payload.len();
            }
            Slot::Damaged { synced, next } => {
                if flagged && synced && matches!(record_at(contents, next, generation), Slot::Intact(_)) {
                    return Err(format!(
                        "the record at byte {at} is damaged while the one after it is intact, so it was written \
                         and answered before the damage; nothing was changed: restore the file, or move it \
                         away to start without the messages it held"
                    ));
                }
                break;
            }
            Slot::End => break,
        }
    }
    Ok((payloads, at as u64))
}

/// What lies at one offset of the journal.
enum Slot<'a> {
    /// A record of the generation read, with this payload.
    Intact(&'a [u8]),
    /// A record of the generation read whose CRC fails, marked as written
    /// with a sync or not; the next record would start at `next`.
    Damaged { synced: bool, next: usize },
    /// Zeros, an older generation, or no room for a record.
    End,
}

fn record_at(contents: &[u8], at: usize, generation: u64) -> Slot<'_> {
    let Some(header) = contents.get(at..at + RECORD_HEADER) else { return Slot::End };
    let length = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let len = (length & !SYNCED) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let record_generation = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let Some(payload) = contents.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else { return Slot::End };
    if len == 0 || record_generation != generation {
        Slot::End
    } else if crc != checksum(generation, length, payload) {
        Slot::Damaged { synced: length & SYNCED != 0, next: at + RECORD_HEADER + len }
    } else {
        Slot::Intact(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::disk_dir;
    use proptest::prelude::{any, prop_oneof, Strategy};

    #[test]
    fn records_of_the_current_generation_come_back_in_order() {
        let dir = disk_dir("journal-order");
        let path = dir.join("j");
        let (mut j, read) = Journal::open(&path, 1, 4096).unwrap();
        assert!(read.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096, "filled to capacity");
        j.append(b"one", true).unwrap();
        j.append(b"two", false).unwrap();
        drop(j);
        let (mut j, read) = Journal::open(&path, 1, 4096).unwrap();
        assert_eq!(read, vec![b"one".to_vec(), b"two".to_vec()]);
        // After a checkpoint the next generation starts at the front: the
        // older records behind it are never read again.
        j.restart(2);
        j.append(b"three", true).unwrap();
        drop(j);
        let (_, read) = Journal::open(&path, 2, 4096).unwrap();
        assert_eq!(read, vec![b"three".to_vec()]);
        let (_, read) = Journal::open(&path, 3, 4096).unwrap();
        assert!(read.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where the second record starts when the first holds `b"kept"`.
    const SECOND: usize = MAGIC.len() + RECORD_HEADER + 4;

    /// A journal of generation 1 at `path` holding `records` (payload,
    /// written with a sync), with the byte `damage` bytes into the second
    /// record's payload flipped; returns the file's bytes.
    fn damaged_journal(path: &Path, records: &[(&[u8], bool)], damage: usize) -> Vec<u8> {
        let (mut j, _) = Journal::open(path, 1, 4096).unwrap();
        assert_eq!(records[0].0, b"kept");
        for (payload, sync) in records {
            j.append(payload, *sync).unwrap();
        }
        drop(j);
        let mut bytes = std::fs::read(path).unwrap();
        bytes[SECOND + RECORD_HEADER + damage] ^= 0xff;
        std::fs::write(path, &bytes).unwrap();
        bytes
    }

    #[test]
    fn reading_stops_at_a_torn_last_record() {
        let dir = disk_dir("journal-torn");
        let path = dir.join("j");
        damaged_journal(&path, &[(b"kept", true), (b"torn by a crash", true)], 3);
        let (mut j, read) = Journal::open(&path, 1, 4096).unwrap();
        assert_eq!(read, vec![b"kept".to_vec()]);
        assert!(j.fits(4096 - SECOND - RECORD_HEADER));
        assert!(!j.fits(4096 - SECOND - RECORD_HEADER + 1));
        j.append(b"replaces it", true).unwrap();
        drop(j);
        let (_, read) = Journal::open(&path, 1, 4096).unwrap();
        assert_eq!(read, vec![b"kept".to_vec(), b"replaces it".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_synced_record_before_an_intact_one_is_refused_and_left_alone() {
        let dir = disk_dir("journal-damaged");
        let path = dir.join("j");
        let bytes = damaged_journal(&path, &[(b"kept", true), (b"damaged later", true), (b"after it", true)], 3);
        let err = Journal::open(&path, 1, 4096).err().unwrap();
        assert!(err.0.contains(path.to_str().unwrap()), "names the file: {}", err.0);
        assert!(err.0.contains(&format!("record at byte {SECOND} is damaged")), "{}", err.0);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing written");
        // The next generation's reader never looks at it.
        assert!(Journal::open(&path, 2, 4096).unwrap().1.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A power loss may tear a record written without a sync while later
    /// ones reached the disk: that is no damage after the fact.
    #[test]
    fn a_torn_unsynced_record_before_an_intact_one_ends_the_reading() {
        let dir = disk_dir("journal-unsynced");
        let path = dir.join("j");
        damaged_journal(&path, &[(b"kept", true), (b"acknowledgements only", false), (b"written back first", true)], 3);
        let (_, read) = Journal::open(&path, 1, 4096).unwrap();
        assert_eq!(read, vec![b"kept".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A journal of before the sync flag: its records read as ever (none
    /// refused), and it is marked as flagged for the records that follow.
    #[test]
    fn a_journal_without_the_sync_flag_is_read_as_ever_and_marked() {
        let dir = disk_dir("journal-unflagged");
        let path = dir.join("j");
        // Without a sync a record is laid out as mc0djnl1 wrote every one.
        let mut bytes = damaged_journal(&path, &[(b"kept", false), (b"damaged", false), (b"after it", false)], 3);
        bytes[..MAGIC.len()].copy_from_slice(MAGIC_UNFLAGGED);
        std::fs::write(&path, &bytes).unwrap();
        let (_, read) = Journal::open(&path, 1, 4096).unwrap();
        assert_eq!(read, vec![b"kept".to_vec()]);
        assert!(std::fs::read(&path).unwrap().starts_with(MAGIC), "marked");
        // Undamaged, all three come back.
        bytes[SECOND + RECORD_HEADER + 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Journal::open(&path, 1, 4096).unwrap().1.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// How a journal's file is found at the next start.
    #[derive(Debug, Clone)]
    enum Crash {
        /// Power lost: each 512-byte sector written since the last completed
        /// sync holds its new bytes (`true`) or its old ones, in any mix (the
        /// kernel writes pages back in any order, and the disk may tear
        /// them); with `in_sync`, the last record's own sync had not
        /// returned yet.
        PowerLoss { sectors: Vec<bool>, in_sync: bool },
        /// One byte of record `record`'s payload rots after it was written.
        Rot { record: usize, byte: usize },
    }

    fn crash() -> impl Strategy<Value = Crash> {
        prop_oneof![
            (proptest::collection::vec(any::<bool>(), 8), any::<bool>())
                .prop_map(|(sectors, in_sync)| Crash::PowerLoss { sectors, in_sync }),
            (any::<usize>(), any::<usize>()).prop_map(|(record, byte)| Crash::Rot { record, byte }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Against a model of the disk: after a power loss the journal is
        /// always read (never refused), as a prefix of what was written that
        /// holds every record up to the last completed sync; a rotten record
        /// is refused exactly when it was synced and an intact one follows,
        /// and otherwise ends the reading there. Older generations' records
        /// lie behind, as after a checkpoint.
        #[test]
        fn reading_after_a_crash_matches_the_model(
            older in proptest::collection::vec(1usize..300, 0..8),
            written in proptest::collection::vec((1usize..300, any::<bool>()), 1..16),
            crash in crash(),
        ) {
            const CAPACITY: u64 = 4096;
            let dir = disk_dir("journal-model");
            let path = dir.join("j");
            let (mut j, _) = Journal::open(&path, 1, CAPACITY).unwrap();
            for (i, len) in older.iter().enumerate() {
                if j.fits(*len) {
                    j.append(&vec![b'o' + i as u8; *len], true).unwrap();
                }
            }
            j.restart(2);
            let mut durable = std::fs::read(&path).unwrap();
            let mut before_last = durable.clone();
            let mut payloads: Vec<(Vec<u8>, bool)> = Vec::new();
            let mut synced = 0;
            let mut synced_before_last = 0;
            for (i, (len, sync)) in written.iter().enumerate() {
                if !j.fits(*len) {
                    break;
                }
                let payload = vec![i as u8; *len];
                j.append(&payload, *sync).unwrap();
                payloads.push((payload, *sync));
                before_last = durable.clone();
                synced_before_last = synced;
                if *sync {
                    durable = std::fs::read(&path).unwrap();
                    synced = payloads.len();
                }
            }
            drop(j);
            let starts: Vec<usize> = payloads
                .iter()
                .scan(MAGIC.len(), |at, (p, _)| { let start = *at; *at += RECORD_HEADER + p.len(); Some(start) })
                .collect();
            let mut image = std::fs::read(&path).unwrap();
            // Refused, or how many records come back: at least, at most.
            let (expect_refusal, at_least, at_most) = match &crash {
                Crash::PowerLoss { sectors, in_sync } => {
                    let (old, kept) = if *in_sync && payloads.last().is_some_and(|(_, s)| *s) {
                        (&before_last, synced_before_last)
                    } else {
                        (&durable, synced)
                    };
                    for (i, sector) in image.chunks_mut(512).enumerate() {
                        if !sectors[i % sectors.len()] {
                            sector.copy_from_slice(&old[i * 512..i * 512 + sector.len()]);
                        }
                    }
                    (false, kept, payloads.len())
                }
                Crash::Rot { record, byte } => {
                    let k = record % payloads.len();
                    image[starts[k] + RECORD_HEADER + byte % payloads[k].0.len()] ^= 0x5a;
                    (payloads[k].1 && k + 1 < payloads.len(), k, k)
                }
            };
            std::fs::write(&path, &image).unwrap();
            let opened = Journal::open(&path, 2, CAPACITY);
            if expect_refusal {
                let err = opened.err().expect("a rotten synced record before an intact one is refused");
                proptest::prop_assert!(err.0.contains("is damaged"), "{}", err.0);
                proptest::prop_assert_eq!(std::fs::read(&path).unwrap(), image, "nothing written");
            } else {
                let (_, read) = opened.map_err(|e| e.0).unwrap();
                proptest::prop_assert!(
                    read.len() >= at_least && read.len() <= at_most,
                    "{} records of {} ({:?})", read.len(), payloads.len(), crash
                );
                for (got, (wrote, _)) in read.iter().zip(&payloads) {
                    proptest::prop_assert_eq!(got, wrote);
                }
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_and_left_alone() {
        let dir = disk_dir("journal-foreign");
        let path = dir.join("j");
        std::fs::write(&path, b"something else").unwrap();
        let err = Journal::open(&path, 1, 4096).err().unwrap();
        assert!(err.0.contains(path.to_str().unwrap()), "{}", err.0);
        assert_eq!(std::fs::read(&path).unwrap(), b"something else");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
