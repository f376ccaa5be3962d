//! mc0-bench: the mc0 benchmark tool (docs/BENCHMARKS.md). It lives beside
//! the library rather than in it: nothing here is part of libmc0's API.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
