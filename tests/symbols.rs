//! libmc0 carries the connector only: no broker code in `libmc0.a` or
//! `libmc0.so` (the broker is package `mc0d`), and the shared library
//! exports nothing but the C API (`mc0_*`).

mod common;

use std::path::Path;
use std::process::Command;

/// Demangled symbol names (`nm -C`), with `extra` options.
fn symbols(lib: &Path, extra: &[&str]) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-C", "--defined-only"])
        .args(extra)
        .arg(lib)
        .output()
        .unwrap_or_else(|e| panic!("run nm (binutils) on {}: {e}", lib.display()));
    // nm complains on stderr about members without symbols; only the exit
    // status matters.
    assert!(out.status.success(), "nm {}: {}", lib.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "ADDRESS TYPE NAME"; demangled names may hold spaces.
        .filter_map(|l| l.splitn(3, ' ').nth(2).map(str::to_string))
        .collect()
}

/// Names only broker code has. (libzmq's and the `zmq` crate's
/// `zap_domain` setters are not broker code, hence `zap::`.)
const BROKER_MARKS: [&str; 5] = ["mc0d", "broker", "allowlist", "zap::", "zaphandler"];

fn assert_no_broker_code(lib: &Path) {
    let all = symbols(lib, &[]);
    assert!(all.iter().any(|s| s.contains("mc0_connector_new")), "{}: no C API symbols read", lib.display());
    let broker: Vec<&String> =
        all.iter().filter(|s| BROKER_MARKS.iter().any(|m| s.to_lowercase().contains(m))).collect();
    assert!(broker.is_empty(), "{} carries broker code: {broker:#?}", lib.display());
}

#[test]
fn the_static_library_carries_no_broker_code() {
    assert_no_broker_code(&common::library("libmc0.a"));
}

#[test]
fn the_shared_library_carries_no_broker_code_and_exports_only_the_c_api() {
    let lib = common::libmc0();
    assert_no_broker_code(&lib);
    let exported = symbols(&lib, &["-D"]);
    assert!(exported.iter().any(|s| s == "mc0_version"), "{exported:?}");
    let foreign: Vec<&String> = exported.iter().filter(|s| !s.starts_with("mc0_")).collect();
    assert!(foreign.is_empty(), "libmc0.so exports more than the C API: {foreign:#?}");
}
