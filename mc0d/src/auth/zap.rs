//! The ZAP handler (ZeroMQ Authentication Protocol, RFC 27): libzmq asks it,
//! during every CURVE handshake on the broker's context, whether the
//! client's public key may connect.
//!
//! It runs on its own thread with its own REP socket bound to
//! `inproc://zeromq.zap.01` on the broker's context (the ROUTER keeps its
//! single owner thread). It is bound, and has answered a self-test request,
//! before the ROUTER binds, so no client can ever be handshaken while no
//! handler is listening. An admitted key gets status 200 with its Z85 text
//! as `User-Id`, which libzmq attaches to every message from that
//! connection: that is how the broker knows each message's key (to tie a
//! session to it, and for the `SENDER-KEY` stamp). With an allowlist only
//! listed keys are admitted; anything else gets 400 and the client's
//! handshake fails. Without one (open mode) every CURVE key is admitted.
//!
//! What the handler cannot do: see the routing id the client asks for.
//! libzmq's request carries the *server* socket's own `ZMQ_ROUTING_ID` in
//! its identity frame (zap_client.cpp copies `options.routing_id`), and reads
//! the client's routing id only after sending the request; a key cannot be
//! refused here for the routing id it will use. The broker keeps routing ids
//! with their sessions' keys instead (see the broker's module doc).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::allowlist::Allowlist;
use crate::error::BrokerError;
use crate::logger::{Logger, RateLimit};
use crate::metrics::snapshot::{KeyRefusal, KeyRefusals};
use mc0::keys::{key_to_z85, Key};
use mc0::log::Level;

/// Where libzmq sends ZAP requests (fixed by RFC 27).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The ZAP domain the broker's ROUTER declares; requests for any other
/// domain are refused.
pub const ZAP_DOMAIN: &str = "mc0";

/// The allowlist as both the broker loop (which reloads it) and the ZAP
/// thread (which reads it on every handshake) see it.
pub type SharedAllowlist = Arc<RwLock<Arc<Allowlist>>>;

const SELF_TEST_DOMAIN: &str = "mc0-self-test";
const POLL_MS: i64 = 200;
/// A refused key is reported at most this often (with a count of the
/// attempts in between): a revoked node keeps reconnecting several times a
/// second.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Refused keys tracked for that; past it, one line per second overall.
const MAX_TRACKED: usize = 4096;

