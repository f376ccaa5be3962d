//! `mc0_message_*`: reading a received message.

use std::ffi::CString;
use std::os::raw::c_char;

use super::{arg_str, boundary, free_box, invalid, mc0_status, new_c_string, set_last_error};
use crate::connector::{Error, Message};

/// A received message (opaque). Owned by the caller until mc0_message_free;
/// every pointer read from it is owned by it and valid until then.
pub struct mc0_message {
    topic: CString,
    headers: Vec<(CString, Vec<u8>)>,
    body: Vec<u8>,
    sender: Option<CString>,
    sender_key: Option<CString>,
}

impl From<Message> for mc0_message {
    fn from(m: Message) -> Self {
        let c = |s: String| CString::new(s.replace('\0', "\\0")).unwrap_or_default();
        mc0_message {
            topic: c(m.topic),
            headers: m.headers.into_iter().map(|(k, v)| (c(k), v)).collect(),
            body: m.body,
            sender: m.sender.map(c),
            sender_key: m.sender_key.map(c),
        }
    }
}

unsafe fn message_ref<'a>(m: *const mc0_message) -> Result<&'a mc0_message, Error> {
    m.as_ref().ok_or_else(|| invalid("message is NULL"))
}

unsafe fn write_len(len: *mut usize, value: usize) {
    if !len.is_null() {
        *len = value;
    }
}

/// The message's topic (NUL-terminated), owned by m. NULL if m is NULL.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_topic(m: *const mc0_message) -> *const c_char {
    boundary(|| Ok(message_ref(m)?.topic.as_ptr() as *mut c_char))
}

/// The publisher's authenticated identity (NUL-terminated), owned by m: the
/// name its key is listed under in mc0d's allowlist, set by mc0d (the
/// SENDER header; a copy the publisher sent is never passed on). NULL when
/// the broker set none (no allowlist: see mc0_message_sender_key; or a
/// legacy broker, which would also pass a forged one on) or m is NULL.
/// Thread-safe for concurrent readers of m.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_sender(m: *const mc0_message) -> *const c_char {
    boundary(|| Ok(message_ref(m)?.sender.as_ref().map_or(std::ptr::null_mut(), |s| s.as_ptr() as *mut c_char)))
}

/// The publisher's CURVE public key as 40 Z85 characters (NUL-terminated),
/// owned by m: set by mc0d (the SENDER-KEY header) instead of the sender
/// when it has no name for the key (CURVE without an allowlist, or a key
/// listed without a name), trustworthy as mc0_message_sender; at most one
/// of the two is set. NULL when absent or m is NULL. Thread-safe for
/// concurrent readers of m.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_sender_key(m: *const mc0_message) -> *const c_char {
    boundary(|| Ok(message_ref(m)?.sender_key.as_ref().map_or(std::ptr::null_mut(), |s| s.as_ptr() as *mut c_char)))
}

/// Number of headers (the publisher's "X-" headers; not SENDER and
/// SENDER-KEY, see mc0_message_sender). 0 if m is NULL.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_header_count(m: *const mc0_message) -> usize {
    boundary(|| Ok(message_ref(m)?.headers.len()))
}

/// The name of header i (NUL-terminated), owned by m; NULL if m is NULL or i
/// is out of range.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_header_name(m: *const mc0_message, i: usize) -> *const c_char {
    boundary(|| {
        let m = message_ref(m)?;
        let (name, _) = m.headers.get(i).ok_or_else(|| invalid(format!("header index {i} out of range")))?;
        Ok(name.as_ptr() as *mut c_char)
    })
}

/// The binary value of header i, owned by m, its length stored in *len (len
/// may be NULL). NULL (and *len = 0) if m is NULL or i is out of range.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_header_value(m: *const mc0_message, i: usize, len: *mut usize) -> *const u8 {
    boundary(|| {
        write_len(len, 0);
        let m = message_ref(m)?;
        let (_, value) = m.headers.get(i).ok_or_else(|| invalid(format!("header index {i} out of range")))?;
        write_len(len, value.len());
        Ok(value.as_ptr() as *mut u8)
    })
}

/// The binary value of the first header called name, owned by m, its length
/// stored in *len (len may be NULL). NULL (and *len = 0) both if the header
/// is absent and if an argument is NULL: kept for compatibility; use
/// mc0_message_header_find, which tells the two apart.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_header(m: *const mc0_message, name: *const c_char, len: *mut usize) -> *const u8 {
    boundary(|| {
        write_len(len, 0);
        Ok(match find_header(m, name)? {
            Some(value) => {
                write_len(len, value.len());
                value.as_ptr()
            }
            None => std::ptr::null(),
        })
    })
}

/// Looks up the first header called name (NUL-terminated UTF-8). Found:
/// MC0_OK, *value points to its binary value (owned by m, valid until
/// mc0_message_free) and *len holds its length. Absent: MC0_ERR_NOT_FOUND,
/// with *value = NULL and *len = 0 (mc0_last_error names the header).
/// Errors: MC0_ERR_INVALID_ARGUMENT (m, name, value or len NULL; name not
/// UTF-8). Thread-safe for concurrent readers of m.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_header_find(
    m: *const mc0_message,
    name: *const c_char,
    value: *mut *const u8,
    len: *mut usize,
) -> mc0_status {
    boundary(|| {
        if value.is_null() || len.is_null() {
            return Err(invalid("value and len must not be NULL"));
        }
        *value = std::ptr::null();
        *len = 0;
        match find_header(m, name)? {
            Some(found) => {
                *value = found.as_ptr();
                *len = found.len();
                Ok(mc0_status::MC0_OK)
            }
            None => {
                set_last_error(&format!("no header {:?}", arg_str(name, "name")?));
                Ok(mc0_status::MC0_ERR_NOT_FOUND)
            }
        }
    })
}

