//! The raw libzmq baseline: the smallest single-threaded ROUTER loop that
//! serves the benchmark's traffic. It acknowledges IDs, keeps topic ->
//! subscribers, and forwards PUT as MESSAGE; nothing else (no validation,
//! no heartbeats, no expiry, no limits). Its figures are what libzmq and
//! CURVE allow on this machine; mc0d is reported as a ratio of them.
//!
//! It blocks instead of dropping when a subscriber's queue is full
//! (ZMQ_ROUTER_MANDATORY), so it never loses a delivery either.

use super::util::{self, Ctx, Result, ZMQ_ROUTER};
use std::collections::HashMap;

pub struct RawOptions {
    pub bind: String,
    pub port: u16,
    pub private_key: Option<std::path::PathBuf>,
    /// Test hook: silently drop every K-th delivery, to prove the loss
    /// counting in the load side works.
    pub drop_every: Option<u64>,
}

pub fn serve(opts: &RawOptions) -> Result<()> {
    let ctx = Ctx::new(1, 64)?;
    let sock = ctx.socket(ZMQ_ROUTER)?;
    let e = |what: &str, err: zmq::Error| format!("{what}: {err}");
    if let Some(file) = &opts.private_key {
        let secret = mc0::keys::read_key_file(file).map_err(|e| e.to_string())?;
        sock.set_curve_server(true).map_err(|x| e("curve server", x))?;
        sock.set_curve_secretkey(&secret).map_err(|x| e("curve secret key", x))?;
    }
    sock.set_router_mandatory(true).map_err(|x| e("router mandatory", x))?;
    sock.bind(&format!("tcp://{}:{}", opts.bind, opts.port)).map_err(|x| e("bind", x))?;

    let mut subscribers: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut topics_of: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut frames: Vec<zmq::Message> = Vec::new();
    let mut deliveries: u64 = 0;
    loop {
        let n = util::recv(&sock, &mut frames, 0).map_err(|x| e("recv", x))?;
        // [routing-id, "", VERB, key, value, ..., "", body...]
        if n < 3 || !frames[1].is_empty() {
            continue;
        }
        let (mut id, mut topic, mut body) = (None, None, n);
        let mut i = 3;
        while i < n {
            if frames[i].is_empty() {
                body = i + 1;
                break;
            }
            if i + 1 < n {
                match &frames[i][..] {
                    b"ID" => id = Some(i + 1),
                    b"TOPIC" => topic = Some(i + 1),
                    _ => {}
                }
            }
            i += 2;
        }
        let rid = &frames[0][..];
        match &frames[2][..] {
            b"PUT" => {
                if let Some(subs) = topic.and_then(|t| subscribers.get(&frames[t][..])) {
                    let header_end = body.saturating_sub(1).min(n);
                    for sub in subs {
                        deliveries += 1;
                        if opts.drop_every.is_some_and(|k| deliveries % k == 0) {
                            continue;
                        }
                        // A vanished peer (EHOSTUNREACH) is simply skipped.
                        let _ = (|| -> zmq::Result<()> {
                            sock.send(&sub[..], zmq::SNDMORE)?;
                            sock.send(&b""[..], zmq::SNDMORE)?;
                            sock.send(&b"MESSAGE"[..], zmq::SNDMORE)?;
                            let mut k = 3;
                            while k + 1 < header_end {
                                if &frames[k][..] != b"ID" {
                                    sock.send(&frames[k][..], zmq::SNDMORE)?;
                                    sock.send(&frames[k + 1][..], zmq::SNDMORE)?;
                                }
                                k += 2;
                            }
                            sock.send(&b""[..], if body < n { zmq::SNDMORE } else { 0 })?;
                            for (b, frame) in frames[..n].iter().enumerate().skip(body) {
                                sock.send(&frame[..], if b + 1 < n { zmq::SNDMORE } else { 0 })?;
                            }
                            Ok(())
                        })();
                    }
                }
            }
            b"SUB" => {
                for t in frames[..n].iter().skip(body) {
                    let list = subscribers.entry(t.to_vec()).or_default();
                    if !list.iter().any(|r| r == rid) {
                        list.push(rid.to_vec());
                        topics_of.entry(rid.to_vec()).or_default().push(t.to_vec());
                    }
                }
            }
            b"UNSUB" => {
                for t in frames[..n].iter().skip(body) {
                    if let Some(list) = subscribers.get_mut(&t[..]) {
                        list.retain(|r| r != rid);
                    }
                }
            }
            b"DISCONNECT" => {
                for t in topics_of.remove(rid).unwrap_or_default() {
                    if let Some(list) = subscribers.get_mut(&t) {
                        list.retain(|r| r != rid);
                    }
                }
            }
            _ => {}
        }
        if let Some(id) = id {
            let _ = util::send(&sock, &[rid, b"", b"OK", b"ID", &frames[id][..]], 0);
        }
    }
}
