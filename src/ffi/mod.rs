//! The C ABI (`include/mc0.h`, generated from this module by cbindgen):
//! thin `extern "C"` wrappers over the Rust API, holding no logic of their
//! own.
//!
//! Every export runs inside `guard`/`guard_ptr`, which catch panics
//! (reported as `MC0_ERR_PANIC`) so that nothing unwinds into C, and store
//! the error text in a thread-local buffer read by `mc0_last_error`. The doc
//! comment of each function (copied into the header) states in C terms what
//! its pointer arguments must be, who owns what it returns, whether it is
//! thread-safe and which errors it reports.

// Pointer requirements are documented in C terms on each function, for the
// header's readers, rather than in Rust `# Safety` sections.
#![allow(clippy::missing_safety_doc)]
// The same comments are C documentation: `"<collective> <agent>"` and
// `names[i]` are meant literally, not as HTML or Rust links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
#![allow(non_camel_case_types)]

pub mod connector;

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::connector::{Error, ErrorKind};
use crate::log::Level;

/// Result of every mc0 call that can fail. On anything but MC0_OK,
/// mc0_last_error() on the same thread describes the failure.
#[repr(C)]
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
}

pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = text);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (a bug in mc0, please report it): {what}")
}

/// Runs an export returning a status: errors become their status code and
/// the thread's last error; a panic becomes MC0_ERR_PANIC.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Error>) -> mc0_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => mc0_status::MC0_OK,
        Ok(Err(e)) => {
            set_last_error(e.message());
            mc0_status::from_kind(e.kind())
        }
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            mc0_status::MC0_ERR_PANIC
        }
    }
}

/// Like [`guard`] for exports returning a pointer: NULL on any failure.
pub(crate) fn guard_ptr<T>(f: impl FnOnce() -> Result<*mut T, Error>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            set_last_error(e.message());
            std::ptr::null_mut()
        }
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            std::ptr::null_mut()
        }
    }
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
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Describes the last failed mc0 call on the calling thread; "" if none has
/// failed yet. The string is owned by the library and stays valid until the
/// next mc0 call on the same thread: copy it if needed, never free it.
/// Thread-safe (each thread has its own).
#[no_mangle]
pub extern "C" fn mc0_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|cell| cell.borrow().as_ptr()))
        .unwrap_or(b"internal error reading the last error\0".as_ptr() as *const c_char)
}

/// Frees a string returned by mc0_topic_* or mc0_message_headers_json.
/// NULL is ignored. Each string must be freed exactly once, by this function.
#[no_mangle]
pub unsafe extern "C" fn mc0_string_free(s: *mut c_char) {
    if !s.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(CString::from_raw(s))));
    }
}

/// The topic for broadcast requests to an agent: "<collective> <agent>".
/// Both arguments are NUL-terminated UTF-8. Returns a new string the caller
/// frees with mc0_string_free, or NULL (see mc0_last_error) if an argument
/// is NULL or not UTF-8. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mc0_topic_agent(collective: *const c_char, agent: *const c_char) -> *mut c_char {
    guard_ptr(|| {
        let collective = arg_str(collective, "collective")?;
        let agent = arg_str(agent, "agent")?;
        Ok(new_c_string(crate::topics::agent(collective, agent)))
    })
}

/// The topic for directed requests to one node:
/// "<collective> nodes <identity>". Ownership and errors as mc0_topic_agent.
#[no_mangle]
pub unsafe extern "C" fn mc0_topic_node(collective: *const c_char, identity: *const c_char) -> *mut c_char {
    guard_ptr(|| {
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
    guard_ptr(|| {
        let collective = arg_str(collective, "collective")?;
        let identity = arg_str(identity, "identity")?;
        Ok(new_c_string(crate::topics::reply(collective, identity, pid)))
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
    let _ = catch_unwind(AssertUnwindSafe(|| {
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
    }));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A C string for the duration of the statement (cbindgen's parser
    /// predates `c""` literals).
    fn cs(bytes: &[u8]) -> CString {
        CString::new(bytes).unwrap()
    }

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
        assert!(guard_ptr::<u8>(|| panic!("boom2")).is_null());
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

    #[test]
    fn version_is_the_crate_version() {
        let v = unsafe { CStr::from_ptr(mc0_version()) }.to_str().unwrap();
        assert_eq!(v, crate::VERSION);
    }
}
