//! The C ABI (`include/mc0.h`, generated from this module by cbindgen):
//! thin `extern "C"` wrappers over the Rust API, holding no logic of their
//! own.
//!
//! Every export's body is one call of `boundary` (or `guard`, its
//! form for status-returning calls), which catches panics (reported as
//! `MC0_ERR_PANIC`) so that nothing unwinds into C, turns an error into the
//! export's failure value (a status, NULL, 0) and stores its text and
//! config key for `mc0_last_error`/`mc0_last_error_key`. NULL arguments are
//! mapped to MC0_ERR_INVALID_ARGUMENT by the argument helpers below
//! (`arg_str`, `connector::*_ref`). A test fails when an export does not go
//! through the boundary. The doc comment of each function (copied into the
//! header) states in C terms what its pointer arguments must be, who owns
//! what it returns, whether it is thread-safe and which errors it reports.

// Pointer requirements are documented in C terms on each function, for the
// header's readers, rather than in Rust `# Safety` sections.
#![allow(clippy::missing_safety_doc)]
// The same comments are C documentation: `"<collective> <agent>"` and
// `names[i]` are meant literally, not as HTML or Rust links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
#![allow(non_camel_case_types)]

pub mod connector;
pub mod message;

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::connector::{Error, ErrorKind};
use crate::log::Level;

/// Result of every mc0 call that can fail. On anything but MC0_OK,
/// mc0_last_error() on the same thread describes the failure, and
/// mc0_status_str() names the code. A 32-bit unsigned value (so `enum
/// mc0_status` and `mc0_status` both work); codes are only ever appended.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names, clippy::upper_case_acronyms)]
pub enum mc0_status {
    /// Success.
    MC0_OK = 0,
    /// A NULL pointer where one is required, text that is not UTF-8, an index
    /// out of range, an empty or over-long topic, a reserved header name.
    MC0_ERR_INVALID_ARGUMENT = 1,
    /// Unknown config key, bad value, missing required key.
    MC0_ERR_CONFIG = 2,
    /// Key file missing, unreadable or malformed.
    MC0_ERR_KEY = 3,
    /// Receive timeout, or no answer from the broker within a bounded time.
    MC0_ERR_TIMEOUT = 4,
    /// The connector is closed (possibly by another thread).
    MC0_ERR_CLOSED = 5,
    /// The broker answered ERROR.
    MC0_ERR_BROKER = 6,
    /// Too many publishes queued (the broker is unreachable or slow).
    MC0_ERR_QUEUE_FULL = 7,
    /// libzmq failed (including: linked libzmq has no CURVE support).
    MC0_ERR_ZMQ = 8,
    /// An internal bug, caught before it could cross into C.
    MC0_ERR_PANIC = 9,
    /// broker.host does not resolve (unknown name, or DNS unavailable);
    /// mc0_last_error() names the host. May heal: daemons retry it.
    MC0_ERR_RESOLVE = 10,
    /// A lookup found nothing, e.g. mc0_message_header_find() for a header
    /// the message does not have. Not a failure of the call.
    MC0_ERR_NOT_FOUND = 11,
}

