//! The seam between the [`Engine`](super::Engine) and the network.

use super::clients::Conn;
use super::shared::Shared;

/// Where an [`Engine`](super::Engine) sends its messages, and learns of
/// connections that ended. Sends never block: an error means the message
/// was dropped (peer gone, or its queue is full).
pub trait Transport {
    /// Sends `frames` (delimiter first) to the client with routing id `rid`.
    fn deliver(&mut self, rid: &[u8], frames: &[Vec<u8>]) -> Result<(), zmq::Error>;

    /// [`deliver`](Transport::deliver) of borrowed frames; by default
    /// through owned copies of them.
    fn deliver_parts(&mut self, rid: &[u8], frames: &[&[u8]]) -> Result<(), zmq::Error> {
        self.deliver(rid, &frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>())
    }

    /// Sends one of the copies of a fan-out to `rid`; by default like
    /// [`deliver`](Transport::deliver) with its frames.
    fn deliver_shared(&mut self, rid: &[u8], message: &mut Shared) -> Result<(), zmq::Error> {
        self.deliver(rid, message.frames())
    }

    /// Appends the connections that ended since the last call: with `all`,
    /// every one whose end happened before this call; without, those known
    /// at no cost. None by default.
    fn lost_connections(&mut self, _lost: &mut Vec<Conn>, _all: bool) {}
}
