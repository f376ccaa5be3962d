//! `mc0_config_*` and `mc0_connector_*`.

use std::ops::Deref;
use std::os::raw::c_char;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::message::mc0_message;
use super::{arg_str, boundary, free_box, guard, invalid, mc0_status, new_c_string, timeout_from_ms};
use crate::connector::logging::clog;
use crate::connector::{Config, Connector, Error};
use crate::log::Level;

/// Connector settings being built (opaque). Not thread-safe: use one config
/// from one thread at a time.
pub struct mc0_config {
    inner: Config,
}

/// A connection to the broker (opaque). Thread-safe: any number of threads
/// may call mc0_connector_* on it concurrently (one blocked in receive while
/// others publish). Calls that share the handle take `const mc0_connector *`
/// (the connector's state changes, but only behind its own locks, so they
/// never conflict); only mc0_connector_free, which ends its life, takes a
/// non-const pointer, and may be called while other calls are still in
/// progress (see there).
pub struct mc0_connector {
    inner: Connector,
    /// Calls in progress on this handle: mc0_connector_free waits for them
    /// to leave before releasing the memory they use.
    calls: Mutex<usize>,
    idle: Condvar,
}

/// Longest mc0_connector_free waits for calls still in progress once
/// close has woken them (they return within close_timeout unless a log
/// callback blocks them); past it the handle is leaked, not freed under them.
const FREE_WAIT: Duration = Duration::from_secs(10);

/// One call in progress on a connector, counted until it is dropped (also
/// when the call panics).
struct Call<'a>(&'a mc0_connector);

impl Deref for Call<'_> {
    type Target = Connector;
    fn deref(&self) -> &Connector {
        &self.0.inner
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let mut calls = self.0.calls.lock().unwrap_or_else(|e| e.into_inner());
        *calls -= 1;
        if *calls == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl mc0_connector {
    fn new(inner: Connector) -> mc0_connector {
        mc0_connector { inner, calls: Mutex::new(0), idle: Condvar::new() }
    }

    fn enter(&self) -> Call<'_> {
        *self.calls.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Call(self)
    }

    /// Waits, at most `bound`, until no call is in progress.
    fn wait_idle(&self, bound: Duration) -> bool {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let (calls, _) = self.idle.wait_timeout_while(calls, bound, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
        *calls == 0
    }
}

unsafe fn config_ref<'a>(cfg: *const mc0_config) -> Result<&'a Config, Error> {
    cfg.as_ref().map(|c| &c.inner).ok_or_else(|| invalid("config is NULL"))
}

/// The connector behind `c`, counted as in use until the result is dropped.
unsafe fn connector_ref<'a>(c: *const mc0_connector) -> Result<Call<'a>, Error> {
    c.as_ref().map(mc0_connector::enter).ok_or_else(|| invalid("connector is NULL"))
}

/// A slice from a C pointer and length; NULL is fine for length 0.
unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        Ok(&[])
    } else if p.is_null() {
        Err(invalid(format!("{what} is NULL but its length is {len}")))
    } else {
        Ok(std::slice::from_raw_parts(p, len))
    }
}

// ---- config ----

/// A new config with every key at its default (see docs/CONNECTOR.md).
/// Free it with mc0_config_free. Returns NULL only if memory is exhausted.
#[no_mangle]
pub extern "C" fn mc0_config_new() -> *mut mc0_config {
    boundary(|| Ok(Box::into_raw(Box::new(mc0_config { inner: Config::new() }))))
}

/// Sets one key, named as in MCollective's config without the
/// "plugin.zeromq." prefix (the prefix is tolerated), e.g. "broker.host",
/// "heartbeat", "pool.1.host". key and value are NUL-terminated UTF-8, copied.
/// Errors: MC0_ERR_INVALID_ARGUMENT (NULL / not UTF-8), MC0_ERR_CONFIG
/// (unknown key or bad value; the message names the key). Files named by
/// key settings are read by mc0_connector_new, not here.
#[no_mangle]
pub unsafe extern "C" fn mc0_config_set(cfg: *mut mc0_config, key: *const c_char, value: *const c_char) -> mc0_status {
    guard(|| {
        let cfg = cfg.as_mut().ok_or_else(|| invalid("config is NULL"))?;
        let key = arg_str(key, "key")?;
        let value = arg_str(value, "value")?;
        cfg.inner.set(key, value)
    })
}

