//! mc0-keygen: writes a CURVE keypair as `NAME.public` and `NAME.private`
//! (40-character Z85 lines, the format ffi-rzmq and the legacy tools use).

use mc0::keys::{self, KeyPair};
use mc0d::cli::{self, Early, KeygenArgs};
use std::process::ExitCode;

enum Action {
    Write {
        name: String,
        force: bool,
    },
    Print,
    /// `--help` or `--version`.
    Show(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Action, String> {
    let args: KeygenArgs = match cli::parse("mc0-keygen", args) {
        Ok(args) => args,
        Err(Early::Print(text)) => return Ok(Action::Show(text)),
        Err(Early::Usage(line)) => return Err(line),
    };
    match (args.print, args.name) {
        (true, None) => Ok(Action::Print),
        (true, Some(name)) => Err(format!("--print writes to stdout; drop NAME {name:?}")),
        (false, Some(name)) => Ok(Action::Write { name, force: args.force }),
        (false, None) => Err("missing NAME (or --print)".into()),
    }
}

fn run(action: Action) -> Result<(), String> {
    match action {
        Action::Show(text) => print!("{text}"),
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
            eprintln!("mc0-keygen: {e}");
            ExitCode::from(2)
        }
    }
}
