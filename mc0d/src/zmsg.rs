//! libzmq messages (`zmq_msg_t`) handled directly, for what the `zmq` crate
//! does not expose: `zmq_msg_copy` (a fan-out shares one copy of each frame,
//! see [`super::shared`]) and, on received frames, the connection they came
//! from (`ZMQ_SRCFD`) next to their `User-Id` metadata.

/// The libzmq calls used here, kept out of the C header.
/// cbindgen:ignore
mod sys {
    use libc::{c_char, c_int, c_void, size_t};

    /// `zmq_msg_t` from zmq.h: 64 opaque bytes, pointer-aligned (8 suffices
    /// on every target libzmq supports).
    #[repr(C, align(8))]
    pub struct RawMsg(pub [u8; 64]);

    /// `ZMQ_SRCFD` from zmq.h: the file descriptor of the connection a
    /// received frame was read from.
    pub const ZMQ_SRCFD: c_int = 2;

    extern "C" {
        pub fn zmq_msg_init(msg: *mut RawMsg) -> c_int;
        pub fn zmq_msg_init_size(msg: *mut RawMsg, size: size_t) -> c_int;
        pub fn zmq_msg_data(msg: *mut RawMsg) -> *mut c_void;
        pub fn zmq_msg_size(msg: *const RawMsg) -> size_t;
        pub fn zmq_msg_more(msg: *const RawMsg) -> c_int;
        pub fn zmq_msg_get(msg: *const RawMsg, property: c_int) -> c_int;
        pub fn zmq_msg_gets(msg: *const RawMsg, property: *const c_char) -> *const c_char;
        pub fn zmq_msg_copy(dest: *mut RawMsg, src: *mut RawMsg) -> c_int;
        pub fn zmq_msg_send(msg: *mut RawMsg, socket: *mut c_void, flags: c_int) -> c_int;
        pub fn zmq_msg_recv(msg: *mut RawMsg, socket: *mut c_void, flags: c_int) -> c_int;
        pub fn zmq_msg_close(msg: *mut RawMsg) -> c_int;
        pub fn zmq_errno() -> c_int;
    }
}

use sys::*;

fn last_error() -> zmq::Error {
    // SAFETY: no arguments; reads the calling thread's errno.
    zmq::Error::from_raw(unsafe { zmq_errno() })
}

/// An initialised `zmq_msg_t`, closed when dropped. libzmq keeps no pointer
/// to a `zmq_msg_t` itself (only to its separately allocated content), so
/// moving one is fine; the `zmq` crate's `Message` relies on the same. (A
/// small frame's bytes live inside it, so its data pointer is taken anew on
/// every access, never kept.)
pub struct Msg(RawMsg);

impl Msg {
    /// An empty message, e.g. to receive into.
    pub fn new() -> Msg {
        let mut msg = Msg(RawMsg([0; 64]));
        // SAFETY: a writable zmq_msg_t; zmq_msg_init cannot fail.
        unsafe { zmq_msg_init(&mut msg.0) };
        msg
    }

    pub fn from_bytes(data: &[u8]) -> Result<Msg, zmq::Error> {
        let mut raw = RawMsg([0; 64]);
        // SAFETY: a writable zmq_msg_t; on failure it is left uninitialised
        // and is not wrapped (so never closed).
        if unsafe { zmq_msg_init_size(&mut raw, data.len()) } != 0 {
            return Err(last_error());
        }
        let mut msg = Msg(raw);
        if !data.is_empty() {
            // SAFETY: the message was initialised with room for exactly
            // `data.len()` bytes; its data pointer is taken after the move.
            unsafe {
                let dest = zmq_msg_data(&mut msg.0) as *mut u8;
                std::ptr::copy_nonoverlapping(data.as_ptr(), dest, data.len());
            }
        }
        Ok(msg)
    }

    /// Receives the next frame from `socket` into this message (replacing
    /// what it held).
    pub fn recv(&mut self, socket: &mut zmq::Socket, flags: i32) -> Result<(), zmq::Error> {
        // SAFETY: an initialised message and a live socket owned by this
        // thread (`&mut`); zmq_msg_recv releases the old content itself.
        if unsafe { zmq_msg_recv(&mut self.0, socket.as_mut_ptr(), flags) } == -1 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Whether more frames of the same message follow.
    pub fn more(&self) -> bool {
        // SAFETY: an initialised message, only read.
        unsafe { zmq_msg_more(&self.0) != 0 }
    }

    /// The file descriptor of the connection a received frame came from,
    /// if libzmq knows it.
    pub fn source_fd(&self) -> Option<i32> {
        // SAFETY: an initialised message, only read.
        let fd = unsafe { zmq_msg_get(&self.0, ZMQ_SRCFD) };
        (fd >= 0).then_some(fd)
    }

    /// A metadata property of a received frame, borrowed from the message;
    /// `name` is NUL-terminated (`b"User-Id\0"`).
    pub fn property(&self, name: &[u8]) -> Option<&str> {
        if name.last() != Some(&0) {
            return None;
        }
        // SAFETY: an initialised message and a NUL-terminated name; libzmq
        // returns NULL or a NUL-terminated string owned by the message's
        // metadata, which lives as long as the message.
        unsafe {
            let value = zmq_msg_gets(&self.0, name.as_ptr() as *const libc::c_char);
            if value.is_null() {
                return None;
            }
            std::ffi::CStr::from_ptr(value).to_str().ok()
        }
    }

    /// Sends another reference to this message's content. Takes `&mut`
    /// because libzmq marks the source as shared on its first copy. The copy
    /// is built and sent in place: it is never moved once initialised.
    pub fn send_copy(&mut self, socket: &mut zmq::Socket, flags: i32) -> Result<(), zmq::Error> {
        let mut copy = Msg::new();
        // SAFETY: `copy` is an initialised zmq_msg_t distinct from the
        // initialised `self`; the socket is live and owned by this thread
        // (`&mut`). After a successful send libzmq has emptied `copy`, after
        // a failure it is still ours: Drop closes it either way.
        unsafe {
            if zmq_msg_copy(&mut copy.0, &mut self.0) != 0 {
                return Err(last_error());
            }
            if zmq_msg_send(&mut copy.0, socket.as_mut_ptr(), flags) == -1 {
                return Err(last_error());
            }
        }
        Ok(())
    }
}

impl Default for Msg {
    fn default() -> Self {
        Msg::new()
    }
}

impl AsRef<[u8]> for Msg {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: an initialised message; zmq_msg_data only reads it (it takes
        // a non-const pointer for historical reasons), and the bytes stay
        // valid while `self` is borrowed.
        unsafe {
            let size = zmq_msg_size(&self.0);
            if size == 0 {
                return &[];
            }
            let data = zmq_msg_data(&self.0 as *const RawMsg as *mut RawMsg) as *const u8;
            std::slice::from_raw_parts(data, size)
        }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: initialised by construction and closed only here. Closing
        // fails only for an invalid message, which cannot happen.
        unsafe { zmq_msg_close(&mut self.0) };
    }
}
