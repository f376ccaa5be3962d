//! mc0-keygen as an operator uses it: files, modes, refusal to overwrite,
//! and keys libzmq accepts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;

fn keygen(args: &[&str], dir: &Path) -> Output {
    Command::new(common::bin("mc0-keygen")).args(args).current_dir(dir).output().expect("run mc0-keygen")
}

#[test]
fn writes_a_keypair_libzmq_accepts() {
    let tmp = TempDir::new("keygen-write");
    let dir = tmp.path();
    let out = keygen(&["node1"], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(dir.join("node1.public")).unwrap();
    let private = std::fs::read_to_string(dir.join("node1.private")).unwrap();
    for text in [&public, &private] {
        assert_eq!(text.len(), 41, "40 Z85 characters and a newline: {text:?}");
        assert!(text.ends_with('\n'));
    }
    let mode = std::fs::metadata(dir.join("node1.private")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The public half is the one libzmq derives from the private half.
    let secret = mc0::keys::read_key_file(dir.join("node1.private")).unwrap();
    let derived = mc0::keys::KeyPair::from_secret(secret).unwrap();
    assert_eq!(mc0::keys::key_to_z85(&derived.public), public.trim());
    // And libzmq's own Z85 decoder (what ffi-rzmq uses) reads the files.
    assert_eq!(zmq::z85_decode(public.trim()).unwrap(), derived.public.to_vec());
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = TempDir::new("keygen-force");
    let dir = tmp.path();
    assert!(keygen(&["n"], dir).status.success());
    let before = std::fs::read_to_string(dir.join("n.private")).unwrap();
    let out = keygen(&["n"], dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("n.public"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.join("n.private")).unwrap(), before);
    assert!(keygen(&["--force", "n"], dir).status.success());
    assert_ne!(std::fs::read_to_string(dir.join("n.private")).unwrap(), before);
}

#[test]
fn prints_two_keys() {
    let tmp = TempDir::new("keygen-print");
    let dir = tmp.path();
    let out = keygen(&["--print"], dir);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let public = mc0::keys::parse_key(lines[0]).unwrap();
    let secret = mc0::keys::parse_key(lines[1]).unwrap();
    assert_eq!(mc0::keys::KeyPair::from_secret(secret).unwrap().public, public);
    assert!(std::fs::read_dir(dir).unwrap().next().is_none(), "--print writes no files");
}

#[test]
fn bad_usage_names_the_problem() {
    let tmp = TempDir::new("keygen-usage");
    let dir = tmp.path();
    for (args, needle) in [(&["--bogus"][..], "--bogus"), (&[][..], "NAME"), (&["a", "b"][..], "\"b\"")] {
        let out = keygen(args, dir);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = keygen(&["nodir/sub/x"], dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nodir/sub/x.private"));
    assert!(keygen(&["--help"], dir).status.success());
}
