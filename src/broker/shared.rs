//! One message, many recipients: the frames of a fan-out are built once as
//! libzmq messages and every recipient gets a `zmq_msg_copy` of them. libzmq
//! reference-counts frames over 33 bytes (smaller ones live inside the
//! `zmq_msg_t` and are copied with it), so a 1 KB body sent to 100
//! subscribers is allocated and copied once instead of 100 times.
//!
//! The `zmq` crate binds neither `zmq_msg_copy` nor a way to reach the
//! `zmq_msg_t` inside its `Message`, so this module keeps its own
//! `zmq_msg_t` (`sys::RawMsg`, laid out as in zmq.h) and calls libzmq directly.

/// The libzmq calls used here, kept out of the C header.
/// cbindgen:ignore
mod sys {
    use libc::{c_int, c_void, size_t};

    /// `zmq_msg_t` from zmq.h: 64 opaque bytes, pointer-aligned (8 suffices
    /// on every target libzmq supports).
    #[repr(C, align(8))]
    pub struct RawMsg(pub [u8; 64]);

    extern "C" {
        pub fn zmq_msg_init(msg: *mut RawMsg) -> c_int;
        pub fn zmq_msg_init_size(msg: *mut RawMsg, size: size_t) -> c_int;
        pub fn zmq_msg_data(msg: *mut RawMsg) -> *mut c_void;
        pub fn zmq_msg_copy(dest: *mut RawMsg, src: *mut RawMsg) -> c_int;
        pub fn zmq_msg_send(msg: *mut RawMsg, socket: *mut c_void, flags: c_int) -> c_int;
        pub fn zmq_msg_close(msg: *mut RawMsg) -> c_int;
        pub fn zmq_errno() -> c_int;
    }
}

use sys::*;

use std::sync::Arc;

use super::buffers::Frames;

fn last_error() -> zmq::Error {
    // SAFETY: no arguments; reads the calling thread's errno.
    zmq::Error::from_raw(unsafe { zmq_errno() })
}

/// An initialised `zmq_msg_t`, closed when dropped. libzmq keeps no pointer
/// to a `zmq_msg_t` itself (only to its separately allocated content), so
/// moving one is fine; the `zmq` crate's `Message` relies on the same.
struct Msg(RawMsg);

impl Msg {
    fn from_bytes(data: &[u8]) -> Result<Msg, zmq::Error> {
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

    /// Sends another reference to this message's content. Takes `&mut`
    /// because libzmq marks the source as shared on its first copy. The copy
    /// is built and sent in place: it is never moved once initialised.
    fn send_copy(&mut self, socket: &mut zmq::Socket, flags: i32) -> Result<(), zmq::Error> {
        let mut copy = Msg(RawMsg([0; 64]));
        // SAFETY: `copy` is a writable zmq_msg_t (zmq_msg_init cannot fail)
        // distinct from the initialised `self`; the socket is live and owned
        // by this thread (`&mut`). After a successful send libzmq has emptied
        // `copy`, after a failure it is still ours: Drop closes it either way.
        unsafe {
            zmq_msg_init(&mut copy.0);
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

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: initialised by construction and closed only here. Closing
        // fails only for an invalid message, which cannot happen.
        unsafe { zmq_msg_close(&mut self.0) };
    }
}

/// A message to send to many clients. Transports that cannot share a
/// buffer send [`frames`](Shared::frames); the ROUTER socket shares.
pub struct Shared {
    frames: Frames,
    /// `frames` as libzmq messages, built on the first delivery by a socket.
    msgs: Vec<Msg>,
}

impl Shared {
    /// `frames` starts with the empty delimiter, like [`Transport::deliver`]'s.
    ///
    /// [`Transport::deliver`]: super::Transport::deliver
    pub fn new(frames: Vec<Vec<u8>>) -> Self {
        Shared { frames: Arc::new(frames), msgs: Vec::new() }
    }

    pub fn frames(&self) -> &[Vec<u8>] {
        &self.frames
    }

    /// Another reference to the frames, for a recipient whose copy must
    /// wait in its buffer.
    pub fn share(&self) -> Frames {
        self.frames.clone()
    }

    /// Sends the frames (after the routing-id frame the caller has sent with
    /// `SNDMORE`) as references to one copy.
    pub(super) fn send_frames(&mut self, socket: &mut zmq::Socket) -> Result<(), zmq::Error> {
        if self.msgs.len() != self.frames.len() {
            self.msgs = self.frames.iter().map(|f| Msg::from_bytes(f)).collect::<Result<_, _>>()?;
        }
        let last = self.msgs.len().saturating_sub(1);
        for (i, msg) in self.msgs.iter_mut().enumerate() {
            let more = if i < last { zmq::SNDMORE } else { 0 };
            msg.send_copy(socket, more | zmq::DONTWAIT)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipient_gets_the_same_frames() {
        let ctx = zmq::Context::new();
        let mut router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_router_mandatory(true).unwrap();
        router.bind("inproc://shared-test").unwrap();
        let peers: Vec<zmq::Socket> = (0..3u8)
            .map(|i| {
                let dealer = ctx.socket(zmq::DEALER).unwrap();
                dealer.set_identity(&[b'p', i]).unwrap();
                dealer.set_rcvtimeo(5000).unwrap();
                dealer.connect("inproc://shared-test").unwrap();
                // A first message makes the ROUTER know the peer's id.
                dealer.send("hello", 0).unwrap();
                dealer
            })
            .collect();
        router.set_rcvtimeo(5000).unwrap();
        for _ in 0..peers.len() {
            router.recv_multipart(0).unwrap();
        }
        // Frames below and above libzmq's 33-byte in-place limit.
        let frames = vec![b"".to_vec(), b"MESSAGE".to_vec(), vec![1u8; 40], vec![7u8; 1024]];
        let mut shared = Shared::new(frames.clone());
        for i in 0..3u8 {
            router.send(&[b'p', i][..], zmq::SNDMORE).unwrap();
            shared.send_frames(&mut router).unwrap();
        }
        for peer in &peers {
            assert_eq!(peer.recv_multipart(0).unwrap(), frames);
        }
    }
}
