//! The one libzmq socket option the `zmq` crate has no setter for.

/// `ZMQ_ZAP_ENFORCE_DOMAIN` from libzmq's draft API (zmq.h).
const ZMQ_ZAP_ENFORCE_DOMAIN: libc::c_int = 93;

extern "C" {
    // Bound here because zmq-sys is not a direct dependency; the option
    // this is used for has no setter in the `zmq` crate.
    fn zmq_setsockopt(
        socket: *mut libc::c_void,
        option: libc::c_int,
        value: *const libc::c_void,
        len: libc::size_t,
    ) -> libc::c_int;
}

/// Sets `ZMQ_ZAP_ENFORCE_DOMAIN` on `socket`: a handshake that no ZAP handler
/// answers then fails, instead of libzmq's default of admitting the client.
/// Must be set before the socket binds.
pub fn enforce_zap(socket: &mut zmq::Socket) -> Result<(), std::io::Error> {
    let on: libc::c_int = 1;
    // SAFETY: a live socket and a pointer to an int of the given size, as
    // zmq_setsockopt requires for an int option.
    let rc = unsafe {
        zmq_setsockopt(
            socket.as_mut_ptr(),
            ZMQ_ZAP_ENFORCE_DOMAIN,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
