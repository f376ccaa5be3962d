//! CURVE keys as operators handle them: 40-character Z85 strings, one per
//! file (`NAME.public`, `NAME.private`), trailing whitespace ignored.
//!
//! Z85 is implemented here rather than through the `zmq` crate, whose
//! `z85_decode` leaks on every call.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A CURVE key (public or secret) in binary form.
pub type Key = [u8; 32];

/// Length of a key in Z85 text.
pub const Z85_KEY_LEN: usize = 40;

const ALPHABET: &[u8; 85] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Encodes `data` (length a multiple of 4) as Z85.
pub fn z85_encode(data: &[u8]) -> Option<String> {
    if data.len() % 4 != 0 {
        return None;
    }
    let mut out = String::with_capacity(data.len() / 4 * 5);
    for chunk in data.chunks(4) {
        let mut value = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut block = [0u8; 5];
        for slot in block.iter_mut().rev() {
            *slot = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.extend(block.iter().map(|&b| b as char));
    }
    Some(out)
}

/// Decodes Z85 text (length a multiple of 5); `None` for any invalid input.
pub fn z85_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 5 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 5 * 4);
    for chunk in text.chunks(5) {
        let mut value: u64 = 0;
        for &c in chunk {
            let digit = ALPHABET.iter().position(|&a| a == c)? as u64;
            value = value * 85 + digit;
        }
        let value = u32::try_from(value).ok()?;
        out.extend_from_slice(&value.to_be_bytes());
    }
    Some(out)
}

