//! Generates the C header from the `ffi` module with cbindgen into
//! `$OUT_DIR/mc0.h`. The committed `include/mc0.h` must equal it: a test
//! compares them, and `make header` refreshes the committed copy.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let out_dir = std::env::var("OUT_DIR").unwrap();
    // cbindgen reads the whole crate (any extern declaration can end up in
    // the header), so any source change reruns it.
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    match cbindgen::generate_with_config(&crate_dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(format!("{out_dir}/mc0.h"));
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
    // SONAME: bumped only when the ABI breaks.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmc0.so.0");
    link_soname_in_profile_dir(&out_dir);
}

/// Makes the build tree link like an install: a program linked with
/// `-Ltarget/release -lmc0` records the SONAME `libmc0.so.0` and looks for
/// that name at run time, but cargo writes only `libmc0.so`. A build script
/// runs before the library is linked and cargo has no post-build step, so it
/// leaves the symlink `libmc0.so.0 -> libmc0.so` in the profile directory
/// (dangling until the link, then right on every rebuild). `OUT_DIR` is
/// `<target>/<profile>/build/mc0-<hash>/out`; any other layout is left alone
/// with a warning rather than guessed at.
fn link_soname_in_profile_dir(out_dir: &str) {
    let out = std::path::Path::new(out_dir);
    let profile = match out.ancestors().nth(3) {
        Some(dir) if out.ancestors().nth(2).and_then(|b| b.file_name()) == Some("build".as_ref()) => dir,
        _ => {
            println!("cargo:warning=unexpected OUT_DIR {out_dir}: no libmc0.so.0 link in the build tree");
            return;
        }
    };
    let link = profile.join("libmc0.so.0");
    if std::fs::read_link(&link).map(|t| t == std::path::Path::new("libmc0.so")).unwrap_or(false) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink("libmc0.so", &link) {
        println!("cargo:warning=cannot create {}: {e}", link.display());
    }
}