/// The running handler thread; stopped and joined on drop.
pub struct ZapHandler {
    /// Refusals by reason, for the metrics.
    refusals: Arc<KeyRefusals>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandler {
    /// Binds the handler socket on `ctx` and starts serving: admitting the
    /// keys of `keys`, or every CURVE key when there is no allowlist. Fails
    /// if something else on this context already handles ZAP.
    pub fn start(ctx: &zmq::Context, keys: Option<SharedAllowlist>, log: Logger) -> Result<ZapHandler, BrokerError> {
        let err = |what: &str, e: zmq::Error| BrokerError(format!("ZAP handler: cannot {what}: {e}"));
        let socket = ctx.socket(zmq::REP).map_err(|e| err("create its socket", e))?;
        socket.set_linger(0).map_err(|e| err("set ZMQ_LINGER", e))?;
        socket.bind(ZAP_ENDPOINT).map_err(|e| err(&format!("bind {ZAP_ENDPOINT}"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let refusals = Arc::new(KeyRefusals::default());
        let thread = std::thread::Builder::new()
            .name("mc0d-zap".into())
            .spawn({
                let refusals = refusals.clone();
                move || serve(socket, keys.as_ref(), &log, &flag, &refusals)
            })
            .map_err(|e| BrokerError(format!("ZAP handler: cannot start its thread: {e}")))?;
        Ok(ZapHandler { refusals, stop, thread: Some(thread) })
    }

    /// Sends the handler one request the way libzmq would and checks the
    /// answer, so the broker never binds while authentication is not
    /// actually being served.
    pub fn self_test(&self, ctx: &zmq::Context) -> Result<(), BrokerError> {
        let fail = |why: String| BrokerError(format!("ZAP handler self-test failed: {why}"));
        let req = ctx.socket(zmq::REQ).map_err(|e| fail(e.to_string()))?;
        req.set_linger(0).map_err(|e| fail(e.to_string()))?;
        req.connect(ZAP_ENDPOINT).map_err(|e| fail(e.to_string()))?;
        let key = [0u8; 32];
        let request: [&[u8]; 7] = [b"1.0", b"self-test", SELF_TEST_DOMAIN.as_bytes(), b"", b"", b"CURVE", &key];
        req.send_multipart(request, 0).map_err(|e| fail(e.to_string()))?;
        match req.poll(zmq::POLLIN, 5000) {
            Ok(n) if n > 0 => {}
            _ => return Err(fail("no answer within 5 s".into())),
        }
        let reply = req.recv_multipart(0).map_err(|e| fail(e.to_string()))?;
        match reply.as_slice() {
            [v, id, status, ..] if v == b"1.0" && id == b"self-test" && status == b"400" => Ok(()),
            other => Err(fail(format!("unexpected answer {other:?}"))),
        }
    }

    /// False once the thread has ended (it only ends when told to, or on a
    /// socket failure, which the broker treats as fatal).
    /// Its refusals by reason, counted as they happen.
    pub fn refusals(&self) -> Arc<KeyRefusals> {
        self.refusals.clone()
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Status texts of the refusals counted by reason.
const NOT_AUTHORIZED: &str = "key not authorized";
const CURVE_REQUIRED: &str = "CURVE required";

fn serve(socket: zmq::Socket, keys: Option<&SharedAllowlist>, log: &Logger, stop: &AtomicBool, refusals: &KeyRefusals) {
    let mut reports = Reports::default();
    while !stop.load(Ordering::SeqCst) {
        match socket.poll(zmq::POLLIN, POLL_MS) {
            Ok(0) | Err(zmq::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log.log(Level::Error, format_args!("ZAP handler: poll failed: {e}"));
                return;
            }
        }
        let request = match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(r) => r,
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
            Err(e) => {
                log.log(Level::Error, format_args!("ZAP handler: receive failed: {e}"));
                return;
            }
        };
        let list = keys.map(|k| k.read().unwrap_or_else(|p| p.into_inner()).clone());
        let reply = answer(&request, list.as_deref(), log, &mut reports, Instant::now());
        if reply[2] != b"200" && request.get(2).is_none_or(|d| d != SELF_TEST_DOMAIN.as_bytes()) {
            let text = reply[3].as_slice();
            refusals.count(if text == NOT_AUTHORIZED.as_bytes() {
                KeyRefusal::NotAuthorized
            } else if text == CURVE_REQUIRED.as_bytes() {
                KeyRefusal::NotCurve
            } else {
                KeyRefusal::BadRequest
            });
        }
        if let Err(e) = socket.send_multipart(reply, 0) {
            // A REP that failed to answer cannot take the next request.
            log.log(Level::Error, format_args!("ZAP handler: send failed: {e}"));
            return;
        }
    }
}

/// The reply (RFC 27: version, request id, status code, status text,
/// user id, metadata) to one request; `list: None` admits every key.
fn answer(
    request: &[Vec<u8>],
    list: Option<&Allowlist>,
    log: &Logger,
    reports: &mut Reports,
    now: Instant,
) -> Vec<Vec<u8>> {
    let reply = |id: &[u8], code: &str, text: &str, user: &str| {
        vec![b"1.0".to_vec(), id.to_vec(), code.as_bytes().to_vec(), text.as_bytes().to_vec(), user.into(), vec![]]
    };
    let [version, id, domain, address, _identity, mechanism, credentials @ ..] = request else {
        let id = request.get(1).map(Vec::as_slice).unwrap_or_default();
        log.log(Level::Warn, format_args!("ZAP handler: malformed request ({} frames)", request.len()));
        return reply(id, "500", "malformed ZAP request", "");
    };
    if version != b"1.0" {
        return reply(id, "500", "unsupported ZAP version", "");
    }
    let address = String::from_utf8_lossy(address);
    if domain != ZAP_DOMAIN.as_bytes() {
        if domain != SELF_TEST_DOMAIN.as_bytes() {
            log.log(
                Level::Warn,
                format_args!("refused a connection from {address}: ZAP domain \"{}\"", domain.escape_ascii()),
            );
        }
        return reply(id, "400", "unknown ZAP domain", "");
    }
    let key: Option<Key> = match (mechanism.as_slice(), credentials) {
        (b"CURVE", [key]) => key.as_slice().try_into().ok(),
        _ => None,
    };
    let Some(key) = key else {
        log.log(
            Level::Warn,
            format_args!(
                "refused a connection from {address}: mechanism \"{}\" (only CURVE clients can be authorized)",
                mechanism.escape_ascii()
            ),
        );
        return reply(id, "400", CURVE_REQUIRED, "");
    };
    let z85 = key_to_z85(&key);
    let Some(list) = list else {
        log.log(Level::Debug, format_args!("admitted key {z85} from {address} (no allowlist)"));
        return reply(id, "200", "OK", &z85);
    };
    if list.contains(&z85) {
        log.log(Level::Debug, format_args!("admitted key {} from {address}", list.describe(&z85)));
        return reply(id, "200", "OK", &z85);
    }
    if let Some(more) = reports.allow(&key, now) {
        let more = if more > 0 { format!(" ({more} more attempts since the last report)") } else { String::new() };
        log.log(Level::Warn, format_args!("refused key {z85} from {address}: not in the authorized keys{more}"));
    }
    reply(id, "400", NOT_AUTHORIZED, "")
}

/// Rate limit for refusal lines: one per key per [`REPORT_EVERY`], so every
/// refused key shows up at least once without a retrying node flooding the
/// log.
#[derive(Default)]
struct Reports {
    per_key: HashMap<Key, (Instant, u64)>,
    overflow: Option<RateLimit>,
}

impl Reports {
    fn allow(&mut self, key: &Key, now: Instant) -> Option<u64> {
        if let Some((last, suppressed)) = self.per_key.get_mut(key) {
            if now.duration_since(*last) < REPORT_EVERY {
                *suppressed += 1;
                return None;
            }
            *last = now;
            return Some(std::mem::take(suppressed));
        }
        if self.per_key.len() >= MAX_TRACKED {
            self.per_key.retain(|_, (last, _)| now.duration_since(*last) < REPORT_EVERY);
        }
        if self.per_key.len() >= MAX_TRACKED {
            return self.overflow.get_or_insert_with(|| RateLimit::new(Duration::from_secs(1))).allow(now);
        }
        self.per_key.insert(*key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::allowlist::Role;
    use mc0::keys::KeyPair;

    fn request(domain: &str, mechanism: &str, key: &[u8]) -> Vec<Vec<u8>> {
        [b"1.0".as_slice(), b"7", domain.as_bytes(), b"10.0.0.1", b"", mechanism.as_bytes(), key]
            .iter()
            .map(|f| f.to_vec())
            .collect()
    }

    #[test]
    fn answers_by_key_domain_and_mechanism() {
        let listed = KeyPair::generate().unwrap().public;
        let other = KeyPair::generate().unwrap().public;
        let list = Allowlist::from_keys([(&listed, Some("n1"), Role::Any)]).unwrap();
        let log = Logger::new(Level::Error);
        let mut r = Reports::default();
        let now = Instant::now();
        let ok = answer(&request(ZAP_DOMAIN, "CURVE", &listed), Some(&list), &log, &mut r, now);
        assert_eq!(ok[1], b"7");
        assert_eq!(ok[2], b"200");
        assert_eq!(ok[4], key_to_z85(&listed).into_bytes());
        for req in [
            request(ZAP_DOMAIN, "CURVE", &other),
            request("elsewhere", "CURVE", &listed),
            request(ZAP_DOMAIN, "NULL", b""),
            request(ZAP_DOMAIN, "CURVE", &listed[..31]),
        ] {
            let no = answer(&req, Some(&list), &log, &mut r, now);
            assert_eq!((no[2].as_slice(), no[4].as_slice()), (&b"400"[..], &b""[..]), "{req:?}");
        }
        let short = answer(&[b"1.0".to_vec(), b"9".to_vec()], Some(&list), &log, &mut r, now);
        assert_eq!((short[1].as_slice(), short[2].as_slice()), (&b"9"[..], &b"500"[..]));
    }

    #[test]
    fn without_an_allowlist_every_curve_key_is_admitted_with_its_user_id() {
        let log = Logger::new(Level::Error);
        let mut r = Reports::default();
        let now = Instant::now();
        let any = KeyPair::generate().unwrap().public;
        let ok = answer(&request(ZAP_DOMAIN, "CURVE", &any), None, &log, &mut r, now);
        assert_eq!((ok[2].as_slice(), ok[4].as_slice()), (&b"200"[..], key_to_z85(&any).as_bytes()));
        for req in [request("elsewhere", "CURVE", &any), request(ZAP_DOMAIN, "NULL", b"")] {
            assert_eq!(answer(&req, None, &log, &mut r, now)[2], b"400", "{req:?}");
        }
    }

    #[test]
    fn refusals_are_reported_once_per_key_per_period() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let t0 = Instant::now();
        let mut r = Reports::default();
        assert_eq!(r.allow(&a, t0), Some(0));
        assert_eq!(r.allow(&b, t0), Some(0), "another key is reported at once");
        assert_eq!(r.allow(&a, t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(&a, t0 + Duration::from_secs(2)), None);
        assert_eq!(r.allow(&a, t0 + REPORT_EVERY + Duration::from_secs(1)), Some(2));
    }
}