impl mc0_status {
    pub fn from_kind(kind: ErrorKind) -> mc0_status {
        match kind {
            ErrorKind::InvalidArgument => mc0_status::MC0_ERR_INVALID_ARGUMENT,
            ErrorKind::Config => mc0_status::MC0_ERR_CONFIG,
            ErrorKind::Key => mc0_status::MC0_ERR_KEY,
            ErrorKind::Timeout => mc0_status::MC0_ERR_TIMEOUT,
            ErrorKind::Closed => mc0_status::MC0_ERR_CLOSED,
            ErrorKind::Broker => mc0_status::MC0_ERR_BROKER,
            ErrorKind::QueueFull => mc0_status::MC0_ERR_QUEUE_FULL,
            ErrorKind::Zmq => mc0_status::MC0_ERR_ZMQ,
            ErrorKind::Resolve => mc0_status::MC0_ERR_RESOLVE,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_ERROR_KEY: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error_key(key: Option<&str>) {
    let key = key.map(|k| CString::new(k.replace('\0', "\\0")).unwrap_or_default());
    LAST_ERROR_KEY.with(|cell| *cell.borrow_mut() = key);
}

/// Sets the thread's last error; its key is cleared (see [`boundary_or`]).
pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = text);
    set_last_error_key(None);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (a bug in mc0, please report it): {what}")
}

/// What an export returns when its call fails.
pub(crate) trait Failure {
    fn failure(status: mc0_status) -> Self;
}

impl Failure for mc0_status {
    fn failure(status: mc0_status) -> Self {
        status
    }
}

impl<T> Failure for *mut T {
    fn failure(_: mc0_status) -> Self {
        std::ptr::null_mut()
    }
}

impl<T> Failure for *const T {
    fn failure(_: mc0_status) -> Self {
        std::ptr::null()
    }
}

impl Failure for usize {
    fn failure(_: mc0_status) -> Self {
        0
    }
}

impl Failure for u16 {
    fn failure(_: mc0_status) -> Self {
        0
    }
}

impl Failure for () {
    fn failure(_: mc0_status) -> Self {}
}

/// The C boundary every export goes through: runs `f`, catching a panic
/// (MC0_ERR_PANIC) so that nothing unwinds into C; an error becomes the
/// export's failure value, given its status by `on_failure`, and the
/// thread's last error (text and config key).
pub(crate) fn boundary_or<T>(on_failure: impl FnOnce(mc0_status) -> T, f: impl FnOnce() -> Result<T, Error>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => {
            set_last_error(e.message());
            set_last_error_key(e.key());
            on_failure(mc0_status::from_kind(e.kind()))
        }
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            on_failure(mc0_status::MC0_ERR_PANIC)
        }
    }
}

/// [`boundary_or`] with the return type's usual failure value (a status,
/// NULL, 0, nothing).
pub(crate) fn boundary<T: Failure>(f: impl FnOnce() -> Result<T, Error>) -> T {
    boundary_or(T::failure, f)
}

/// [`boundary`] for the calls returning a status: MC0_OK on success.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Error>) -> mc0_status {
    boundary(|| f().map(|()| mc0_status::MC0_OK))
}

/// The one meaning of a `timeout_ms` argument: 0 does not wait, a negative
/// value waits without limit (until done, or the connector is closed).
pub(crate) fn timeout_from_ms(timeout_ms: i32) -> Duration {
    u64::try_from(timeout_ms).map_or(Duration::MAX, Duration::from_millis)
}

/// Frees what an export handed out with `Box::into_raw`; NULL is ignored.
pub(crate) unsafe fn free_box<T>(p: *mut T) -> Result<(), Error> {
    if !p.is_null() {
        drop(Box::from_raw(p));
    }
    Ok(())
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// Borrows a C string argument as UTF-8; `what` names it in errors.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(p).to_str().map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

pub(crate) fn new_c_string(text: String) -> *mut c_char {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default().into_raw()
}

/// The library version, e.g. "0.1.0". Returns a static string: never free it.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn mc0_version() -> *const c_char {
    boundary(|| Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char))
}

/// A short description of a status code, e.g. "timeout" for
/// MC0_ERR_TIMEOUT; "unknown status" for a value this library does not
/// define (status is taken as a plain number for that reason). Returns a
/// static string: never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn mc0_status_str(status: u32) -> *const c_char {
    boundary(|| Ok(status_text(status).as_ptr() as *const c_char))
}

