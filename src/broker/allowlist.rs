//! The client-key allowlist (`mc0d --authorized-keys PATH`): which CURVE
//! public keys may complete the handshake, the MCollective identity each may
//! act as (the name it is listed under) and, optionally, its role.
//!
//! PATH is either
//! - a directory: every `*.public` file in it holds one Z85 key (the layout
//!   key distribution already produces) and its stem names the key; keys in
//!   `PATH/nodes/*.public` are node keys, in `PATH/clients/*.public` client
//!   keys, directly in PATH either (see [`Role`]); or
//! - a file: one `KEY [NAME [node|client]]` per line, `#` starting a
//!   comment; blank lines are ignored.
//!
//! A name must be an MCollective identity ([`crate::topics::is_identity`])
//! to bind its key to that identity. Allowlists written before names meant
//! anything held free-form names (`alice (admin)`); such a name is not an
//! error, so those lists keep loading: its key is taken as listed without a
//! name, and every load says so, naming the place ([`Allowlist::warnings`]).
//! A malformed key or role, and a key listed twice under different names,
//! are errors naming the place.
//! Keys are kept as their canonical Z85 text, which is also the `User-Id`
//! the ZAP handler gives each admitted connection, so a message's metadata
//! can be checked against the list without decoding.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::acl::Role;
use crate::keys::{key_to_z85, parse_key, read_key_file, Key};
use crate::topics::is_identity;

/// How a key is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its MCollective identity; `None` for a key listed without a name
    /// (file form only), which therefore cannot open a session.
    pub name: Option<Arc<str>>,
    pub role: Role,
    /// Where it is listed ("line 3", or the key file), for error messages.
    source: String,
}

/// A loaded allowlist: canonical Z85 key -> how it is listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    keys: HashMap<Arc<str>, Entry>,
    /// What the operator must hear at every load, one text per place.
    warnings: Vec<String>,
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

/// The role directories of the directory form.
const ROLE_DIRS: [(&str, Role); 2] = [("nodes", Role::Node), ("clients", Role::Client)];

/// Words that can only be meant as the role column of the file form: a line
/// with one past its name must be exactly `KEY IDENTITY node|client`.
fn is_role_word(word: &str) -> bool {
    ["node", "nodes", "client", "clients"].iter().any(|r| word.eq_ignore_ascii_case(r))
}

