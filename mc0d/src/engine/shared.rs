//! One message, many recipients: the frames of a fan-out are built once as
//! libzmq messages and every recipient gets a `zmq_msg_copy` of them. libzmq
//! reference-counts frames over 33 bytes (smaller ones live inside the
//! `zmq_msg_t` and are copied with it), so a 1 KB body sent to 100
//! subscribers is allocated and copied once instead of 100 times.
//!
//! The `zmq` crate binds neither `zmq_msg_copy` nor a way to reach the
//! `zmq_msg_t` inside its `Message`, so the frames are the broker's own
//! `zmq_msg_t` wrappers (`zmsg::Msg`).

use std::sync::Arc;

use super::buffers::Frames;
use crate::zmsg::Msg;

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

    /// The bytes of one copy.
    pub fn size(&self) -> usize {
        super::buffers::size(&self.frames)
    }

    /// Another reference to the frames, for a recipient whose copy must
    /// wait in its buffer.
    pub fn share(&self) -> Frames {
        self.frames.clone()
    }

    /// Sends the frames (after the routing-id frame the caller has sent with
    /// `SNDMORE`) as references to one copy.
    pub(crate) fn send_frames(&mut self, socket: &mut zmq::Socket) -> Result<(), zmq::Error> {
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
