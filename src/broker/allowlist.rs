//! The client-key allowlist (`mc0d --authorized-keys PATH`): which CURVE
//! public keys may complete the handshake.
//!
//! PATH is either
//! - a directory: every `*.public` file in it holds one Z85 key (the layout
//!   key distribution already produces); the file's stem names the node; or
//! - a file: one Z85 key per line, optionally followed by whitespace and a
//!   name; blank lines and lines starting with `#` are ignored.
//!
//! Keys are kept as their canonical Z85 text, which is also the `User-Id`
//! the ZAP handler gives each admitted connection, so a message's metadata
//! can be checked against the list without decoding.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::{key_to_z85, parse_key, read_key_file, Key};

/// A loaded allowlist: canonical Z85 key -> optional name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    keys: HashMap<Arc<str>, Option<Arc<str>>>,
}

/// Why an allowlist could not be loaded; names the file (and line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowlistError(pub String);

impl fmt::Display for AllowlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AllowlistError {}

impl Allowlist {
    /// Loads a directory of `*.public` files or a key-per-line file.
    pub fn load(path: &Path) -> Result<Allowlist, AllowlistError> {
        let meta =
            fs::metadata(path).map_err(|e| AllowlistError(format!("authorized keys {}: {e}", path.display())))?;
        if meta.is_dir() {
            Self::load_dir(path)
        } else {
            let text =
                fs::read(path).map_err(|e| AllowlistError(format!("authorized keys file {}: {e}", path.display())))?;
            let text = String::from_utf8(text)
                .map_err(|_| AllowlistError(format!("authorized keys file {}: not UTF-8 text", path.display())))?;
            Self::parse(&text).map_err(|e| AllowlistError(format!("authorized keys file {}: {e}", path.display())))
        }
    }

    fn load_dir(dir: &Path) -> Result<Allowlist, AllowlistError> {
        let mut list = Allowlist::default();
        for path in public_files(dir)? {
            let key = read_key_file(&path).map_err(|e| AllowlistError(format!("authorized keys: {e}")))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            list.insert(&key, name);
        }
        Ok(list)
    }

    /// Parses the key-per-line format; errors name the line.
    pub fn parse(text: &str) -> Result<Allowlist, String> {
        let mut list = Allowlist::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, name) = match line.split_once(char::is_whitespace) {
                Some((key, name)) => (key, Some(name.trim())),
                None => (line, None),
            };
            let key = parse_key(key).map_err(|e| format!("line {}: {e}", n + 1))?;
            list.insert(&key, name.filter(|s| !s.is_empty()).map(str::to_string));
        }
        Ok(list)
    }

    /// An allowlist of the given keys (for tests and embedding).
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = (&'a Key, Option<&'a str>)>) -> Allowlist {
        let mut list = Allowlist::default();
        for (key, name) in keys {
            list.insert(key, name.map(str::to_string));
        }
        list
    }

    fn insert(&mut self, key: &Key, name: Option<String>) {
        // The first name given for a key wins; a duplicate line is harmless.
        self.keys.entry(Arc::from(key_to_z85(key))).or_insert_with(|| name.map(Arc::from));
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The list's own copy of `z85` if it is listed (cheap to clone, so a
    /// session can hold it).
    pub fn lookup(&self, z85: &str) -> Option<&Arc<str>> {
        self.keys.get_key_value(z85).map(|(k, _)| k)
    }

    pub fn contains(&self, z85: &str) -> bool {
        self.keys.contains_key(z85)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.contains(&key_to_z85(key))
    }

    /// `"<z85> (<name>)"` or just the key, for log lines.
    pub fn describe(&self, z85: &str) -> String {
        match self.keys.get(z85) {
            Some(Some(name)) => format!("{z85} ({name})"),
            _ => z85.to_string(),
        }
    }

    /// Keys listed here but not in `other`.
    pub fn missing_from(&self, other: &Allowlist) -> usize {
        self.keys.keys().filter(|k| !other.keys.contains_key(&***k)).count()
    }
}

fn public_files(dir: &Path) -> Result<Vec<PathBuf>, AllowlistError> {
    let io = |e: std::io::Error| AllowlistError(format!("authorized keys directory {}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        // fs::metadata follows symlinks, as operators link keys into place;
        // one that cannot be followed is kept, so reading it reports it.
        if path.extension().is_some_and(|e| e == "public") && fs::metadata(&path).map_or(true, |m| !m.is_dir()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What the allowlist on disk looks like without reading it: enough to notice
/// an edit, an added or removed `*.public` file, or a file replaced by a
/// rename, by polling. Compared for equality only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, i64, i64, i64, i64, u64)>);

impl Fingerprint {
    /// Stats `path` (and, for a directory, each `*.public` in it). An error
    /// also counts as a state: it differs from any readable one.
    pub fn of(path: &Path) -> Fingerprint {
        let stat = |p: &Path| match fs::metadata(p) {
            Ok(m) => (p.to_path_buf(), m.ino(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.size()),
            Err(_) => (p.to_path_buf(), 0, -1, -1, -1, -1, 0),
        };
        let mut entries = vec![stat(path)];
        if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            if let Ok(files) = public_files(path) {
                entries.extend(files.iter().map(|f| stat(f)));
            }
        }
        Fingerprint(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;

    fn z85(k: &Key) -> String {
        key_to_z85(k)
    }

    #[test]
    fn file_format_keys_names_comments() {
        let (a, b) = (KeyPair::generate().unwrap().public, KeyPair::generate().unwrap().public);
        let text = format!("# fleet\n\n  {}   web01.example  \n{}\n{} dup\n", z85(&a), z85(&b), z85(&a));
        let list = Allowlist::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.describe(&z85(&a)), format!("{} (web01.example)", z85(&a)));
        assert_eq!(list.describe(&z85(&b)), z85(&b));
        assert!(list.contains_key(&a) && list.contains_key(&b));
        assert!(!list.contains_key(&KeyPair::generate().unwrap().public));
        assert_eq!(&**list.lookup(&z85(&a)).unwrap(), z85(&a));
    }

    #[test]
    fn bad_lines_are_named() {
        let a = KeyPair::generate().unwrap().public;
        let err = Allowlist::parse(&format!("{}\nnot-a-key name\n", z85(&a))).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(Allowlist::parse("").unwrap().is_empty());
    }

    #[test]
    fn missing_from_counts_removed_keys() {
        let (a, b) = (KeyPair::generate().unwrap().public, KeyPair::generate().unwrap().public);
        let old = Allowlist::from_keys([(&a, None), (&b, Some("b"))]);
        let new = Allowlist::from_keys([(&a, None)]);
        assert_eq!(old.missing_from(&new), 1);
        assert_eq!(new.missing_from(&old), 0);
    }
}
