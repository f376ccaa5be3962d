//! One `O_DIRECT` write at a time through Linux AIO (`io_submit`), its
//! completion signalled on an eventfd that the socket thread polls with
//! the ROUTER: the journal is written without a thread hand-off and
//! without the socket thread ever waiting for the disk.
//!
//! Linux AIO, not io_uring: container runtimes' default seccomp profiles
//! refuse io_uring, and one write in flight needs none of its features.
//! The only unsafe code is here: the syscalls, and the rule that a buffer
//! handed to the kernel stays where it is until its write completed
//! ([`Aio`] owns it until then, and waits for it before it is dropped).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What `O_DIRECT` asks of a write's offset, length and buffer address
/// (4 KiB covers disks of 512-byte and of 4 KiB sectors).
pub const BLOCK: usize = 4096;

/// `struct iocb` of `<linux/aio_abi.h>` (64-bit little-endian layout).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event` of `<linux/aio_abi.h>`.
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

// The kernel's sizes, checked at build time.
const _: () = assert!(std::mem::size_of::<Iocb>() == 64 && std::mem::size_of::<IoEvent>() == 32);

const IOCB_CMD_PWRITE: u16 = 1;
/// `aio_resfd` is an eventfd to signal on completion.
const IOCB_FLAG_RESFD: u32 = 1;

/// A buffer whose first `len` bytes from `start` are aligned to [`BLOCK`].
pub struct BlockBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl BlockBuf {
    /// `len` (a multiple of [`BLOCK`]) zeros.
    pub fn zeroed(len: usize) -> BlockBuf {
        debug_assert_eq!(len % BLOCK, 0);
        let bytes = vec![0; len + BLOCK];
        let start = bytes.as_ptr().align_offset(BLOCK);
        BlockBuf { bytes, start, len }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

/// A Linux AIO context with at most one write in flight.
pub struct Aio {
    context: u64,
    /// An eventfd.
    done: File,
    /// The buffer of the write in flight: the kernel reads it until the
    /// completion.
    in_flight: Option<BlockBuf>,
}

impl Aio {
    pub fn new() -> io::Result<Aio> {
        if cfg!(target_endian = "big") {
            // `Iocb` puts `aio_key` before `aio_rw_flags`, as little-endian
            // kernels do; big-endian ones swap them.
            return Err(io::Error::new(io::ErrorKind::Unsupported, "Linux AIO is only used on little-endian machines"));
        }
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned by nothing else.
        let done = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut context = 0u64;
        // SAFETY: io_setup writes the new context's id to `context`.
        if unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut context as *mut u64) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Aio { context, done, in_flight: None })
    }

    /// The descriptor that becomes readable when the write completed.
    pub fn completion_fd(&self) -> RawFd {
        self.done.as_raw_fd()
    }

    /// Clears [`completion_fd`](Self::completion_fd), so the next poll
    /// sleeps until the next signal; done before looking for completions,
    /// so none is missed.
    pub fn clear_signal(&self) {
        // A non-blocking read of the eventfd's counter ("would block" when
        // it is zero already).
        let _ = (&self.done).read(&mut [0u8; 8]);
    }

    /// Makes [`completion_fd`](Self::completion_fd) readable, as a
    /// completion does.
    pub fn signal_now(&self) {
        // Fails only on a full counter, which is readable anyway.
        let _ = (&self.done).write_all(&1u64.to_ne_bytes());
    }

    /// A descriptor another thread writes a count to (8 bytes) to wake the
    /// poll of [`completion_fd`](Self::completion_fd).
    pub fn signal(&self) -> io::Result<File> {
        self.done.try_clone()
    }