/// Frees a config. NULL is ignored. Connectors made from it are unaffected.
#[no_mangle]
pub unsafe extern "C" fn mc0_config_free(cfg: *mut mc0_config) {
    boundary(|| free_box(cfg))
}

// ---- connector ----

/// Connects to the broker and completes the CONNECT handshake, waiting at
/// most connect_timeout (default 10 s). With a pool of brokers (broker.host
/// = "a,b:6000,[::1]", or pool.size and pool.N.host/port/public_key) it
/// connects to the first that answers, each getting its share of
/// connect_timeout and a refused one left at once; if none answers the
/// error names each broker and why. Later, whenever the link to the
/// current broker dies, the connector moves to the next one (randomize:
/// each connector has its own shuffled order) and re-makes its
/// subscriptions there; see mc0_connector_stats_json. With connect_retry = true (for
/// daemons) it returns as soon as the configuration and key files are
/// valid, and the connector keeps connecting in the background with its
/// backoff, logging each failure; subscriptions wait to be made and
/// publishes are queued meanwhile. On success stores a new connector in
/// *out (free it with mc0_connector_free); on failure stores NULL.
/// The config is only read (it may be freed afterwards).
/// Errors: MC0_ERR_INVALID_ARGUMENT (NULL), MC0_ERR_CONFIG (missing
/// broker.host or key paths; names the key), MC0_ERR_KEY (key file missing or
/// malformed; names the file), MC0_ERR_RESOLVE (broker.host does not
/// resolve; at once, naming it), MC0_ERR_TIMEOUT (broker down or not holding
/// the configured broker.public_key), MC0_ERR_BROKER (CONNECT refused),
/// MC0_ERR_ZMQ. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_new(cfg: *const mc0_config, out: *mut *mut mc0_connector) -> mc0_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        *out = std::ptr::null_mut();
        let config = config_ref(cfg)?;
        let connector = Connector::connect(config)?;
        *out = Box::into_raw(Box::new(mc0_connector::new(connector)));
        Ok(())
    })
}

/// Subscribes to a topic (NUL-terminated UTF-8) and waits for the broker's
/// acknowledgement, at most connect_timeout. Topics are counted by holder:
/// subscribing to a topic already held only counts (several agents may
/// share one reply topic), and it stays subscribed until as many
/// mc0_connector_unsubscribe calls. The subscription is re-made by the
/// library after every reconnect; after MC0_ERR_TIMEOUT (link down) it is
/// still held and is made once the broker answers. With connect_retry,
/// before the first session with the broker, it returns MC0_OK at once and
/// the topic is subscribed as soon as there is one.
/// Errors: MC0_ERR_INVALID_ARGUMENT, MC0_ERR_TIMEOUT, MC0_ERR_BROKER,
/// MC0_ERR_CLOSED. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_subscribe(c: *const mc0_connector, topic: *const c_char) -> mc0_status {
    guard(|| {
        let c = connector_ref(c)?;
        c.subscribe(arg_str(topic, "topic")?)
    })
}

/// Subscribes to a topic as a consumer of its queue named queue (both
/// NUL-terminated UTF-8; the name is 1 to 255 printable ASCII bytes),
/// held and waited for like mc0_connector_subscribe (release it with
/// mc0_connector_unsubscribe). mc0d then keeps the topic's messages for
/// the queue while no consumer is connected and gives each to one of the
/// queue's consumers, round robin. Guarantee: at least once. A delivery
/// (a message with a DELIVERY header) is acknowledged when
/// mc0_connector_receive hands it out, or, with the config key
/// explicit_ack = true, by mc0_connector_ack; one not acknowledged when
/// the connector closes or loses its link is delivered again, with the
/// header REDELIVERED, to this or another consumer: a consumer must
/// tolerate duplicates. A legacy broker ignores the queue (a plain
/// subscription). Errors: as mc0_connector_subscribe, and
/// MC0_ERR_INVALID_ARGUMENT for a bad name or a topic already held the
/// other way. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_subscribe_queue(
    c: *const mc0_connector,
    topic: *const c_char,
    queue: *const c_char,
) -> mc0_status {
    guard(|| {
        let c = connector_ref(c)?;
        c.subscribe_queue(arg_str(topic, "topic")?, arg_str(queue, "queue")?)
    })
}