fn status_text(status: u32) -> &'static str {
    use mc0_status::*;
    const CODES: [(mc0_status, &str); 12] = [
        (MC0_OK, "ok\0"),
        (MC0_ERR_INVALID_ARGUMENT, "invalid argument\0"),
        (MC0_ERR_CONFIG, "configuration error\0"),
        (MC0_ERR_KEY, "key file error\0"),
        (MC0_ERR_TIMEOUT, "timeout\0"),
        (MC0_ERR_CLOSED, "connector closed\0"),
        (MC0_ERR_BROKER, "broker error\0"),
        (MC0_ERR_QUEUE_FULL, "send queue full\0"),
        (MC0_ERR_ZMQ, "libzmq error\0"),
        (MC0_ERR_PANIC, "internal error\0"),
        (MC0_ERR_RESOLVE, "broker host does not resolve\0"),
        (MC0_ERR_NOT_FOUND, "not found\0"),
    ];
    CODES.iter().find(|(code, _)| *code as u32 == status).map_or("unknown status\0", |(_, text)| text)
}

/// The port libmc0 connects to when broker.port is not set (the
/// protocol's default, see docs/PROTOCOL.md). Thread-safe.
#[no_mangle]
pub extern "C" fn mc0_default_port() -> u16 {
    boundary(|| Ok(crate::protocol::DEFAULT_PORT))
}

/// Describes the last failed mc0 call on the calling thread; "" if none has
/// failed yet. The string is owned by the library and stays valid until the
/// next mc0 call on the same thread: copy it if needed, never free it.
/// Thread-safe (each thread has its own).
#[no_mangle]
pub extern "C" fn mc0_last_error() -> *const c_char {
    boundary_or(
        |_| b"internal error reading the last error\0".as_ptr() as *const c_char,
        || Ok(LAST_ERROR.with(|cell| cell.borrow().as_ptr())),
    )
}

/// The configuration key (e.g. "broker.port", "private_key") the last
/// failed mc0 call on the calling thread was about, without the
/// "plugin.zeromq." prefix; NULL when that failure named no key (or none
/// has failed). Set by mc0_config_set and mc0_connector_new for
/// MC0_ERR_CONFIG and MC0_ERR_KEY (a key file is named by the key that
/// points to it). Ownership and lifetime as mc0_last_error. Thread-safe.
#[no_mangle]
pub extern "C" fn mc0_last_error_key() -> *const c_char {
    boundary(|| Ok(LAST_ERROR_KEY.with(|cell| cell.borrow().as_ref().map_or(std::ptr::null(), |k| k.as_ptr()))))
}

/// Frees a string returned by mc0_topic_*, mc0_message_headers_json or
/// mc0_connector_stats_json.
/// NULL is ignored. Each string must be freed exactly once, by this function.
#[no_mangle]
pub unsafe extern "C" fn mc0_string_free(s: *mut c_char) {
    boundary(|| {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
        Ok(())
    })
}

/// The topic for broadcast requests to an agent: "<collective> <agent>".
/// Both arguments are NUL-terminated UTF-8. Returns a new string the caller
/// frees with mc0_string_free, or NULL (see mc0_last_error) if an argument
/// is NULL or not UTF-8. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_topic_agent(collective: *const c_char, agent: *const c_char) -> *mut c_char {
    boundary(|| {
        let collective = arg_str(collective, "collective")?;
        let agent = arg_str(agent, "agent")?;
        Ok(new_c_string(crate::topics::agent(collective, agent)))
    })
}

/// The topic for directed requests to one node:
/// "<collective> nodes <identity>". Ownership and errors as mc0_topic_agent.
#[no_mangle]
pub unsafe extern "C" fn mc0_topic_node(collective: *const c_char, identity: *const c_char) -> *mut c_char {
    boundary(|| {
        let collective = arg_str(collective, "collective")?;
        let identity = arg_str(identity, "identity")?;
        Ok(new_c_string(crate::topics::node(collective, identity)))
    })
}

/// The topic a client receives replies on:
/// "<collective> reply <identity> <pid>". Ownership and errors as
/// mc0_topic_agent.
#[no_mangle]
pub unsafe extern "C" fn mc0_topic_reply(collective: *const c_char, identity: *const c_char, pid: u32) -> *mut c_char {
    boundary(|| {
        let collective = arg_str(collective, "collective")?;
        let identity = arg_str(identity, "identity")?;
        Ok(new_c_string(crate::topics::reply(collective, identity, pid)))
    })
}

