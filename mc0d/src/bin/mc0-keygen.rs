//! mc0-keygen: writes a CURVE keypair as `NAME.public` and `NAME.private`
//! (40-character Z85 lines, the format ffi-rzmq and the legacy tools use).

use mc0::keys::{self, KeyPair};
use std::process::ExitCode;

const USAGE: &str = "\
usage: mc0-keygen [--force] NAME     write NAME.public and NAME.private (mode 0600)
       mc0-keygen --print            print a new public and private key to stdout

options:
  --force      overwrite existing key files
  --print      print instead of writing files (public key first, then private)
  -h, --help   show this help
  -V, --version  show the version";

enum Action {
    Write { name: String, force: bool },
    Print,
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Action, String> {
    let (mut force, mut print, mut name) = (false, false, None);
    for arg in args {
        match arg.as_str() {
            "--force" | "-f" => force = true,
            "--print" => print = true,
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            flag if flag.starts_with('-') && flag.len() > 1 => return Err(format!("unknown option {flag}")),
            _ if name.is_some() => return Err(format!("unexpected argument {arg:?} (only one NAME)")),
            _ => name = Some(arg),
        }
    }
    match (print, name) {
        (true, None) => Ok(Action::Print),
        (true, Some(name)) => Err(format!("--print writes to stdout; drop NAME {name:?}")),
        (false, Some(name)) => Ok(Action::Write { name, force }),
        (false, None) => Err("missing NAME (or --print)".into()),
    }
}

fn run(action: Action) -> Result<(), String> {
    match action {
        Action::Help => println!("{USAGE}"),
        Action::Version => println!("mc0-keygen {}", mc0::VERSION),
        Action::Print => {
            let pair = KeyPair::generate()?;
            println!("{}", keys::key_to_z85(&pair.public));
            println!("{}", keys::key_to_z85(&pair.secret));
        }
        Action::Write { name, force } => {
            let pair = KeyPair::generate()?;
            let (public, private) = keys::write_keypair(&name, &pair, force).map_err(|e| e.to_string())?;
            eprintln!("wrote {} and {}", public.display(), private.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = mc0::ensure_curve_support() {
        eprintln!("mc0-keygen: {e}");
        return ExitCode::from(2);
    }
    match parse_args(std::env::args().skip(1)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mc0-keygen: {e}\n(see mc0-keygen --help)");
            ExitCode::from(2)
        }
    }
}
