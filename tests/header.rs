//! include/mc0.h is generated (build.rs runs cbindgen into $OUT_DIR) but
//! committed, so C users need no Rust toolchain to read it. These tests fail
//! when the committed copy is stale, and check that it is clean C and C++.

use std::path::PathBuf;
use std::process::Command;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/mc0.h")
}

fn generated() -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join("mc0.h")
}

#[test]
fn committed_header_matches_the_generated_one() {
    let generated_text = std::fs::read_to_string(generated()).expect("build.rs writes $OUT_DIR/mc0.h");
    let committed_text = std::fs::read_to_string(committed()).unwrap_or_default();
    if generated_text != committed_text {
        panic!(
            "include/mc0.h is out of date with src/ffi. Refresh it with\n    make header\nor\n    cp {} {}",
            generated().display(),
            committed().display()
        );
    }
}

/// Only the mc0 API: a stray `extern "C"` declaration elsewhere in the crate
/// (e.g. of a libzmq function) must be excluded in cbindgen.toml.
#[test]
fn header_declares_only_mc0_functions() {
    let text = std::fs::read_to_string(generated()).unwrap();
    for line in text.lines() {
        let Some(paren) = line.find('(') else { continue };
        let head = &line[..paren];
        if line.starts_with(' ') || line.starts_with('#') || head.contains("typedef") || !head.contains(' ') {
            continue;
        }
        let name = head.rsplit([' ', '*']).next().unwrap_or("");
        assert!(name.starts_with("mc0_"), "non-mc0 function in the header: {line}");
    }
}

#[test]
fn header_is_clean_c99_and_cxx() {
    let dir = std::env::temp_dir().join(format!("mc0-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("use.c");
    // Code written against the header before mc0_status became a uint32_t
    // (`enum mc0_status`) must still compile, in C and C++.
    let program = "#include \"mc0.h\"\n\
                   int main(void) {\n\
                   \x20 enum mc0_status old_style = MC0_ERR_TIMEOUT;\n\
                   \x20 mc0_status new_style = old_style;\n\
                   \x20 return mc0_version() == 0 || mc0_status_str(new_style) == 0;\n\
                   }\n";
    std::fs::write(&source, program).unwrap();
    let include = committed().parent().unwrap().to_path_buf();
    for (compiler, flags) in [
        ("cc", &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"][..]),
        ("c++", &["-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"][..]),
    ] {
        let out = Command::new(compiler)
            .args(flags)
            .arg("-I")
            .arg(&include)
            .arg("-fsyntax-only")
            .arg(&source)
            .output()
            .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
        assert!(out.status.success(), "{compiler} rejects mc0.h:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
