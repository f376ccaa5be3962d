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

    /// Empties the pipe. Call before looking at the request queue, so a
    /// request queued after the look triggers a new wake-up.
    pub fn drain(&self) {
        self.pending.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reads into a valid buffer of the given length.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n < buf.len() as isize {
                break;
            }
        }
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
}
