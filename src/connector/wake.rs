//! Wakes the engine thread from any thread: a non-blocking pipe whose read
//! end the engine polls together with its ZeroMQ socket (`zmq::poll` takes
//! plain file descriptors), so requests are picked up at once without a
//! second ZeroMQ socket per caller.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct Waker {
    read: OwnedFd,
    write: OwnedFd,
    /// Set by `wake`, cleared by `drain`: saves a write() per request when
    /// the engine has not caught up yet.
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe() succeeded, so both descriptors are open and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            let fd = fd.as_raw_fd();
            // SAFETY: fcntl on a descriptor we own, with valid flag arguments.
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd_flags = libc::fcntl(fd, libc::F_GETFD);
                if fd_flags < 0 || libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(Waker { read, write, pending: AtomicBool::new(false) })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn wake(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let byte = 1u8;
        // SAFETY: writes one byte from a valid buffer to our pipe. A full pipe
        // (EAGAIN) already guarantees a wake-up, so the result is not needed.
        unsafe {
            libc::write(self.write.as_raw_fd(), &byte as *const u8 as *const libc::c_void, 1);
        }
    }

    /// Empties the pipe. Call before looking at the request queue.
    ///
    /// The flag is cleared only after reading: a waker whose swap saw
    /// `false` always writes a byte, so while the flag is set a byte is in
    /// the pipe or about to be; and a waker that skipped writing because the
    /// flag was set queued its request before this clear, so the look at the
    /// queue that follows sees it.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reads into a valid buffer of the given length.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n < buf.len() as isize {
                break;
            }
        }
        self.pending.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn wake_then_drain() {
        let w = Waker::new().unwrap();
        assert!(!readable(w.fd()));
        w.wake();
        w.wake();
        assert!(readable(w.fd()));
        w.drain();
        assert!(!readable(w.fd()));
        w.wake();
        assert!(readable(w.fd()), "a wake after drain must be seen");
    }

    /// Many threads queue items and wake one consumer that only looks at the
    /// queue after a wake-up: a lost wake-up stalls it past the deadline.
    #[test]
    fn no_wake_up_is_lost_under_contention() {
        use std::sync::{Arc, Mutex};
        const THREADS: usize = 4;
        const EACH: usize = 20_000;
        let w = Arc::new(Waker::new().unwrap());
        let queue = Arc::new(Mutex::new(0usize));
        let producers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (w, queue) = (w.clone(), queue.clone());
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        *queue.lock().unwrap() += 1;
                        w.wake();
                    }
                })
            })
            .collect();
        // Drain as often as possible while producers run, to give the race
        // many chances; then wait for the rest with a long timeout.
        let mut taken = 0;
        while taken < THREADS * EACH {
            let running = producers.iter().any(|p| !p.is_finished());
            let mut pfd = libc::pollfd { fd: w.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, if running { 0 } else { 10_000 }) };
            if n == 1 {
                w.drain();
                taken += std::mem::take(&mut *queue.lock().unwrap());
            } else {
                assert!(running, "lost wake-up: {taken} of {} items taken", THREADS * EACH);
            }
        }
        for p in producers {
            p.join().unwrap();
        }
    }
}
