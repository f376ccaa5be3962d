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
}
