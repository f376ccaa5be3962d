//! Writes the man pages and shell completions of `mc0d` and `mc0-keygen`,
//! generated from the clap definitions the binaries parse with
//! ([`mc0d::cli`]), into a directory (`make man`: `target/man`):
//!
//! ```text
//! mc0d.1  mc0-keygen.1
//! completions/mc0d.bash  completions/_mc0d  completions/mc0d.fish  (and mc0-keygen's)
//! ```
//!
//! An example rather than a binary or a hidden flag: clap_mangen and
//! clap_complete stay dev-dependencies, out of the installed binaries, and
//! nothing is installed that only a package build needs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use mc0d::cli::{KeygenArgs, Mc0dArgs};

fn generate(out: &std::path::Path) -> std::io::Result<()> {
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for mut command in [Mc0dArgs::command(), KeygenArgs::command()] {
        let name = command.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        std::fs::write(out.join(format!("{name}.1")), page)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut command, &name, &completions)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/man".into()));
    match generate(&out) {
        Ok(()) => {
            eprintln!("wrote the man pages and completions to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("man: cannot write to {}: {e}", out.display());
            ExitCode::from(2)
        }
    }
}
