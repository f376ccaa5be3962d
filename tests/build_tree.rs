//! The build tree links like an install: after `cargo build --release`, a
//! C program linked with `-Ltarget/release -lmc0` (no rpath) records the
//! SONAME `libmc0.so.0` and runs with `LD_LIBRARY_PATH=target/release`,
//! thanks to the `libmc0.so.0 -> libmc0.so` link build.rs leaves there.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{crate_dir, run, TempDir};

#[test]
fn c_program_links_and_runs_against_the_profile_dir() {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let link = profile.join("libmc0.so.0");
    assert_eq!(
        std::fs::read_link(&link).ok().as_deref(),
        Some(Path::new("libmc0.so")),
        "{} should be a link to libmc0.so (made by build.rs)",
        link.display()
    );
    assert!(
        profile.join("libmc0.so").is_file(),
        "{} is missing: run `cargo build --release` (or `make test`) before this test",
        profile.join("libmc0.so").display()
    );

    let tmp = TempDir::new("build-tree");
    let source = tmp.path().join("version.c");
    std::fs::write(
        &source,
        "#include <mc0.h>\n#include <stdio.h>\nint main(void) { printf(\"%s\\n\", mc0_version()); return 0; }\n",
    )
    .unwrap();
    let program = tmp.path().join("version");
    let mut cmd = Command::new("cc");
    cmd.arg(&source)
        .arg(format!("-I{}", crate_dir().join("include").display()))
        .arg(format!("-L{}", profile.display()))
        .arg("-lmc0")
        .arg("-o")
        .arg(&program);
    let (status, stdout, stderr) = run(cmd, Duration::from_secs(120));
    assert!(status.success(), "cc -L{} -lmc0 failed ({status}):\n{stdout}\n{stderr}", profile.display());

    let mut cmd = Command::new("readelf");
    cmd.arg("-d").arg(&program);
    let (_, dynamic, _) = run(cmd, Duration::from_secs(30));
    assert!(dynamic.contains("[libmc0.so.0]"), "the program does not need libmc0.so.0:\n{dynamic}");
    assert!(!dynamic.contains("RUNPATH") && !dynamic.contains("RPATH"), "unexpected rpath:\n{dynamic}");

    let mut cmd = Command::new(&program);
    cmd.env("LD_LIBRARY_PATH", profile);
    let (status, stdout, stderr) = run(cmd, Duration::from_secs(30));
    assert!(
        status.success(),
        "LD_LIBRARY_PATH={} {} failed ({status}):\n{stderr}",
        profile.display(),
        program.display()
    );
    assert_eq!(stdout.trim(), mc0::VERSION);
}