/// The topic a connector subscribes to for MCollective's subscription of
/// type kind ("broadcast", "directed" or "reply") to agent in collective,
/// for a node or client called identity with process id pid: the one
/// mapping every binding uses (see mc0_topic_agent, mc0_topic_node,
/// mc0_topic_reply). Returns a new string the caller frees with
/// mc0_string_free, or NULL with MC0_ERR_INVALID_ARGUMENT in
/// mc0_last_error if an argument is NULL, not UTF-8, or kind is another
/// type (this transport has no topic for it). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_topic_for_subscription(
    kind: *const c_char,
    agent: *const c_char,
    collective: *const c_char,
    identity: *const c_char,
    pid: u32,
) -> *mut c_char {
    boundary(|| {
        let kind = arg_str(kind, "kind")?;
        let agent = arg_str(agent, "agent")?;
        let collective = arg_str(collective, "collective")?;
        let identity = arg_str(identity, "identity")?;
        crate::topics::for_subscription(kind, agent, collective, identity, pid)
            .map(new_c_string)
            .ok_or_else(|| invalid(format!("kind {kind:?} is not broadcast, directed or reply")))
    })
}

/// Generates a CURVE keypair. Writes the 40-character Z85 public and secret
/// keys, each NUL-terminated, into caller-owned buffers of at least 41 bytes.
/// Errors: MC0_ERR_INVALID_ARGUMENT (a NULL buffer), MC0_ERR_ZMQ (libzmq has
/// no CURVE). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_curve_keypair(public_z85: *mut c_char, secret_z85: *mut c_char) -> mc0_status {
    guard(|| {
        if public_z85.is_null() || secret_z85.is_null() {
            return Err(invalid("public_z85 and secret_z85 must be buffers of 41 bytes, not NULL"));
        }
        crate::ensure_curve_support().map_err(|e| Error::new(ErrorKind::Zmq, e))?;
        let pair = crate::keys::KeyPair::generate().map_err(|e| Error::new(ErrorKind::Zmq, e))?;
        for (key, out) in [(&pair.public, public_z85), (&pair.secret, secret_z85)] {
            let text = crate::keys::key_to_z85(key);
            std::ptr::copy_nonoverlapping(text.as_ptr(), out as *mut u8, text.len());
            *out.add(text.len()) = 0;
        }
        Ok(())
    })
}

/// A log sink: called with the user_data given to mc0_set_log_callback, a
/// level (1 = error, 2 = warn, 3 = info, 4 = debug) and a NUL-terminated
/// line that is only valid during the call. It is called from the library's
/// background threads, possibly concurrently and while another thread is
/// inside an mc0 call; it must not block for long and must not call
/// mc0_connector_* functions (mc0_set_log_callback from inside it is
/// ignored).
pub type mc0_log_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char)>;

/// Installs the process-wide log sink; the library itself never prints.
/// Lines more verbose than max_level (1..4) are not produced; a NULL cb (or
/// max_level < 1) turns logging off. user_data is passed back unchanged and
/// must stay valid until the sink is replaced: when this function returns,
/// the previous callback is no longer running and will not be called again.
/// Thread-safe; affects every connector in the process.
#[no_mangle]
pub unsafe extern "C" fn mc0_set_log_callback(cb: mc0_log_fn, user_data: *mut c_void, max_level: i32) {
    boundary(|| {
        let level = Level::from_i32(max_level.clamp(1, 4)).unwrap_or(Level::Error);
        match cb {
            Some(cb) if max_level >= 1 => {
                let sink = CSink { cb, user_data };
                crate::connector::set_logger(
                    Some(Arc::new(move |level: Level, line: &str| sink.call(level, line))),
                    level,
                )
            }
            _ => crate::connector::set_logger(None, Level::Error),
        }
        Ok(())
    })
}

