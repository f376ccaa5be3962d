//! The libzmq property the broker's fail-closed design rests on (see the
//! crate doc, "Authorization"): with `ZMQ_ZAP_ENFORCE_DOMAIN`
//! ([`mc0d::enforce_zap`]) a CURVE server whose ZAP handler is missing fails
//! every handshake, where libzmq's default would admit the client.

use std::time::Duration;

use mc0::keys::KeyPair;

/// Bound for an event that must come.
const WAIT: Duration = Duration::from_secs(10);
/// How long the server is watched for a message it must not get.
const SILENCE: Duration = Duration::from_millis(1500);

/// The client's next handshake event, or None after `timeout`.
fn next_handshake(monitor: &zmq::Socket, timeout: Duration) -> Option<zmq::SocketEvent> {
    if monitor.poll(zmq::POLLIN, timeout.as_millis() as i64).ok()? == 0 {
        return None;
    }
    let frames = monitor.recv_multipart(0).ok()?;
    let head = frames.first().filter(|f| f.len() >= 6)?;
    Some(zmq::SocketEvent::from_raw(u16::from_le_bytes([head[0], head[1]])))
}

#[test]
fn without_a_zap_handler_enforcement_refuses_instead_of_admitting() {
    for enforce in [false, true] {
        let ctx = zmq::Context::new();
        let server = KeyPair::generate().unwrap();
        let mut router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.set_curve_server(true).unwrap();
        router.set_curve_secretkey(&server.secret).unwrap();
        router.set_zap_domain("mc0").unwrap();
        if enforce {
            mc0d::enforce_zap(&mut router).expect("libzmq accepts ZMQ_ZAP_ENFORCE_DOMAIN");
        }
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();

        let client = ctx.socket(zmq::DEALER).unwrap();
        client.set_linger(0).unwrap();
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw();
        client.monitor("inproc://zap-enforce-monitor", i32::from(events)).unwrap();
        let monitor = ctx.socket(zmq::PAIR).unwrap();
        monitor.set_linger(0).unwrap();
        monitor.connect("inproc://zap-enforce-monitor").unwrap();
        let pair = KeyPair::generate().unwrap();
        client.set_curve_serverkey(&server.public).unwrap();
        client.set_curve_publickey(&pair.public).unwrap();
        client.set_curve_secretkey(&pair.secret).unwrap();
        client.connect(&endpoint).unwrap();

        let event = next_handshake(&monitor, WAIT);
        client.send("hello", 0).unwrap();
        let got = router.poll(zmq::POLLIN, SILENCE.as_millis() as i64).unwrap() > 0;
        if enforce {
            assert_eq!(event, Some(zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL));
            assert!(!got, "no message passes without a ZAP handler");
        } else {
            // The default this guards against.
            assert_eq!(event, Some(zmq::SocketEvent::HANDSHAKE_SUCCEEDED));
            assert!(got);
        }
    }
}
