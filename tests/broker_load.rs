//! Load shapes: a thundering herd of CURVE clients, a subscriber that
//! never reads while another one does, and a burst larger than libzmq's
//! queue to a client that reads late.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Client, Mc0d, Mc0dOptions, WAIT};
use mc0::keys::KeyPair;
use mc0::protocol::{Command, Limits, Reply};

#[test]
fn two_thousand_curve_clients_connecting_at_once_all_get_ok() {
    const CLIENTS: usize = 2000;
    // libzmq caps a context at 1023 sockets (ZMQ_MAX_SOCKETS, which the zmq
    // crate cannot set), so the clients are spread over a few contexts, one
    // per thread.
    const THREADS: usize = 4;
    let limit = common::raise_fd_limit();
    assert!(limit >= 3 * CLIENTS as u64, "need about {} open files, the hard limit is {limit}", 3 * CLIENTS);
    let broker = Mc0d::start_args(&["--status-interval", "1"]);
    let server = broker.server_public.unwrap();
    let endpoint = broker.endpoint();
    let barrier = Arc::new(Barrier::new(THREADS));
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (barrier, endpoint) = (barrier.clone(), endpoint.clone());
            std::thread::spawn(move || {
                let ctx = zmq::Context::new();
                let pair = KeyPair::generate().unwrap();
                let sockets: Vec<zmq::Socket> = (0..CLIENTS / THREADS)
                    .map(|_| {
                        let s = ctx.socket(zmq::DEALER).unwrap();
                        s.set_linger(0).unwrap();
                        s.set_curve_serverkey(&server).unwrap();
                        s.set_curve_publickey(&pair.public).unwrap();
                        s.set_curve_secretkey(&pair.secret).unwrap();
                        s
                    })
                    .collect();
                barrier.wait();
                for (i, s) in sockets.iter().enumerate() {
                    s.connect(&endpoint).unwrap();
                    let id = format!("{t}-{i}");
                    let cmd = Command::Connect { version: b"0.2", ttl_ms: 60_000, id: Some(id.as_bytes()) };
                    // The DEALER queues it until the connection and CURVE
                    // handshake are up.
                    s.send_multipart(cmd.to_frames(), zmq::DONTWAIT).expect("queue CONNECT");
                }
                let mut pending: Vec<bool> = vec![true; sockets.len()];
                let mut left = sockets.len();
                while left > 0 && Instant::now() < deadline {
                    let mut items: Vec<zmq::PollItem> = sockets.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
                    zmq::poll(&mut items, 200).unwrap();
                    let ready: Vec<usize> = (0..items.len()).filter(|&i| items[i].is_readable()).collect();
                    drop(items);
                    for i in ready {
                        while let Ok(frames) = sockets[i].recv_multipart(zmq::DONTWAIT) {
                            match Reply::parse(&frames, &Limits::default()) {
                                Ok(Reply::Ok { id }) => {
                                    assert_eq!(id, format!("{t}-{i}").as_bytes());
                                    if std::mem::take(&mut pending[i]) {
                                        left -= 1;
                                    }
                                }
                                Ok(Reply::Noop) => {}
                                other => panic!("client {t}-{i}: unexpected {other:?}"),
                            }
                        }
                    }
                }
                sockets.len() - left
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().expect("client thread")).sum();
    assert_eq!(ok, CLIENTS, "clients acknowledged within 60 s; broker log tail:\n{}", tail(&broker.log.text()));
    let line = broker.log.wait_for(WAIT, |l| l.contains(&format!("clients={CLIENTS} ")));
    assert!(line.is_some(), "status line counts every client; log tail:\n{}", tail(&broker.log.text()));
}

/// A client subscribed to `topic` that holds as little as possible on its
/// side (tiny kernel buffer, tiny libzmq queue), so that the broker's queue
/// to it fills as soon as it does not read.
fn reading_late(broker: &Mc0d, ctx: &zmq::Context, id: &[u8], topic: &[u8]) -> Client {
    let client = Client::connect_with(ctx, &broker.endpoint(), broker.server_public.as_ref(), Some(id), |s| {
        s.set_rcvhwm(1).unwrap();
        s.set_rcvbuf(4096).unwrap();
    });
    client.handshake(60_000);
    client.call(&Command::Sub { id: Some(b"s"), queue: None, compact: false, topics: vec![topic] });
    client
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn a_subscriber_that_never_reads_does_not_block_the_others_and_drops_are_counted() {
    const MESSAGES: usize = 400;
    let mut broker = Mc0d::start_with(Mc0dOptions {
        // Room for 10 messages in libzmq and 4 of these in mc0d's buffer.
        args: ["--sndhwm", "10", "--client-buffer", "262144", "--status-interval", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    });
    let ctx = zmq::Context::new();
    let _stuck = reading_late(&broker, &ctx, b"stuck", b"flood");
    let reader = broker.client(&ctx);
    reader.handshake(60_000);
    reader.call(&Command::Sub { id: Some(b"s"), queue: None, compact: false, topics: vec![b"flood"] });
    let publisher = broker.client(&ctx);
    publisher.handshake(60_000);

    // Each message must reach the reader before the next is published, so
    // the reader never has more than one in flight (with SNDHWM 10 a burst
    // could overflow its queue too) while the stuck queue overflows.
    let body = vec![0x5au8; 64 * 1024];
    for i in 0..MESSAGES {
        let n = i.to_string();
        let cmd = Command::Put { topic: b"flood", headers: vec![(b"X-N", n.as_bytes())], id: None, body: vec![&body] };
        publisher.send_command(&cmd);
        let m = reader.expect_message();
        assert_eq!(m.headers, vec![(b"X-N".to_vec(), n.into_bytes())], "in order, none lost");
        assert_eq!(m.body, vec![body.clone()]);
    }
    publisher.call(&Command::Noop { id: Some(b"done") });

    let warned = broker.log.wait_for(WAIT, |l| l.contains("dropped a message to \"stuck\""));
    assert!(warned.is_some(), "drops are logged; log:\n{}", tail(&broker.log.text()));
    let status = broker.stop_with(libc::SIGTERM, Duration::from_secs(10)).expect("stops");
    assert!(status.success());
    let last = broker.log.wait_for(WAIT, |l| l.contains("stopping:")).expect("final status line");
    let count = |name: &str| -> u64 {
        let field = last.split_whitespace().find_map(|f| f.strip_prefix(name)).expect(name);
        field.parse().unwrap_or_else(|_| panic!("{name}{field}"))
    };
    let (drops, full) = (count("drops="), count("full_drops="));
    assert!(drops > 0 && drops < MESSAGES as u64, "{last}");
    assert_eq!(full, drops, "every drop was the stuck client's full buffer: {last}");
}

#[test]
fn a_burst_beyond_the_sndhwm_waits_in_the_client_buffer_and_arrives_in_order() {
    // 3,000 messages to a client that reads nothing until they are all
    // published: libzmq takes 100 (--sndhwm), mc0d's buffer for the client
    // the rest, and the OK of the publisher's final NOOP proves the broker
    // has handled every PUT before the reader starts.
    const MESSAGES: usize = 3000;
    let mut broker = Mc0d::start_args(&["--sndhwm", "100", "--status-interval", "1"]);
    let ctx = zmq::Context::new();
    let slow = reading_late(&broker, &ctx, b"slow", b"burst");
    let publisher = broker.client(&ctx);
    publisher.handshake(60_000);
    let body = vec![0x5au8; 1024];
    for i in 0..MESSAGES {
        let n = i.to_string();
        let put = Command::Put { topic: b"burst", headers: vec![(b"X-N", n.as_bytes())], id: None, body: vec![&body] };
        publisher.send_command(&put);
    }
    publisher.call(&Command::Noop { id: Some(b"all handled") });
    let buffered = broker.log.wait_for(WAIT, |l| l.contains("status:") && !l.contains("buffered=0 "));
    assert!(buffered.is_some(), "the burst was never buffered:\n{}", tail(&broker.log.text()));
    for i in 0..MESSAGES {
        let m = slow.expect_message();
        assert_eq!(m.headers, vec![(b"X-N".to_vec(), i.to_string().into_bytes())], "in order, none lost");
    }
    let status = broker.stop_with(libc::SIGTERM, Duration::from_secs(10)).expect("stops");
    assert!(status.success());
    let last = broker.log.wait_for(WAIT, |l| l.contains("stopping:")).expect("final status line");
    assert!(last.contains(" buffered=0 ") && last.contains(" drops=0 "), "{last}");
}