/// Acknowledges a queue delivery received on c by its id, the decimal
/// value of the message's DELIVERY header (mc0_message_header(m,
/// "DELIVERY", &len)): the broker forgets the message. Returns at once; an
/// acknowledgement lost with the link only means the message is delivered
/// again. Needed only with explicit_ack = true. An id c does not hold is
/// ignored by the broker. Errors: MC0_ERR_INVALID_ARGUMENT (NULL c),
/// MC0_ERR_CLOSED. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_ack(c: *const mc0_connector, delivery: u64) -> mc0_status {
    guard(|| connector_ref(c)?.ack_delivery(Some(delivery)))
}

/// Gives up one hold on a topic (see mc0_connector_subscribe); the last
/// holder's call unsubscribes and waits for the broker's acknowledgement
/// (at most connect_timeout; immediate while the link is down). A topic not
/// held is MC0_OK. Errors and
/// thread-safety as mc0_connector_subscribe.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_unsubscribe(c: *const mc0_connector, topic: *const c_char) -> mc0_status {
    guard(|| {
        let c = connector_ref(c)?;
        c.unsubscribe(arg_str(topic, "topic")?)
    })
}

/// Queues a message for a topic and returns without waiting for the broker.
/// header_names[i] (NUL-terminated, must start with "X-") goes with the
/// binary value header_values[i] of header_value_lens[i] bytes; the three
/// arrays have header_count entries and may be NULL when header_count is 0.
/// body is body_len bytes (NULL allowed when body_len is 0). Everything is
/// copied before returning.
/// Delivery: sent with an ID and kept until the broker acknowledges it.
/// While the link is down it waits (up to send_queue messages) and is sent
/// once the broker is back; one the broker refuses as "not connected" is
/// sent again; one handed to a link that then died unanswered is dropped
/// and counted, never sent twice (at most once).
/// Errors: MC0_ERR_INVALID_ARGUMENT (NULL, not UTF-8, empty or over-long
/// topic, reserved header name), MC0_ERR_QUEUE_FULL, MC0_ERR_CLOSED.
/// Thread-safe.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn mc0_connector_publish(
    c: *const mc0_connector,
    topic: *const c_char,
    header_names: *const *const c_char,
    header_values: *const *const u8,
    header_value_lens: *const usize,
    header_count: usize,
    body: *const u8,
    body_len: usize,
) -> mc0_status {
    guard(|| publish(c, topic, header_names, header_values, header_value_lens, header_count, body, body_len, 0))
}

/// mc0_connector_publish with a time-to-live of ttl_ms milliseconds (1 to
/// 2592000000, 30 days; 0: none, as mc0_connector_publish): once it has
/// passed since this call the message is never sent (dropped from the
/// send queue, e.g. while the broker is unreachable, logged and counted),
/// and it goes out with the time left in the EXPIRES-IN header, after
/// which mc0d never delivers it from a queue (legacy brokers ignore it).
/// Arguments, ownership, errors and thread-safety as mc0_connector_publish.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn mc0_connector_publish_ttl(
    c: *const mc0_connector,
    topic: *const c_char,
    header_names: *const *const c_char,
    header_values: *const *const u8,
    header_value_lens: *const usize,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    ttl_ms: u64,
) -> mc0_status {
    guard(|| publish(c, topic, header_names, header_values, header_value_lens, header_count, body, body_len, ttl_ms))
}

/// Both publish calls, inside the boundary: `ttl_ms` 0 means none.
#[allow(clippy::too_many_arguments)]
unsafe fn publish(
    c: *const mc0_connector,
    topic: *const c_char,
    header_names: *const *const c_char,
    header_values: *const *const u8,
    header_value_lens: *const usize,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    ttl_ms: u64,
) -> Result<(), Error> {
    let c = connector_ref(c)?;
    let topic = arg_str(topic, "topic")?;
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(header_count);
    if header_count > 0 {
        if header_names.is_null() || header_values.is_null() || header_value_lens.is_null() {
            return Err(invalid("header_names, header_values and header_value_lens must not be NULL"));
        }
        let names = std::slice::from_raw_parts(header_names, header_count);
        let values = std::slice::from_raw_parts(header_values, header_count);
        let lens = std::slice::from_raw_parts(header_value_lens, header_count);
        for i in 0..header_count {
            let name = arg_str(names[i], &format!("header_names[{i}]"))?;
            let value = bytes(values[i], lens[i], &format!("header_values[{i}]"))?;
            headers.push((name, value));
        }
    }
    let body = bytes(body, body_len, "body")?;
    let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
    c.publish_with_ttl(topic, &headers, body, ttl)
}