struct CSink {
    cb: unsafe extern "C" fn(*mut c_void, i32, *const c_char),
    user_data: *mut c_void,
}

// SAFETY: the C API requires the callback and user_data to be usable from
// any thread (documented on mc0_set_log_callback).
unsafe impl Send for CSink {}
unsafe impl Sync for CSink {}

impl CSink {
    fn call(&self, level: Level, line: &str) {
        let text = CString::new(line.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: the caller of mc0_set_log_callback promised a valid function.
        unsafe { (self.cb)(self.user_data, level as i32, text.as_ptr()) }
    }
}

/// What the tests of every ffi file use.
#[cfg(test)]
pub(crate) mod test_util {
    use std::ffi::{CStr, CString};

    /// A C string for the duration of the statement (cbindgen's parser
    /// predates `c""` literals).
    pub fn cs(bytes: &[u8]) -> CString {
        CString::new(bytes).unwrap()
    }

    pub fn last_error() -> String {
        unsafe { CStr::from_ptr(super::mc0_last_error()) }.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::cs;
    use super::*;

    #[test]
    fn resolve_failures_have_their_own_status_appended_at_the_end() {
        assert_eq!(mc0_status::from_kind(ErrorKind::Resolve), mc0_status::MC0_ERR_RESOLVE);
        assert_eq!(mc0_status::MC0_ERR_RESOLVE as i32, 10, "codes are only ever appended (ABI)");
    }

    #[test]
    fn guard_maps_errors_and_panics() {
        assert_eq!(guard(|| Ok(())), mc0_status::MC0_OK);
        assert_eq!(guard(|| Err(Error::new(ErrorKind::Key, "key file x: bad"))), mc0_status::MC0_ERR_KEY);
        let text = unsafe { CStr::from_ptr(mc0_last_error()) }.to_str().unwrap().to_string();
        assert_eq!(text, "key file x: bad");
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert_eq!(guard(|| panic!("boom")), mc0_status::MC0_ERR_PANIC);
        assert!(boundary::<*mut u8>(|| panic!("boom2")).is_null());
        std::panic::set_hook(prev);
        let text = unsafe { CStr::from_ptr(mc0_last_error()) }.to_str().unwrap().to_string();
        assert!(text.contains("boom2"), "{text}");
    }

    #[test]
    fn topics_and_nulls() {
        unsafe {
            let s = mc0_topic_reply(cs(b"mcollective").as_ptr(), cs(b"me").as_ptr(), 42);
            assert_eq!(CStr::from_ptr(s).to_str().unwrap(), "mcollective reply me 42");
            mc0_string_free(s);
            assert!(mc0_topic_agent(std::ptr::null(), cs(b"x").as_ptr()).is_null());
            assert!(CStr::from_ptr(mc0_last_error()).to_str().unwrap().contains("collective is NULL"));
            assert!(mc0_topic_node(cs(b"c").as_ptr(), cs(b"\xff").as_ptr()).is_null());
            assert!(CStr::from_ptr(mc0_last_error()).to_str().unwrap().contains("UTF-8"));
        }
    }

    #[test]
    fn keypair_fills_z85_buffers() {
        let mut public = [1 as c_char; 41];
        let mut secret = [1 as c_char; 41];
        unsafe {
            assert_eq!(mc0_curve_keypair(public.as_mut_ptr(), secret.as_mut_ptr()), mc0_status::MC0_OK);
            let p = CStr::from_ptr(public.as_ptr()).to_str().unwrap();
            let s = CStr::from_ptr(secret.as_ptr()).to_str().unwrap();
            assert_eq!((p.len(), s.len()), (40, 40));
            let derived = crate::keys::KeyPair::from_secret(crate::keys::parse_key(s).unwrap()).unwrap();
            assert_eq!(crate::keys::key_to_z85(&derived.public), p);
            assert_eq!(
                mc0_curve_keypair(std::ptr::null_mut(), secret.as_mut_ptr()),
                mc0_status::MC0_ERR_INVALID_ARGUMENT
            );
        }
    }

    /// Every export's body is one call of the boundary: a new export
    /// without it (a panic unwinding into C, an error without its
    /// mc0_last_error) fails here.
    #[test]
    fn every_export_goes_through_the_boundary() {
        let mut exports = 0;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("extern \"C\" fn ") {
                let name: String = text[at + 14..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                let body = text[at..].split_once('{').expect("a body").1.trim_start();
                assert!(
                    ["boundary(", "boundary_or(", "guard("].iter().any(|w| body.starts_with(w)),
                    "{file}: {name} does not go through boundary()/guard()"
                );
                exports += 1;
            }
        }
        let header = include_str!("../../include/mc0.h");
        let declared = header
            .lines()
            .filter(|l| !l.starts_with([' ', '#', '/', '*']) && !l.starts_with("typedef"))
            .filter_map(|l| l.split_once('('))
            .filter(|(head, _)| head.rsplit([' ', '*']).next().is_some_and(|name| name.starts_with("mc0_")))
            .count();
        assert_eq!(exports, declared, "every function in the header was checked");
    }

    #[test]
    fn status_codes_have_names_and_are_32_bit() {
        assert_eq!(std::mem::size_of::<mc0_status>(), 4);
        let text = |s| unsafe { CStr::from_ptr(mc0_status_str(s)) }.to_str().unwrap();
        assert_eq!(text(mc0_status::MC0_ERR_TIMEOUT as u32), "timeout");
        assert_eq!(text(mc0_status::MC0_ERR_NOT_FOUND as u32), "not found");
        assert_eq!(text(12), "unknown status");
        assert_eq!(text(u32::MAX), "unknown status");
        for code in 0..12 {
            assert_ne!(text(code), "unknown status", "{code}");
        }
    }

    #[test]
    fn negative_timeouts_mean_no_limit_everywhere() {
        assert_eq!(timeout_from_ms(-1), Duration::MAX);
        assert_eq!(timeout_from_ms(i32::MIN), Duration::MAX);
        assert_eq!(timeout_from_ms(0), Duration::ZERO);
        assert_eq!(timeout_from_ms(1500), Duration::from_millis(1500));
    }

    #[test]
    fn the_last_error_names_its_config_key() {
        let key = || unsafe { mc0_last_error_key().as_ref().map(|k| CStr::from_ptr(k).to_str().unwrap().to_string()) };
        guard(|| Err(Error::new(ErrorKind::Config, "broker.port: bad").with_key("broker.port")));
        assert_eq!(key().as_deref(), Some("broker.port"));
        guard(|| Err(Error::new(ErrorKind::Timeout, "slow")));
        assert_eq!(key(), None, "a failure without a key clears it");
    }

    #[test]
    fn topic_for_subscription_is_the_one_mapping() {
        unsafe {
            let s = mc0_topic_for_subscription(
                cs(b"reply").as_ptr(),
                cs(b"rpcutil").as_ptr(),
                cs(b"mcollective").as_ptr(),
                cs(b"me").as_ptr(),
                7,
            );
            assert_eq!(CStr::from_ptr(s).to_str().unwrap(), "mcollective reply me 7");
            mc0_string_free(s);
            let s = mc0_topic_for_subscription(
                cs(b"queue").as_ptr(),
                cs(b"a").as_ptr(),
                cs(b"c").as_ptr(),
                cs(b"me").as_ptr(),
                7,
            );
            assert!(s.is_null());
            assert!(CStr::from_ptr(mc0_last_error()).to_str().unwrap().contains("queue"));
        }
        assert_eq!(mc0_default_port(), crate::protocol::DEFAULT_PORT);
    }

    #[test]
    fn version_is_the_crate_version() {
        let v = unsafe { CStr::from_ptr(mc0_version()) }.to_str().unwrap();
        assert_eq!(v, crate::VERSION);
    }
}
