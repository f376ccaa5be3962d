//! The clap definitions of `mc0d` and `mc0-keygen` (which the man pages and
//! completions are generated from) are well-formed, and README's option
//! table lists exactly mc0d's options.

use std::collections::BTreeSet;

use clap::CommandFactory;
use mc0d::cli::{KeygenArgs, Mc0dArgs};

#[test]
fn the_definitions_are_consistent() {
    Mc0dArgs::command().debug_assert();
    KeygenArgs::command().debug_assert();
}

#[test]
fn the_readme_table_lists_every_mc0d_option_and_no_other() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("## The broker: mc0d").nth(1).expect("README has the broker section");
    // Rows of the option table: "| `--name ARG` | default | meaning |".
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `--"))
        .map(|l| l.split([' ', '`']).next().unwrap().to_string())
        .collect();
    let command = Mc0dArgs::command();
    let defined: BTreeSet<String> =
        command.get_arguments().filter_map(|a| a.get_long()).map(str::to_string).chain(["help".into()]).collect();
    assert_eq!(documented, defined, "README's mc0d option table vs mc0d::cli::Mc0dArgs");
}
