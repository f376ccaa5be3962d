//! What a message carries through NATS: the MESSAGE frames the first
//! broker built (its SENDER/SENDER-KEY stamp included), as length-prefixed
//! frames in the NATS payload. NATS headers are text; this keeps every
//! header and body byte intact.
//!
//! Layout: `u32` frame count, then per frame a `u32` length and the bytes
//! (big-endian).

/// Bytes [`encode`] adds to the frames themselves.
pub fn overhead(frames: &[Vec<u8>]) -> usize {
    4 + 4 * frames.len()
}

/// The payload that carries `frames`.
pub fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
    let size = overhead(frames) + frames.iter().map(Vec::len).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// The frames of a payload; `None` when it is not one [`encode`] made.
pub fn decode(mut payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    fn take_u32(buf: &mut &[u8]) -> Option<usize> {
        let (head, rest) = buf.split_first_chunk::<4>()?;
        *buf = rest;
        Some(u32::from_be_bytes(*head) as usize)
    }
    let count = take_u32(&mut payload)?;
    // Each frame needs at least its length: a count beyond that is a lie.
    if count > payload.len() / 4 {
        return None;
    }
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_u32(&mut payload)?;
        let frame = payload.get(..len)?;
        frames.push(frame.to_vec());
        payload = &payload[len..];
    }
    payload.is_empty().then_some(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let payload = encode(&frames);
            prop_assert_eq!(payload.len(), overhead(&frames) + frames.iter().map(Vec::len).sum::<usize>());
            prop_assert_eq!(decode(&payload), Some(frames));
        }

        #[test]
        fn garbage_is_refused_or_decoded_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(frames) = decode(&bytes) {
                prop_assert_eq!(encode(&frames), bytes);
            }
        }
    }

    #[test]
    fn truncated_payloads_are_refused() {
        let payload = encode(&[b"MESSAGE".to_vec(), b"body".to_vec()]);
        for cut in 0..payload.len() {
            assert_eq!(decode(&payload[..cut]), None);
        }
    }
}
