//! The raw libzmq baseline: the smallest single-threaded ROUTER loop that
//! serves the benchmark's traffic. It acknowledges IDs, keeps topic ->
//! subscribers, and forwards PUT as MESSAGE with the sender stamp mc0d
//! would add (`--stamp`); nothing else (no validation, no heartbeats, no
//! expiry, no limits). Its figures are what libzmq and CURVE allow on this
//! machine for the protocol's work; mc0d is reported as a ratio of them.
//!
//! It blocks instead of dropping when a subscriber's queue is full
//! (ZMQ_ROUTER_MANDATORY), so it never loses a delivery either.

use super::sockets;
use crate::Result;
use mc0::log::Level;
use mc0::protocol::{SENDER, SENDER_KEY};
use mc0d::auth::zap::{ZapHandler, ZAP_DOMAIN};
use mc0d::logger::Logger;
use std::collections::HashMap;

/// The header the raw loop names each MESSAGE's sender with, as mc0d does
/// in the mode being compared (see `mc0-bench --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// None (mc0d without CURVE, or before it stamped).
    None,
    /// `SENDER-KEY`, the publisher's Z85 key (mc0d in open mode): read from
    /// the `User-Id` a ZAP handler gives each connection, as in mc0d.
    SenderKey,
    /// `SENDER`, the publisher's identity (mc0d with an allowlist listing
    /// each key under its identity): the routing id's first word.
    Sender,
}

impl Stamp {
    pub fn as_str(self) -> &'static str {
        match self {
            Stamp::None => "none",
            Stamp::SenderKey => "sender-key",
            Stamp::Sender => "sender",
        }
    }
}

impl std::str::FromStr for Stamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Stamp> {
        [Stamp::None, Stamp::SenderKey, Stamp::Sender]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("--stamp: {s:?} is not none, sender-key or sender"))
    }
}

pub struct RawOptions {
    pub bind: String,
    pub port: u16,
    pub private_key: Option<std::path::PathBuf>,
    pub stamp: Stamp,
    /// Test hook: silently drop every K-th delivery, to prove the loss
    /// counting in the load side works.
    pub drop_every: Option<u64>,
}

pub fn serve(opts: &RawOptions) -> Result<()> {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::ROUTER).map_err(|e| format!("socket: {e}"))?;
    let e = |what: &str, err: zmq::Error| format!("{what}: {err}");
    sock.set_linger(0).map_err(|x| e("linger", x))?;
    // Kept until the loop ends (it never does: the process is killed).
    let mut _zap = None;
    if let Some(file) = &opts.private_key {
        let secret = mc0::keys::read_key_file(file).map_err(|e| e.to_string())?;
        sock.set_curve_server(true).map_err(|x| e("curve server", x))?;
        sock.set_curve_secretkey(&secret).map_err(|x| e("curve secret key", x))?;
        if opts.stamp == Stamp::SenderKey {
            // mc0d's own handler, admitting every key with its Z85 text as
            // User-Id (open mode).
            let zap = ZapHandler::start(&ctx, None, Logger::new(Level::Error)).map_err(|e| e.to_string())?;
            zap.self_test(&ctx).map_err(|e| e.to_string())?;
            sock.set_zap_domain(ZAP_DOMAIN).map_err(|x| e("zap domain", x))?;
            _zap = Some(zap);
        }
    } else if opts.stamp == Stamp::SenderKey {
        return Err("--stamp sender-key needs CURVE: without it there is no key".into());
    }
    sock.set_router_mandatory(true).map_err(|x| e("router mandatory", x))?;
    sock.bind(&format!("tcp://{}:{}", opts.bind, opts.port)).map_err(|x| e("bind", x))?;

    let mut subscribers: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut topics_of: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut frames: Vec<zmq::Message> = Vec::new();
    let mut deliveries: u64 = 0;
    let mut stamp = Vec::new();
    loop {
        let n = sockets::recv(&sock, &mut frames, 0).map_err(|x| e("recv", x))?;
        // [routing-id, "", VERB, key, value, ..., "", body...]
        if n < 3 || !frames[1].is_empty() {
            continue;
        }
        stamp.clear();
        if &frames[2][..] == b"PUT" {
            match opts.stamp {
                Stamp::None => {}
                // Metadata comes with the frames read off the wire.
                Stamp::SenderKey => stamp.extend_from_slice(frames[1].gets("User-Id").unwrap_or_default().as_bytes()),
                Stamp::Sender => stamp.extend(frames[0].iter().take_while(|b| **b != b' ')),
            }
        }
        let stamp_header = match opts.stamp {
            Stamp::None => None,
            Stamp::SenderKey => Some(SENDER_KEY.as_bytes()),
            Stamp::Sender => Some(SENDER.as_bytes()),
        };
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
                            if let Some(header) = stamp_header {
                                sock.send(header, zmq::SNDMORE)?;
                                sock.send(&stamp[..], zmq::SNDMORE)?;
                            }
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
            let _ = sockets::send(&sock, &[rid, b"", b"OK", b"ID", &frames[id][..]], 0);
        }
    }
}