impl Allowlist {
    /// Loads a directory of `*.public` files (with optional `nodes/` and
    /// `clients/`) or a key-per-line file.
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
            let at = format!("authorized keys file {}", path.display());
            let mut list = Self::parse(&text).map_err(|e| AllowlistError(format!("{at}: {e}")))?;
            list.warnings.iter_mut().for_each(|w| *w = format!("{at}: {w}"));
            Ok(list)
        }
    }

    fn load_dir(dir: &Path) -> Result<Allowlist, AllowlistError> {
        let mut list = Allowlist::default();
        for (path, role) in listed_files(dir)? {
            let key = read_key_file(&path).map_err(|e| AllowlistError(format!("authorized keys: {e}")))?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let source = path.display().to_string();
            let warning = list.identity_or_warn(&key, &stem, &source).map(|w| format!("authorized keys: {w}"));
            list.insert(&key, warning.is_none().then_some(stem.as_str()), role, source)
                .map_err(|e| AllowlistError(format!("authorized keys: {e}")))?;
            list.warnings.extend(warning);
        }
        Ok(list)
    }

    /// Parses the key-per-line format; errors and warnings name the line.
    pub fn parse(text: &str) -> Result<Allowlist, String> {
        let mut list = Allowlist::default();
        for (n, line) in text.lines().enumerate() {
            let at = format!("line {}", n + 1);
            let mut words = line.split_whitespace();
            let Some(key) = words.next().filter(|w| !w.starts_with('#')) else { continue };
            // Z85 has '#' in its alphabet: comments start only after the key.
            let rest: Vec<&str> = words.take_while(|w| !w.starts_with('#')).collect();
            let key = parse_key(key).map_err(|e| format!("{at}: {e}"))?;
            let (name, role) = match rest.as_slice() {
                [] => (None, Role::Any),
                // A role column makes it a line of the roles format, which
                // must be exactly that.
                [name, role] if is_role_word(role) => match *role {
                    "node" => (Some(name.to_string()), Role::Node),
                    "client" => (Some(name.to_string()), Role::Client),
                    other => return Err(format!("{at}: unknown role {other:?} (expected node or client)")),
                },
                [_, more @ ..] if more.iter().any(|w| is_role_word(w)) => {
                    return Err(format!(
                        "{at}: expected \"<key> [<identity> [node|client]]\", found {:?} (remarks go after '#')",
                        rest.join(" ")
                    ))
                }
                // A name alone, which lists written before roles may have
                // given in several words.
                words => {
                    let name = words.join(" ");
                    match list.identity_or_warn(&key, &name, &at) {
                        None => (Some(name), Role::Any),
                        Some(warning) => {
                            list.warnings.push(warning);
                            (None, Role::Any)
                        }
                    }
                }
            };
            list.insert(&key, name.as_deref(), role, at)?;
        }
        Ok(list)
    }

    /// `None` if `name` is an MCollective identity; otherwise the warning
    /// that `key` at `source` is taken as listed without a name.
    fn identity_or_warn(&self, key: &Key, name: &str, source: &str) -> Option<String> {
        (!is_identity(name)).then(|| {
            format!(
                "{source}: name {name:?} is not an MCollective identity (letters, digits, '_', '.' and '-' only): \
                 key {} is taken as listed without a name, so its CONNECT is refused (allowed and logged with \
                 --identity-check log); list it under the identity its node or client uses",
                key_to_z85(key)
            )
        })
    }

    /// An allowlist of the given keys, checked like a loaded one (for tests
    /// and embedding).
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = (&'a Key, Option<&'a str>, Role)>,
    ) -> Result<Allowlist, AllowlistError> {
        let mut list = Allowlist::default();
        for (n, (key, name, role)) in keys.into_iter().enumerate() {
            list.insert(key, name, role, format!("entry {}", n + 1)).map_err(AllowlistError)?;
        }
        Ok(list)
    }

    fn insert(&mut self, key: &Key, name: Option<&str>, role: Role, source: String) -> Result<(), String> {
        if let Some(name) = name.filter(|n| !is_identity(n)) {
            return Err(format!(
                "{source}: name {name:?} is not an MCollective identity (letters, digits, '_', '.' and '-' only)"
            ));
        }
        let z85 = key_to_z85(key);
        let name: Option<Arc<str>> = name.map(Arc::from);
        match self.keys.get_mut(z85.as_str()) {
            None => {
                self.keys.insert(Arc::from(z85), Entry { name, role, source });
            }
            Some(old) => match (&old.name, &name) {
                (Some(a), Some(b)) if a != b => {
                    return Err(format!(
                        "key {z85} is listed as \"{a}\" in {} and as \"{b}\" in {source}; a key is one identity",
                        old.source
                    ))
                }
                _ => {
                    old.role = old.role.merge(role);
                    if old.name.is_none() {
                        old.name = name;
                    }
                }
            },
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The list's own copy of `z85` (cheap to clone, so a session can hold
    /// it) and how it is listed, if it is.
    pub fn entry(&self, z85: &str) -> Option<(&Arc<str>, &Entry)> {
        self.keys.get_key_value(z85)
    }

    pub fn contains(&self, z85: &str) -> bool {
        self.keys.contains_key(z85)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.contains(&key_to_z85(key))
    }

    /// `"<z85> (<name>)"` or just the key, for log lines.
    pub fn describe(&self, z85: &str) -> String {
        match self.keys.get(z85).and_then(|e| e.name.as_deref()) {
            Some(name) => format!("{z85} ({name})"),
            None => z85.to_string(),
        }
    }

    /// Keys listed here but not in `other`.
    pub fn missing_from(&self, other: &Allowlist) -> usize {
        self.keys.keys().filter(|k| !other.keys.contains_key(&***k)).count()
    }

    /// Keys listed without a name: they cannot open a session.
    pub fn unnamed(&self) -> usize {
        self.keys.values().filter(|e| e.name.is_none()).count()
    }

    /// What loading found wrong but not fatal, one text per place (file and
    /// line, or key file): names that are not MCollective identities. To be
    /// said at every load.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Keys listed with a role (node or client only), per role.
    pub fn with_role(&self, role: Role) -> usize {
        self.keys.values().filter(|e| e.role == role).count()
    }
}

/// Every key file of the directory form with the role its place gives it,
/// in a stable order.
fn listed_files(dir: &Path) -> Result<Vec<(PathBuf, Role)>, AllowlistError> {
    let mut files: Vec<(PathBuf, Role)> = public_files(dir)?.into_iter().map(|f| (f, Role::Any)).collect();
    for (sub, role) in ROLE_DIRS {
        let sub = dir.join(sub);
        if fs::metadata(&sub).is_ok_and(|m| m.is_dir()) {
            files.extend(public_files(&sub)?.into_iter().map(|f| (f, role)));
        }
    }
    Ok(files)
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
    /// Stats `path` (and, for a directory, its role directories and each key
    /// file). An error also counts as a state: it differs from any readable
    /// one.
    pub fn of(path: &Path) -> Fingerprint {
        let stat = |p: &Path| match fs::metadata(p) {
            Ok(m) => (p.to_path_buf(), m.ino(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.size()),
            Err(_) => (p.to_path_buf(), 0, -1, -1, -1, -1, 0),
        };
        let mut entries = vec![stat(path)];
        if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            // A role directory appearing or going changes its entry.
            entries.extend(ROLE_DIRS.iter().map(|(sub, _)| stat(&path.join(sub))));
            if let Ok(files) = listed_files(path) {
                entries.extend(files.iter().map(|(f, _)| stat(f)));
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

    fn key() -> Key {
        KeyPair::generate().unwrap().public
    }

    fn name_of<'a>(list: &'a Allowlist, k: &Key) -> (Option<&'a str>, Role) {
        let (_, e) = list.entry(&z85(k)).expect("listed");
        (e.name.as_deref(), e.role)
    }

    #[test]
    fn file_format_keys_names_roles_comments() {
        let (a, b, c, d) = (key(), key(), key(), key());
        let text = format!(
            "# fleet\n\n  {}   web01.example  \n{}\n{} admin client # alice's laptop\n{} web02 node\n{} web01.example\n",
            z85(&a),
            z85(&b),
            z85(&c),
            z85(&d),
            z85(&a)
        );
        let list = Allowlist::parse(&text).unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list.describe(&z85(&a)), format!("{} (web01.example)", z85(&a)));
        assert_eq!(list.describe(&z85(&b)), z85(&b));
        assert_eq!(name_of(&list, &a), (Some("web01.example"), Role::Any));
        assert_eq!(name_of(&list, &b), (None, Role::Any));
        assert_eq!(name_of(&list, &c), (Some("admin"), Role::Client));
        assert_eq!(name_of(&list, &d), (Some("web02"), Role::Node));
        assert!(list.contains_key(&a) && list.contains_key(&b));
        assert!(!list.contains_key(&key()));
        assert_eq!(&**list.entry(&z85(&a)).unwrap().0, z85(&a));
        assert_eq!((list.unnamed(), list.with_role(Role::Node), list.with_role(Role::Client)), (1, 1, 1));
    }

    #[test]
    fn bad_keys_and_roles_are_errors_naming_the_line() {
        let a = key();
        let bad = |line: String| Allowlist::parse(&format!("{}\n{line}\n", z85(&a))).unwrap_err();
        let err = bad("not-a-key name".into());
        assert!(err.starts_with("line 2:"), "{err}");
        for role in ["nodes", "Node", "CLIENTS"] {
            let err = bad(format!("{} web01 {role}", z85(&key())));
            assert!(err.starts_with("line 2:") && err.contains("unknown role") && err.contains(role), "{err}");
        }
        let err = bad(format!("{} web01 node extra", z85(&key())));
        assert!(err.starts_with("line 2:") && err.contains("remarks go after '#'"), "{err}");
        let err = bad(format!("{} alice (admin) client", z85(&key())));
        assert!(err.starts_with("line 2:") && err.contains("remarks go after '#'"), "{err}");
        // With a role, the name must be an identity.
        let err = bad(format!("{} web/01 node", z85(&key())));
        assert!(err.starts_with("line 2:") && err.contains("not an MCollective identity"), "{err}");
        assert!(Allowlist::parse("").unwrap().is_empty());
    }

    /// Lists written before names had to be identities held free-form
    /// names: they load, each such key without a name, with a warning
    /// naming the line.
    #[test]
    fn names_that_are_not_identities_load_as_unnamed_with_a_warning() {
        let (a, b, c, d) = (key(), key(), key(), key());
        let text = format!(
            "{} alice (admin)\n{} web/01\n{}   Bob   Smith  # laptop\n{} web02\n",
            z85(&a),
            z85(&b),
            z85(&c),
            z85(&d)
        );
        let list = Allowlist::parse(&text).unwrap();
        assert_eq!(list.len(), 4);
        for k in [&a, &b, &c] {
            assert_eq!(name_of(&list, k), (None, Role::Any));
        }
        assert_eq!(name_of(&list, &d), (Some("web02"), Role::Any));
        assert_eq!(list.unnamed(), 3);
        let warnings = list.warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        for (w, (line, name, k)) in
            warnings.iter().zip([(1, "alice (admin)", &a), (2, "web/01", &b), (3, "Bob Smith", &c)])
        {
            assert!(w.starts_with(&format!("line {line}: name {name:?} is not an MCollective identity")), "{w}");
            assert!(w.contains(&z85(k)) && w.contains("taken as listed without a name"), "{w}");
        }
        // The same key under a legacy name and an identity: the identity.
        let list = Allowlist::parse(&format!("{k} alice (admin)\n{k} alice\n", k = z85(&a))).unwrap();
        assert_eq!(name_of(&list, &a), (Some("alice"), Role::Any));

        // load() names the file.
        let file = std::env::temp_dir().join(format!("mc0-allowlist-legacy-{}", std::process::id()));
        fs::write(&file, &text).unwrap();
        let list = Allowlist::load(&file).unwrap();
        let at = format!("authorized keys file {}: line 1: name \"alice (admin)\"", file.display());
        assert!(list.warnings()[0].starts_with(&at), "{:?}", list.warnings());
        fs::remove_file(&file).unwrap();
    }

    #[test]
    fn one_key_two_names_is_an_error_naming_both_places() {
        let a = key();
        let err = Allowlist::parse(&format!("{k} web01\n\n{k} web02\n", k = z85(&a))).unwrap_err();
        assert!(err.contains("line 1") && err.contains("line 3"), "{err}");
        assert!(err.contains("\"web01\"") && err.contains("\"web02\""), "{err}");
        // The same name twice, in two roles: either role.
        let list = Allowlist::parse(&format!("{k} web01 node\n{k} web01 client\n", k = z85(&a))).unwrap();
        assert_eq!(name_of(&list, &a), (Some("web01"), Role::Any));
    }

    #[test]
    fn directory_form_with_role_directories() {
        let dir = std::env::temp_dir().join(format!("mc0-allowlist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("nodes")).unwrap();
        fs::create_dir_all(dir.join("clients")).unwrap();
        fs::create_dir_all(dir.join("other")).unwrap();
        let (flat, node, client, ignored) = (key(), key(), key(), key());
        let write = |p: PathBuf, k: &Key| fs::write(p, format!("{}\n", z85(k))).unwrap();
        write(dir.join("legacy.public"), &flat);
        write(dir.join("nodes/web01.public"), &node);
        write(dir.join("clients/alice.public"), &client);
        write(dir.join("other/x.public"), &ignored);
        let before = Fingerprint::of(&dir);
        let list = Allowlist::load(&dir).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(name_of(&list, &flat), (Some("legacy"), Role::Any));
        assert_eq!(name_of(&list, &node), (Some("web01"), Role::Node));
        assert_eq!(name_of(&list, &client), (Some("alice"), Role::Client));
        assert!(!list.contains_key(&ignored));

        write(dir.join("nodes/web02.public"), &key());
        assert_ne!(Fingerprint::of(&dir), before, "a file added in a role directory is noticed");

        write(dir.join("clients/web01.public"), &key());
        write(dir.join("clients/bob.public"), &node);
        let err = Allowlist::load(&dir).unwrap_err().0;
        assert!(err.contains("nodes/web01.public") && err.contains("clients/bob.public"), "{err}");
        fs::remove_file(dir.join("clients/bob.public")).unwrap();
        // A file name that is not an identity: loaded, unnamed, warned about.
        let odd = key();
        write(dir.join("clients/bad name.public"), &odd);
        let list = Allowlist::load(&dir).unwrap();
        assert_eq!(name_of(&list, &odd), (None, Role::Client));
        let [warning] = list.warnings() else { panic!("{:?}", list.warnings()) };
        assert!(warning.contains("bad name.public") && warning.contains("not an MCollective identity"), "{warning}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_from_counts_removed_keys() {
        let (a, b) = (key(), key());
        let old = Allowlist::from_keys([(&a, None, Role::Any), (&b, Some("b"), Role::Node)]).unwrap();
        let new = Allowlist::from_keys([(&a, None, Role::Any)]).unwrap();
        assert_eq!(old.missing_from(&new), 1);
        assert_eq!(new.missing_from(&old), 0);
        assert!(Allowlist::from_keys([(&a, Some("no good"), Role::Any)]).is_err());
    }
}