    /// Starts writing `buf` at `offset` of `file` (opened `O_DIRECT`); with
    /// `dsync` the write completes once it is on disk (`RWF_DSYNC`). At most
    /// one write is in flight: the caller waits for [`completed`](Self::completed).
    pub fn submit(&mut self, file: &File, buf: BlockBuf, offset: u64, dsync: bool) -> io::Result<()> {
        if self.in_flight.is_some() {
            return Err(io::Error::other("a journal write is already in flight"));
        }
        let data = buf.as_slice();
        let iocb = Iocb {
            aio_lio_opcode: IOCB_CMD_PWRITE,
            aio_fildes: file.as_raw_fd() as u32,
            aio_buf: data.as_ptr() as u64,
            aio_nbytes: data.len() as u64,
            aio_offset: offset as i64,
            aio_rw_flags: if dsync { libc::RWF_DSYNC } else { 0 },
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: self.done.as_raw_fd() as u32,
            ..Iocb::default()
        };
        let mut list = [&iocb as *const Iocb];
        // SAFETY: the kernel copies the iocb during the call and reads the
        // buffer until the write completes; `in_flight` keeps it alive
        // (heap memory, not moved) until `completed` or `Drop` reaped it.
        let submitted = unsafe { libc::syscall(libc::SYS_io_submit, self.context, 1i64, list.as_mut_ptr()) };
        if submitted != 1 {
            return Err(if submitted < 0 {
                io::Error::last_os_error()
            } else {
                io::Error::other("io_submit took no write")
            });
        }
        self.in_flight = Some(buf);
        Ok(())
    }

    /// The write in flight's result if it completed (the bytes written, or
    /// the error), without waiting; with `wait`, once it completed.
    pub fn completed(&mut self, wait: bool) -> Option<io::Result<usize>> {
        self.in_flight.as_ref()?;
        let mut event = IoEvent::default();
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let timeout: *const libc::timespec = if wait { std::ptr::null() } else { &zero };
        loop {
            // SAFETY: room for one event; `timeout` is null or points to
            // `zero`, alive for the call.
            let got = unsafe {
                libc::syscall(libc::SYS_io_getevents, self.context, 1i64, 1i64, &mut event as *mut IoEvent, timeout)
            };
            match got {
                1 => break,
                0 => return None,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        // The context itself failed: the write's fate is
                        // unknown, so it counts as failed, and its buffer
                        // stays leaked rather than freed under the kernel.
                        std::mem::forget(self.in_flight.take());
                        return Some(Err(e));
                    }
                }
            }
        }
        self.in_flight = None;
        Some(if event.res < 0 { Err(io::Error::from_raw_os_error(-event.res as i32)) } else { Ok(event.res as usize) })
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        // The kernel may still read the buffer: wait for it first.
        let _ = self.completed(true);
        // SAFETY: the context is ours and nothing is in flight any more.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.context) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    /// A new dir on the disk with a file of four zeroed blocks, opened
    /// `O_DIRECT`.
    fn direct_file(name: &str) -> (std::path::PathBuf, std::path::PathBuf, File) {
        let dir = crate::store::tests::disk_dir(name);
        let path = dir.join("f");
        std::fs::write(&path, vec![0u8; 4 * BLOCK]).unwrap();
        let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
        (dir, path, file)
    }

    #[test]
    fn a_block_written_through_aio_reads_back_and_signals_its_descriptor() {
        let (dir, path, file) = direct_file("aio");
        let mut aio = Aio::new().unwrap();
        let mut buf = BlockBuf::zeroed(BLOCK);
        buf.as_mut_slice()[..5].copy_from_slice(b"hello");
        aio.submit(&file, buf, BLOCK as u64, true).unwrap();
        let mut fds = [libc::pollfd { fd: aio.completion_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one pollfd; bounded at 10 s.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) }, 1, "the eventfd signals the completion");
        let written = aio.completed(false).expect("completed");
        assert_eq!(written.unwrap(), BLOCK);
        assert!(aio.completed(false).is_none(), "nothing in flight");
        let mut read = [0u8; 5];
        std::fs::File::open(&path).unwrap().read_exact_at(&mut read, BLOCK as u64).unwrap();
        assert_eq!(&read, b"hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_misaligned_write_fails_at_completion_or_submission_and_names_no_success() {
        let (dir, _, file) = direct_file("aio-misaligned");
        let mut aio = Aio::new().unwrap();
        match aio.submit(&file, BlockBuf::zeroed(BLOCK), 100, true) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
            Ok(()) => {
                let written = aio.completed(true).expect("completed");
                assert_eq!(written.unwrap_err().raw_os_error(), Some(libc::EINVAL));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