/// Waits until every message this process published on c before the call
/// has been acknowledged by the broker (or dropped, see mc0_connector_publish),
/// at most timeout_ms milliseconds (0: only what is already settled;
/// negative: no limit, until done or the connector is closed, as for
/// mc0_connector_receive; libmc0 0.1.0 treated a negative value as 0 here). Errors: MC0_ERR_INVALID_ARGUMENT,
/// MC0_ERR_TIMEOUT, MC0_ERR_CLOSED. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_flush(c: *const mc0_connector, timeout_ms: i32) -> mc0_status {
    guard(|| connector_ref(c)?.flush(timeout_from_ms(timeout_ms)))
}

/// Waits for the next message on any subscribed topic, at most timeout_ms
/// milliseconds (0: do not wait; negative: until a message arrives or the
/// connector is closed). On success stores a new message in *out (free it
/// with mc0_message_free); otherwise stores NULL.
/// Errors: MC0_ERR_INVALID_ARGUMENT, MC0_ERR_TIMEOUT, MC0_ERR_CLOSED (also
/// when another thread closes c during the wait). Thread-safe; several
/// threads may receive, each message goes to one of them.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_receive(
    c: *const mc0_connector,
    timeout_ms: i32,
    out: *mut *mut mc0_message,
) -> mc0_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        *out = std::ptr::null_mut();
        let c = connector_ref(c)?;
        let message = c.receive(timeout_from_ms(timeout_ms))?;
        *out = Box::into_raw(Box::new(mc0_message::from(message)));
        Ok(())
    })
}

/// The connector's counters, the broker in use and the last error as a JSON
/// object: `handshakes`, `reconnects`, `sent` (PUTs handed to the socket),
/// `acknowledged` and `published` (the same: publishes the broker
/// acknowledged), `publishes_dropped`, `received`, `messages_dropped`
/// (receive queue full), `expired` (publishes never sent because their
/// TTL, mc0_connector_publish_ttl, ran out in the send queue), `failovers`
/// (moves from one broker of the pool to another after its link died),
/// `broker` ("host:port" of the broker in use, or being tried while the
/// link is down), `broker_index` (its position in
/// the pool as configured, from 0), `last_error` (text or null) and
/// `last_error_at` (Unix seconds or null). Keys are only ever added. Returns
/// a new string the caller frees with mc0_string_free; NULL if c is NULL
/// (MC0_ERR_INVALID_ARGUMENT, see mc0_last_error). Also valid after close.
/// Thread-safe; never waits.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_stats_json(c: *const mc0_connector) -> *mut c_char {
    boundary(|| Ok(new_c_string(connector_ref(c)?.stats_json().to_string())))
}

/// Closes the connection: threads blocked in mc0_connector_receive return
/// MC0_ERR_CLOSED at once; queued publishes and DISCONNECT are sent and
/// acknowledged within close_timeout (default 1 s); the background thread
/// stops. Idempotent; thread-safe; later calls on c fail with MC0_ERR_CLOSED.
/// c must still be freed with mc0_connector_free.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_close(c: *const mc0_connector) -> mc0_status {
    guard(|| connector_ref(c)?.close())
}

