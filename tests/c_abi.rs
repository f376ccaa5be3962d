//! The C ABI from C: tests/c/roundtrip.c compiled with the system `cc`
//! against include/mc0.h and the built libmc0.so (once with flags from
//! pkg-config and mc0.pc.in, once directly), run against a real mc0d, and
//! run again under valgrind, which must report no errors and no leaks.

mod common_connector;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common_connector::{crate_dir, libmc0, run, Broker, TempDir};

const CFLAGS: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-D_POSIX_C_SOURCE=200809L"];

/// A directory where the dynamic loader finds `libmc0.so.0` (the SONAME
/// the programs record) next to a `libmc0.so` to link against.
fn lib_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["libmc0.so", "libmc0.so.0"] {
        std::os::unix::fs::symlink(libmc0(), dir.join(name)).unwrap();
    }
    dir
}

fn compile(out: &Path, flags: &[String]) {
    let mut cmd = Command::new("cc");
    cmd.args(CFLAGS).arg(crate_dir().join("tests/c/roundtrip.c")).arg("-o").arg(out).args(flags).arg("-pthread");
    let (status, stdout, stderr) = run(cmd, Duration::from_secs(120));
    assert!(status.success(), "cc failed ({status}):\n{stdout}\n{stderr}");
}

fn program_args(broker: &Broker, tmp: &Path, timeout_secs: u32) -> Vec<String> {
    let (public, private) = common_connector::write_keys(tmp, "c-client");
    vec![
        "127.0.0.1".into(),
        broker.port.to_string(),
        broker.public_key.display().to_string(),
        public.display().to_string(),
        private.display().to_string(),
        timeout_secs.to_string(),
    ]
}

fn run_program(program: &Path, args: &[String], timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd, timeout)
}

#[test]
fn c_program_built_with_pkg_config() {
    let broker = Broker::start();
    let tmp = TempDir::new("c-pkg");
    let lib = lib_dir(tmp.path());
    let template = std::fs::read_to_string(crate_dir().join("mc0.pc.in")).unwrap();
    let pc = template
        .replace("@PREFIX@", &crate_dir().display().to_string())
        .replace("@LIBDIR@", &lib.display().to_string())
        .replace("@INCLUDEDIR@", &crate_dir().join("include").display().to_string())
        .replace("@VERSION@", mc0::VERSION);
    assert!(!pc.contains('@'), "unfilled placeholder in mc0.pc.in:\n{pc}");
    std::fs::write(tmp.path().join("mc0.pc"), pc).unwrap();

    let mut cmd = Command::new("pkg-config");
    cmd.env("PKG_CONFIG_PATH", tmp.path()).args(["--cflags", "--libs", "mc0"]);
    let (status, flags, stderr) = run(cmd, Duration::from_secs(30));
    assert!(status.success(), "pkg-config failed: {stderr}");
    let mut cmd = Command::new("pkg-config");
    cmd.env("PKG_CONFIG_PATH", tmp.path()).args(["--modversion", "mc0"]);
    let (_, version, _) = run(cmd, Duration::from_secs(30));
    assert_eq!(version.trim(), mc0::VERSION);

    let mut flags: Vec<String> = flags.split_whitespace().map(str::to_string).collect();
    flags.push(format!("-Wl,-rpath,{}", lib.display()));
    let program = tmp.path().join("roundtrip-pkg");
    compile(&program, &flags);
    let (status, stdout, stderr) =
        run_program(&program, &program_args(&broker, tmp.path(), 20), Duration::from_secs(120));
    assert!(status.success() && stdout.contains("roundtrip: ok"), "{status}\n{stdout}\n{stderr}");
}

#[test]
fn c_program_linked_directly_and_clean_under_valgrind() {
    let broker = Broker::start();
    let tmp = TempDir::new("c-direct");
    let lib = lib_dir(tmp.path());
    let program = tmp.path().join("roundtrip");
    let flags = vec![
        format!("-I{}", crate_dir().join("include").display()),
        format!("-L{}", lib.display()),
        "-lmc0".to_string(),
        format!("-Wl,-rpath,{}", lib.display()),
    ];
    compile(&program, &flags);
    let args = program_args(&broker, tmp.path(), 20);
    let (status, stdout, stderr) = run_program(&program, &args, Duration::from_secs(120));
    assert!(status.success() && stdout.contains("roundtrip: ok"), "{status}\n{stdout}\n{stderr}");

    let valgrind = Command::new("valgrind").arg("--version").output();
    if valgrind.is_err() {
        eprintln!("valgrind not installed: skipping the leak check");
        return;
    }
    // CURVE under valgrind is slow: give every wait a minute.
    let args = program_args(&broker, tmp.path(), 60);
    let mut cmd = Command::new("valgrind");
    cmd.args(["--leak-check=full", "--error-exitcode=99", "--errors-for-leak-kinds=definite,possible", "-q"])
        .arg(&program)
        .args(&args);
    let (status, stdout, stderr) = run(cmd, Duration::from_secs(600));
    assert!(status.success() && stdout.contains("roundtrip: ok"), "valgrind: {status}\n{stdout}\n{stderr}");
}
