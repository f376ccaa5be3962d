//! libzmq from the load generator: a context that can hold thousands of
//! sockets, frame I/O into reused messages, and waiting on many sockets at
//! once.

use std::ffi::c_void;
use std::sync::Arc;

use crate::Result;

const ZMQ_IO_THREADS: i32 = 1;
const ZMQ_MAX_SOCKETS: i32 = 2;
pub const ZMQ_DEALER: i32 = 5;

extern "C" {
    fn zmq_ctx_new() -> *mut c_void;
    fn zmq_ctx_set(ctx: *mut c_void, option: i32, value: i32) -> i32;
    fn zmq_ctx_term(ctx: *mut c_void) -> i32;
    fn zmq_socket(ctx: *mut c_void, kind: i32) -> *mut c_void;
}

/// A libzmq context created through the C API, because the `zmq` crate
/// cannot raise ZMQ_MAX_SOCKETS (1023 by default) and the `conns` scenario
/// holds thousands of clients in one process.
pub struct Ctx {
    raw: *mut c_void,
}

// SAFETY: libzmq contexts are thread-safe; the pointer is only terminated in Drop.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

impl Ctx {
    pub fn new(io_threads: i32, max_sockets: usize) -> Result<Arc<Ctx>> {
        // SAFETY: plain libzmq C calls on a context we own.
        unsafe {
            let raw = zmq_ctx_new();
            if raw.is_null() {
                return Err(format!("zmq_ctx_new failed: {}", zmq_err()));
            }
            let ctx = Ctx { raw };
            if zmq_ctx_set(raw, ZMQ_IO_THREADS, io_threads.max(1)) != 0 {
                return Err(format!("cannot set {io_threads} I/O threads: {}", zmq_err()));
            }
            let max = i32::try_from(max_sockets.max(64)).unwrap_or(i32::MAX);
            if zmq_ctx_set(raw, ZMQ_MAX_SOCKETS, max) != 0 {
                return Err(format!("cannot allow {max} sockets: {}", zmq_err()));
            }
            Ok(Arc::new(ctx))
        }
    }

    pub fn socket(self: &Arc<Self>, kind: i32) -> Result<Sock> {
        // SAFETY: the context outlives the socket (Sock holds an Arc and drops the socket first).
        let raw = unsafe { zmq_socket(self.raw, kind) };
        if raw.is_null() {
            return Err(format!("cannot create a socket: {}", zmq_err()));
        }
        // SAFETY: `raw` is a fresh socket we own; zmq::Socket closes it on drop.
        let sock = unsafe { zmq::Socket::from_raw(raw) };
        sock.set_linger(0).map_err(|e| format!("linger: {e}"))?;
        Ok(Sock { sock, _ctx: self.clone() })
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: every socket of this context is closed (each Sock holds an Arc to it).
        unsafe { while zmq_ctx_term(self.raw) != 0 && zmq::Error::from_raw(errno()) == zmq::Error::EINTR {} }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn zmq_err() -> zmq::Error {
    zmq::Error::from_raw(errno())
}

/// A socket that keeps its context alive; field order closes the socket first.
pub struct Sock {
    sock: zmq::Socket,
    _ctx: Arc<Ctx>,
}

impl std::ops::Deref for Sock {
    type Target = zmq::Socket;
    fn deref(&self) -> &zmq::Socket {
        &self.sock
    }
}

/// Sends one multipart message. With DONTWAIT only the first frame can fail
/// (libzmq accepts the rest of a message once its first frame is queued).
pub fn send(sock: &zmq::Socket, frames: &[&[u8]], flags: i32) -> zmq::Result<()> {
    let last = frames.len() - 1;
    for (i, f) in frames.iter().enumerate() {
        sock.send(*f, if i < last { flags | zmq::SNDMORE } else { flags })?;
    }
    Ok(())
}

/// Receives one multipart message into reused `zmq::Message`s; returns the
/// frame count.
pub fn recv(sock: &zmq::Socket, frames: &mut Vec<zmq::Message>, flags: i32) -> zmq::Result<usize> {
    let mut n = 0;
    loop {
        if frames.len() == n {
            frames.push(zmq::Message::new());
        }
        sock.recv(&mut frames[n], if n == 0 { flags } else { 0 })?;
        n += 1;
        if !frames[n - 1].get_more() {
            return Ok(n);
        }
    }
}

/// Raises RLIMIT_NOFILE as far as allowed (children inherit it), so the
/// load processes and the spawned brokers can hold 10,000 connections.
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        let raised = libc::rlimit { rlim_cur: want, rlim_max: want.max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        // Not privileged: the hard limit is as far as we may go.
        let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// Waits on many sockets at once in O(ready) instead of zmq_poll's O(all):
/// each socket's ZMQ_FD in one epoll set. ZMQ_FD only says "the socket's
/// state may have changed", so whoever is woken must drain the socket with
/// [`drain`] (which re-checks ZMQ_EVENTS after every EAGAIN).
pub struct Waiter {
    epfd: i32,
    events: Vec<libc::epoll_event>,
    count: usize,
    first: bool,
}

impl Waiter {
    pub fn new<'a>(socks: impl Iterator<Item = &'a zmq::Socket>) -> Result<Waiter> {
        // SAFETY: plain syscalls; the epoll fd is closed in Drop.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(format!("epoll_create1: {}", std::io::Error::last_os_error()));
        }
        let mut w = Waiter { epfd, events: Vec::new(), count: 0, first: true };
        for (i, s) in socks.enumerate() {
            let fd = s.get_fd().map_err(|e| format!("ZMQ_FD: {e}"))?;
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            // SAFETY: valid epoll fd and event struct.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
            }
            w.count += 1;
        }
        w.events = vec![libc::epoll_event { events: 0, u64: 0 }; w.count.clamp(1, 1024)];
        Ok(w)
    }

    /// Fills `ready` with the indices of sockets that may have input; the
    /// first call returns all of them (input may have arrived before they
    /// were registered).
    pub fn wait(&mut self, timeout_ms: i32, ready: &mut Vec<usize>) -> Result<()> {
        ready.clear();
        if self.first {
            self.first = false;
            ready.extend(0..self.count);
            return Ok(());
        }
        // SAFETY: the buffer holds events.len() entries.
        let n = unsafe { libc::epoll_wait(self.epfd, self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return if err.kind() == std::io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(format!("epoll_wait: {err}"))
            };
        }
        ready.extend(self.events[..n as usize].iter().map(|e| e.u64 as usize));
        Ok(())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.epfd) };
    }
}

/// Receives every message waiting on `sock`, calling `f` with each one's
/// frames, until the socket reports no more input (so its ZMQ_FD re-arms).
/// `f` may send on the same socket.
pub fn drain(
    sock: &zmq::Socket,
    frames: &mut Vec<zmq::Message>,
    mut f: impl FnMut(&[zmq::Message]) -> Result<()>,
) -> Result<()> {
    loop {
        match recv(sock, frames, zmq::DONTWAIT) {
            Ok(n) => f(&frames[..n])?,
            Err(zmq::Error::EAGAIN) => {
                // A send inside `f` may have consumed the wake-up of input
                // that arrived meanwhile: only stop when ZMQ_EVENTS agrees.
                let events = sock.get_events().map_err(|e| format!("ZMQ_EVENTS: {e}"))?;
                if !events.contains(zmq::POLLIN) {
                    return Ok(());
                }
            }
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
}
