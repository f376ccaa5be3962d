//! The C ABI from Python: tests/python/roundtrip.py loads the built
//! libmc0.so with ctypes and does a round trip through a real mc0d.

mod common_connector;

use std::process::Command;
use std::time::Duration;

use common_connector::{crate_dir, libmc0, run, write_keys, Broker};

#[test]
fn python_ctypes_round_trip() {
    let broker = Broker::start();
    let (public, private) = write_keys(broker.dir.path(), "py");
    let mut cmd = Command::new("python3");
    cmd.arg(crate_dir().join("tests/python/roundtrip.py"))
        .arg(libmc0())
        .args(["127.0.0.1", &broker.port.to_string()])
        .arg(&broker.public_key)
        .arg(&public)
        .arg(&private);
    let (status, stdout, stderr) = run(cmd, Duration::from_secs(120));
    assert!(status.success() && stdout.contains("python roundtrip: ok"), "{status}\n{stdout}\n{stderr}");
}