/// The value of the first header called `name`, None when absent.
unsafe fn find_header<'a>(m: *const mc0_message, name: *const c_char) -> Result<Option<&'a [u8]>, Error> {
    let m = message_ref(m)?;
    let name = arg_str(name, "name")?;
    Ok(m.headers.iter().find(|(k, _)| k.to_bytes() == name.as_bytes()).map(|(_, v)| &v[..]))
}

/// The headers as a JSON object mapping each name to its value as a string
/// (invalid UTF-8 replaced by U+FFFD; for a repeated name the first value).
/// Returns a new string the caller frees with mc0_string_free; NULL if m is
/// NULL.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_headers_json(m: *const mc0_message) -> *mut c_char {
    boundary(|| {
        let m = message_ref(m)?;
        let mut map = serde_json::Map::new();
        for (k, v) in &m.headers {
            map.entry(k.to_string_lossy().into_owned())
                .or_insert_with(|| serde_json::Value::String(String::from_utf8_lossy(v).into_owned()));
        }
        Ok(new_c_string(serde_json::Value::Object(map).to_string()))
    })
}

/// The body, owned by m, its length stored in *len (len may be NULL). Never
/// NULL for a valid m (an empty body has length 0); NULL if m is NULL.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_body(m: *const mc0_message, len: *mut usize) -> *const u8 {
    boundary(|| {
        write_len(len, 0);
        let m = message_ref(m)?;
        write_len(len, m.body.len());
        Ok(m.body.as_ptr() as *mut u8)
    })
}

/// Frees a message and everything read from it. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn mc0_message_free(m: *mut mc0_message) {
    boundary(|| free_box(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::test_util::{cs, last_error};
    use std::ffi::CStr;

    #[test]
    fn message_accessors() {
        let m = Box::into_raw(Box::new(mc0_message::from(Message {
            topic: "c reply me 1".into(),
            headers: vec![("X-A".into(), b"\x00\xff".to_vec()), ("X-B".into(), b"b".to_vec())],
            body: b"\x00body".to_vec(),
            sender: Some("web1".into()),
            sender_key: None,
        })));
        unsafe {
            assert_eq!(CStr::from_ptr(mc0_message_sender(m)).to_str().unwrap(), "web1");
            assert!(mc0_message_sender_key(m).is_null());
            assert!(mc0_message_sender(std::ptr::null()).is_null());
            assert_eq!(CStr::from_ptr(mc0_message_topic(m)).to_str().unwrap(), "c reply me 1");
            assert_eq!(mc0_message_header_count(m), 2);
            assert_eq!(CStr::from_ptr(mc0_message_header_name(m, 1)).to_str().unwrap(), "X-B");
            assert!(mc0_message_header_name(m, 2).is_null());
            let mut len = 99;
            let v = mc0_message_header_value(m, 0, &mut len);
            assert_eq!(std::slice::from_raw_parts(v, len), b"\x00\xff");
            assert!(mc0_message_header_value(m, 5, &mut len).is_null());
            assert_eq!(len, 0);
            let v = mc0_message_header(m, cs(b"X-B").as_ptr(), &mut len);
            assert_eq!(std::slice::from_raw_parts(v, len), b"b");
            assert!(mc0_message_header(m, cs(b"X-C").as_ptr(), &mut len).is_null());
            // find tells "absent" from "bad argument".
            let mut value = std::ptr::null();
            assert_eq!(mc0_message_header_find(m, cs(b"X-B").as_ptr(), &mut value, &mut len), mc0_status::MC0_OK);
            assert_eq!(std::slice::from_raw_parts(value, len), b"b");
            assert_eq!(
                mc0_message_header_find(m, cs(b"X-C").as_ptr(), &mut value, &mut len),
                mc0_status::MC0_ERR_NOT_FOUND
            );
            assert!(value.is_null() && len == 0);
            assert!(last_error().contains("X-C"));
            assert_eq!(
                mc0_message_header_find(std::ptr::null(), cs(b"X-B").as_ptr(), &mut value, &mut len),
                mc0_status::MC0_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                mc0_message_header_find(m, cs(b"X-B").as_ptr(), std::ptr::null_mut(), &mut len),
                mc0_status::MC0_ERR_INVALID_ARGUMENT
            );
            let body = mc0_message_body(m, &mut len);
            assert_eq!(std::slice::from_raw_parts(body, len), b"\x00body");
            let json = mc0_message_headers_json(m);
            let parsed: serde_json::Value = serde_json::from_str(CStr::from_ptr(json).to_str().unwrap()).unwrap();
            assert_eq!(parsed["X-B"], "b");
            assert_eq!(parsed["X-A"], "\u{0}\u{fffd}");
            super::super::mc0_string_free(json);
            assert!(mc0_message_topic(std::ptr::null()).is_null());
            assert_eq!(mc0_message_header_count(std::ptr::null()), 0);
            mc0_message_free(m);
            mc0_message_free(std::ptr::null_mut());
        }
    }
}
