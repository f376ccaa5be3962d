//! `mc0d`'s command line: usage and startup errors exit 2 with one line
//! naming the culprit; --help/--version exit 0; signals stop it cleanly.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{run_mc0d, Mc0d, TempDir};

const T: Duration = Duration::from_secs(20);

fn expect_usage_error(args: &[&str], culprit: &str) {
    let (status, stdout, stderr) = run_mc0d(args, T);
    assert_eq!(status.code(), Some(2), "{args:?}: stderr {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got {stderr:?}");
    assert!(stderr.contains(culprit), "{args:?}: {stderr:?} should name {culprit:?}");
    assert!(stdout.is_empty(), "{args:?}: stdout {stdout:?}");
}

#[test]
fn help_and_version_exit_zero() {
    let (status, stdout, _) = run_mc0d(&["--help"], T);
    assert!(status.success());
    assert!(stdout.contains("--curve-private-key") && stdout.contains("--no-curve"), "{stdout}");
    let (status, stdout, _) = run_mc0d(&["--version"], T);
    assert!(status.success());
    assert_eq!(stdout.trim(), format!("mc0d {}", mc0::VERSION));
}

#[test]
fn key_file_problems_name_the_file() {
    let dir = TempDir::new("cli");
    let missing = dir.path().join("missing.private");
    expect_usage_error(&["--curve-private-key", missing.to_str().unwrap()], "missing.private");
    let bad = dir.path().join("bad.private");
    std::fs::write(&bad, "not a key\n").unwrap();
    expect_usage_error(&["--curve-private-key", bad.to_str().unwrap()], "bad.private");
    expect_usage_error(&[&format!("--curve-private-key={}", bad.display())], "bad.private");
    expect_usage_error(&[], "--curve-private-key");
}

#[test]
fn bad_flags_and_values_are_rejected() {
    expect_usage_error(&["--no-curve", "--frobnicate"], "--frobnicate");
    expect_usage_error(&["--no-curve", "--port", "http"], "--port");
    expect_usage_error(&["--no-curve", "--port=70000"], "--port");
    expect_usage_error(&["--no-curve", "--log-level", "loud"], "loud");
    expect_usage_error(&["--no-curve", "--status-interval", "-1"], "--status-interval");
    expect_usage_error(&["--no-curve", "--bind"], "--bind");
}

#[test]
fn port_in_use_is_a_startup_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    expect_usage_error(&["--no-curve", "--bind", "127.0.0.1", "--port", &port], &port);
    drop(listener);
}

#[test]
fn bad_bind_address_is_a_startup_error() {
    expect_usage_error(&["--no-curve", "--bind", "256.1.2.3", "--port", "61999"], "256.1.2.3");
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut broker = Mc0d::start();
        let status = broker.stop_with(signal, Duration::from_secs(10)).expect("exits within 10 s");
        assert_eq!(status.code(), Some(0), "signal {signal}: {status}");
        let log = broker.log.wait_for(Duration::from_secs(5), |l| l.contains("stopping:"));
        assert!(log.is_some(), "final status line; log:\n{}", broker.log.text());
    }
}