/// Closes c if needed (as mc0_connector_close, bounded) and frees it. NULL is
/// ignored. Calls still in progress on c in other threads are woken by the
/// close (they return MC0_ERR_CLOSED) and free waits for them to leave
/// (bounded: after 10 s it logs an error and leaks c rather than free
/// memory still in use), so a binding needs no count of its own. No call
/// may start on c once free has been called.
#[no_mangle]
pub unsafe extern "C" fn mc0_connector_free(c: *mut mc0_connector) {
    boundary(|| {
        let Some(handle) = c.as_ref() else { return Ok(()) };
        let _ = handle.inner.close();
        if handle.wait_idle(FREE_WAIT) {
            drop(Box::from_raw(c));
        } else {
            clog!(
                Level::Error,
                "mc0 connector {}: calls still in progress {} after close; not freeing the handle under them",
                handle.inner.routing_id(),
                crate::connector::secs(FREE_WAIT)
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::test_util::{cs, last_error};

    #[test]
    fn config_errors_through_the_abi() {
        unsafe {
            let cfg = mc0_config_new();
            assert!(!cfg.is_null());
            assert_eq!(mc0_config_set(cfg, cs(b"broker.host").as_ptr(), cs(b"h").as_ptr()), mc0_status::MC0_OK);
            assert_eq!(mc0_config_set(cfg, cs(b"nope").as_ptr(), cs(b"1").as_ptr()), mc0_status::MC0_ERR_CONFIG);
            assert!(last_error().contains("nope"));
            assert_eq!(mc0_config_set(cfg, cs(b"heartbeat").as_ptr(), cs(b"x").as_ptr()), mc0_status::MC0_ERR_CONFIG);
            assert!(last_error().starts_with("heartbeat"));
            assert_eq!(
                mc0_config_set(std::ptr::null_mut(), cs(b"k").as_ptr(), cs(b"v").as_ptr()),
                mc0_status::MC0_ERR_INVALID_ARGUMENT
            );
            assert_eq!(mc0_config_set(cfg, std::ptr::null(), cs(b"v").as_ptr()), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            let mut out = 1 as *mut mc0_connector;
            assert_eq!(mc0_connector_new(cfg, &mut out), mc0_status::MC0_ERR_CONFIG);
            assert!(out.is_null());
            assert!(last_error().contains("broker.public_key"));
            assert_eq!(mc0_connector_new(cfg, std::ptr::null_mut()), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            mc0_config_free(cfg);
            mc0_config_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn connector_calls_reject_null() {
        unsafe {
            let null = std::ptr::null_mut();
            assert_eq!(mc0_connector_subscribe(null, cs(b"t").as_ptr()), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            assert_eq!(mc0_connector_unsubscribe(null, cs(b"t").as_ptr()), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            assert_eq!(
                mc0_connector_publish(
                    null,
                    cs(b"t").as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0
                ),
                mc0_status::MC0_ERR_INVALID_ARGUMENT
            );
            let mut out = std::ptr::null_mut();
            assert_eq!(mc0_connector_receive(null, 0, &mut out), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            assert_eq!(mc0_connector_flush(null, 0), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            assert!(mc0_connector_stats_json(null).is_null());
            assert_eq!(mc0_connector_close(null), mc0_status::MC0_ERR_INVALID_ARGUMENT);
            mc0_connector_free(null);
        }
    }

    #[test]
    fn free_waits_for_calls_in_progress() {
        // connect_retry: a connector without a broker.
        let config = Config::from_pairs([
            ("broker.host", "127.0.0.1"),
            ("broker.port", "1"),
            ("curve", "false"),
            ("connect_retry", "true"),
        ])
        .unwrap();
        let handle = Box::into_raw(Box::new(mc0_connector::new(Connector::connect(&config).unwrap())));
        let address = handle as usize;
        let left = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (entered, entered_rx) = std::sync::mpsc::channel();
        let call = std::thread::spawn({
            let left = left.clone();
            move || {
                // SAFETY: free waits for this call (what the test checks).
                let call = unsafe { &*(address as *const mc0_connector) }.enter();
                entered.send(()).unwrap();
                // A call that takes its time to return after close woke it.
                std::thread::sleep(Duration::from_millis(300));
                left.store(true, std::sync::atomic::Ordering::SeqCst);
                drop(call);
            }
        });
        entered_rx.recv().unwrap();
        unsafe { mc0_connector_free(handle) };
        assert!(left.load(std::sync::atomic::Ordering::SeqCst), "freed while a call was in progress");
        call.join().unwrap();
    }

    #[test]
    fn stats_json_names_the_broker_in_use() {
        // connect_retry over a pool where nothing listens: it fails over.
        let config = Config::from_pairs([
            ("broker.host", "127.0.0.1:1,127.0.0.1:2"),
            ("curve", "false"),
            ("connect_retry", "true"),
            ("randomize", "false"),
        ])
        .unwrap();
        let handle = Box::into_raw(Box::new(mc0_connector::new(Connector::connect(&config).unwrap())));
        let read = || {
            let text = unsafe { mc0_connector_stats_json(handle) };
            let json: serde_json::Value =
                serde_json::from_str(unsafe { std::ffi::CStr::from_ptr(text) }.to_str().unwrap()).unwrap();
            unsafe { super::super::mc0_string_free(text) };
            json
        };
        let json = read();
        assert_eq!(json["handshakes"], 0);
        assert!(["127.0.0.1:1", "127.0.0.1:2"].contains(&json["broker"].as_str().unwrap()), "{json}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read()["failovers"].as_u64() < Some(2) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let json = read();
        assert!(json["failovers"].as_u64() >= Some(2), "refused connections fail over: {json}");
        assert!(unsafe { mc0_connector_stats_json(std::ptr::null()) }.is_null());
        unsafe { mc0_connector_free(handle) };
    }
}