/// Why a key could not be read or written; always names the file.
#[derive(Debug)]
pub enum KeyError {
    Io { path: PathBuf, error: std::io::Error },
    Malformed { path: PathBuf, reason: String },
    Exists { path: PathBuf },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io { path, error } => write!(f, "key file {}: {error}", path.display()),
            KeyError::Malformed { path, reason } => write!(f, "key file {}: {reason}", path.display()),
            KeyError::Exists { path } => {
                write!(f, "key file {} already exists (use --force to overwrite)", path.display())
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// Parses a 40-character Z85 key, ignoring surrounding whitespace.
pub fn parse_key(text: &str) -> Result<Key, String> {
    let text = text.trim();
    if text.len() != Z85_KEY_LEN {
        return Err(format!("expected a {Z85_KEY_LEN}-character Z85 key, found {} characters", text.len()));
    }
    let bytes = z85_decode(text).ok_or_else(|| "not a valid Z85 key".to_string())?;
    bytes.try_into().map_err(|_| "not a valid Z85 key".to_string())
}

/// Reads a key file (`NAME.public` or `NAME.private`).
pub fn read_key_file(path: impl AsRef<Path>) -> Result<Key, KeyError> {
    let path = path.as_ref();
    let text = fs::read(path).map_err(|error| KeyError::Io { path: path.to_path_buf(), error })?;
    let text = String::from_utf8(text)
        .map_err(|_| KeyError::Malformed { path: path.to_path_buf(), reason: "not text".into() })?;
    parse_key(&text).map_err(|reason| KeyError::Malformed { path: path.to_path_buf(), reason })
}

/// Encodes a key as its 40-character Z85 text.
pub fn key_to_z85(key: &Key) -> String {
    z85_encode(key).expect("32 bytes is a multiple of 4")
}

/// A CURVE keypair in binary form.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub public: Key,
    pub secret: Key,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("public", &key_to_z85(&self.public)).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh keypair from libzmq (libsodium underneath).
    pub fn generate() -> Result<Self, String> {
        let pair = zmq::CurveKeyPair::new().map_err(|e| format!("cannot generate a CURVE keypair: {e}"))?;
        Ok(KeyPair { public: pair.public_key, secret: pair.secret_key })
    }

    /// Derives the public half from a secret key.
    pub fn from_secret(secret: Key) -> Result<Self, String> {
        let mut public_z85 = [0u8; 41];
        let secret_z85 = std::ffi::CString::new(key_to_z85(&secret)).expect("Z85 has no NUL");
        // SAFETY: both buffers are NUL-terminated 41-byte Z85 strings, as zmq_curve_public requires.
        let rc = unsafe { zmq_curve_public(public_z85.as_mut_ptr() as *mut _, secret_z85.as_ptr()) };
        if rc != 0 {
            return Err("cannot derive a CURVE public key (libzmq built without CURVE?)".into());
        }
        let public = parse_key(std::str::from_utf8(&public_z85[..40]).map_err(|e| e.to_string())?)?;
        Ok(KeyPair { public, secret })
    }
}

extern "C" {
    // In libzmq since 4.2; not bound by zmq-sys 0.12.
    fn zmq_curve_public(z85_public_key: *mut libc::c_char, z85_secret_key: *const libc::c_char) -> libc::c_int;
}

/// Writes `NAME.public` and `NAME.private` (mode 0600) for `pair`. Refuses to
/// replace an existing file unless `force`. Returns the two paths written.
pub fn write_keypair(base: impl AsRef<Path>, pair: &KeyPair, force: bool) -> Result<(PathBuf, PathBuf), KeyError> {
    let base = base.as_ref();
    let public_path = with_suffix(base, "public");
    let private_path = with_suffix(base, "private");
    if !force {
        for path in [&public_path, &private_path] {
            if path.exists() {
                return Err(KeyError::Exists { path: path.clone() });
            }
        }
    }
    write_key_file(&private_path, &pair.secret, 0o600)?;
    write_key_file(&public_path, &pair.public, 0o644)?;
    Ok((public_path, private_path))
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

fn write_key_file(path: &Path, key: &Key, mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |error| KeyError::Io { path: path.to_path_buf(), error };
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(io)?;
    // An existing file keeps its old mode through open(); force it.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io)?;
    writeln!(file, "{}", key_to_z85(key)).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z85_matches_the_spec_test_vector() {
        // ZeroMQ RFC 32 test vector.
        let data = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(z85_encode(&data).unwrap(), "HelloWorld");
        assert_eq!(z85_decode("HelloWorld").unwrap(), data);
    }

    #[test]
    fn z85_rejects_bad_input() {
        assert_eq!(z85_encode(&[1, 2, 3]), None);
        assert_eq!(z85_decode("abcd"), None);
        assert_eq!(z85_decode("abc\"e"), None);
        assert_eq!(z85_decode("#####"), None, "overflows 32 bits");
    }

    #[test]
    fn keys_round_trip_and_match_libzmq() {
        let pair = KeyPair::generate().unwrap();
        let text = key_to_z85(&pair.public);
        assert_eq!(text.len(), 40);
        assert_eq!(parse_key(&format!("{text}\n")).unwrap(), pair.public);
        assert_eq!(zmq::z85_encode(&pair.public).unwrap(), text);
        assert_eq!(KeyPair::from_secret(pair.secret).unwrap(), pair);
    }

    #[test]
    fn parse_key_names_the_problem() {
        assert!(parse_key("short").unwrap_err().contains("40-character"));
        assert!(parse_key(&"\"".repeat(40)).unwrap_err().contains("Z85"));
    }

    #[test]
    fn key_files_are_written_and_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mc0-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let base = dir.join("node");
        let pair = KeyPair::generate().unwrap();
        let (public, private) = write_keypair(&base, &pair, false).unwrap();
        assert_eq!(read_key_file(&public).unwrap(), pair.public);
        assert_eq!(read_key_file(&private).unwrap(), pair.secret);
        assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(&public).unwrap().ends_with('\n'));
        assert!(matches!(write_keypair(&base, &pair, false), Err(KeyError::Exists { .. })));
        write_keypair(&base, &pair, true).unwrap();
        let missing = read_key_file(dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        fs::write(dir.join("bad"), "tooshort\n").unwrap();
        assert!(read_key_file(dir.join("bad")).unwrap_err().to_string().contains("bad"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
