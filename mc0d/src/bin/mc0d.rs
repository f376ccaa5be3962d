//! `mc0d`: the mc0 broker. A thin command line over [`mc0d::Broker`].
//!
//! Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 on a runtime
//! failure, 2 on a usage or startup error (one line on stderr naming it).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mc0::log::Level;
use mc0d::{Broker, Config};

const USAGE: &str = "\
Usage: mc0d --curve-private-key FILE [OPTIONS]
       mc0d --no-curve [OPTIONS]

The mc0 broker: routes MCollective messages between ZeroMQ (CURVE) clients.
SIGINT/SIGTERM stop it; SIGHUP reloads --authorized-keys.

Options:
  --curve-private-key FILE  the broker's CURVE secret key (Z85, as written by
                            mc0-keygen); required unless --no-curve
  --no-curve                run without encryption or authentication (NULL
                            mechanism); clients must set curve = false
  --bind ADDR               interface to listen on: *, an IPv4 or IPv6
                            address, or an interface name (default *)
  --port N                  TCP port (default 61616)
  --log-level LEVEL         error, warn, info or debug (default info)
  --status-interval SECS    how often to log the status line when it
                            changed; 0 disables it (default 60)
  --sndhwm N                messages libzmq queues per client; beyond it
                            mc0d buffers them (default 10000)
  --client-buffer BYTES     bytes mc0d buffers per client beyond --sndhwm;
                            past it messages to that client are dropped
                            (default 67108864 = 64 MiB). A fleet's replies
                            to one request must fit: nodes x reply size
  --rcvhwm N                messages queued from each client before its
                            stream is throttled (default 1000)

Access control (CURVE only):
  --authorized-keys PATH    only clients whose CURVE public key is listed
                            may connect, each as the MCollective identity it
                            is listed under. PATH is a directory of
                            NAME.public files (node keys in PATH/nodes/,
                            client keys in PATH/clients/, either role
                            directly in PATH) or a file of
                            lines KEY NAME [node|client]. Reloaded on SIGHUP;
                            sessions of removed keys are dropped.
  --authorized-keys-poll SECS
                            also reload when PATH changes, checked this
                            often; 0: only on SIGHUP (default 5)
  --identity-check MODE     enforce: refuse a CONNECT, SUB or PUT that
                            breaks the identity or role rules; log: allow
                            it, but log and count it (for migrating a site
                            whose names differ from its identities)
                            (default enforce)
  --node-publish-agents LIST
                            comma-separated agents node keys may send
                            requests to, e.g. registration (MCollective
                            servers publish to it when registration is on)
                            (default: none)

Limits (a client over one gets ERROR; everyone else is served on):
  --max-body-size BYTES     largest PUT body (default 67108864 = 64 MiB);
                            a frame over this plus 1 MiB drops the connection
  --max-frames N            most frames in one message (default 4096)
  --max-headers N           most header pairs in one message (default 64)
  --max-topic-length BYTES  longest topic name (default 1024)
  --max-subscriptions N     most topics one client may subscribe to
                            (default 10000)
  -h, --help                show this help
  -V, --version             show the version
";

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    if signal == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
}

enum Parsed {
    Run(Config),
    Exit(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut config = Config::default();
    let mut key_file: Option<String> = None;
    let mut no_curve = false;
    let mut identity_options = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            flag.as_str(),
            "--curve-private-key"
                | "--bind"
                | "--port"
                | "--log-level"
                | "--status-interval"
                | "--sndhwm"
                | "--client-buffer"
                | "--rcvhwm"
                | "--authorized-keys"
                | "--authorized-keys-poll"
                | "--identity-check"
                | "--node-publish-agents"
                | "--max-body-size"
                | "--max-frames"
                | "--max-headers"
                | "--max-topic-length"
                | "--max-subscriptions"
        );
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| format!("option {flag} needs a value"))?,
            }
        } else {
            if inline.is_some() {
                return Err(format!("option {flag} takes no value"));
            }
            String::new()
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Exit(USAGE.to_string())),
            "-V" | "--version" => return Ok(Parsed::Exit(format!("mc0d {}\n", mc0::VERSION))),
            "--no-curve" => no_curve = true,
            "--curve-private-key" => key_file = Some(value),
            "--bind" => {
                if value.is_empty() {
                    return Err("bad --bind value \"\": expected *, an address or an interface".into());
                }
                config.bind = value;
            }
            "--port" => config.port = parse_num::<u16>(&flag, &value).and_then(nonzero(&flag, &value))?,
            "--log-level" => config.log_level = value.parse::<Level>().map_err(|e| format!("bad --log-level: {e}"))?,
            "--status-interval" => {
                config.status_interval = match parse_num::<u64>(&flag, &value)? {
                    // Effectively never: the final line at exit still appears.
                    0 => Duration::from_secs(100 * 365 * 86_400),
                    secs => Duration::from_secs(secs),
                }
            }
            "--sndhwm" => config.sndhwm = parse_num::<i32>(&flag, &value).and_then(positive(&flag, &value))?,
            "--client-buffer" => config.client_buffer = parse_size(&flag, &value)?,
            "--rcvhwm" => config.rcvhwm = parse_num::<i32>(&flag, &value).and_then(positive(&flag, &value))?,
            "--authorized-keys" => {
                if value.is_empty() {
                    return Err("bad --authorized-keys value \"\": expected a directory or file".into());
                }
                config.authorized_keys = Some(value.into());
            }
            "--authorized-keys-poll" => {
                config.authorized_keys_poll = match parse_num::<u64>(&flag, &value)? {
                    0 => None,
                    secs => Some(Duration::from_secs(secs)),
                }
            }
            "--identity-check" => {
                config.identity_check = value.parse().map_err(|e| format!("bad --identity-check value {e}"))?;
                identity_options = true;
            }
            "--node-publish-agents" => {
                config.node_publish_agents = parse_agents(&value)?;
                identity_options = true;
            }
            "--max-body-size" => config.set_max_body_size(parse_size(&flag, &value)?),
            "--max-frames" => config.limits.max_frames = parse_size(&flag, &value)?,
            "--max-headers" => config.limits.max_headers = parse_size(&flag, &value)?,
            "--max-topic-length" => config.limits.max_topic_len = parse_size(&flag, &value)?,
            "--max-subscriptions" => config.max_subscriptions = parse_size(&flag, &value)?,
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }
    if no_curve && config.authorized_keys.is_some() {
        return Err("--authorized-keys needs CURVE (it cannot be combined with --no-curve)".into());
    }
    if identity_options && config.authorized_keys.is_none() {
        return Err(
            "--identity-check and --node-publish-agents need --authorized-keys (identities and roles come from it)"
                .into(),
        );
    }
    match (no_curve, key_file) {
        (true, Some(_)) => return Err("--no-curve and --curve-private-key exclude each other".into()),
        (false, None) => return Err("--curve-private-key FILE is required (or --no-curve to run without CURVE)".into()),
        (false, Some(path)) => {
            mc0::ensure_curve_support()?;
            config.curve_secret_key = Some(mc0::keys::read_key_file(&path).map_err(|e| e.to_string())?);
        }
        (true, None) => {}
    }
    Ok(Parsed::Run(config))
}

/// `registration,inventory`: agent names, as MCollective writes them.
fn parse_agents(value: &str) -> Result<Vec<String>, String> {
    let agents: Vec<String> = value.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    match agents.iter().find(|a| !mc0::topics::is_identity(a)) {
        Some(bad) => Err(format!("bad --node-publish-agents value {value:?}: {bad:?} is not an agent name")),
        None => Ok(agents),
    }
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.trim().parse::<T>().map_err(|_| format!("bad {flag} value {value:?}: expected a number"))
}

/// A positive count or size.
fn parse_size(flag: &str, value: &str) -> Result<usize, String> {
    match parse_num::<usize>(flag, value)? {
        0 => Err(format!("bad {flag} value {value:?}: must be positive")),
        n => Ok(n),
    }
}

fn nonzero<'a>(flag: &'a str, value: &'a str) -> impl Fn(u16) -> Result<u16, String> + 'a {
    move |n| if n == 0 { Err(format!("bad {flag} value {value:?}: must be 1-65535")) } else { Ok(n) }
}

fn positive<'a>(flag: &'a str, value: &'a str) -> impl Fn(i32) -> Result<i32, String> + 'a {
    move |n| if n <= 0 { Err(format!("bad {flag} value {value:?}: must be positive")) } else { Ok(n) }
}

/// Each client connection is a file descriptor; the common soft limit of
/// 1024 would cap a broker far below the thousands of nodes it serves.
fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn install_signal_handlers() {
    // SIGHUP's default action would kill the broker; `systemctl reload`
    // sends it.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Exit(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mc0d: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    install_signal_handlers();
    let broker = match Broker::bind(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mc0d: {e}");
            return ExitCode::from(2);
        }
    };
    match broker.run(&STOP, &RELOAD) {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_take_values_both_ways() {
        let Ok(Parsed::Run(c)) = parse(&["--no-curve", "--port=1234", "--bind", "127.0.0.1", "--log-level=debug"])
        else {
            panic!("should parse")
        };
        assert_eq!((c.port, c.bind.as_str(), c.log_level), (1234, "127.0.0.1", Level::Debug));
        assert!(c.curve_secret_key.is_none());
    }

    #[test]
    fn limits_and_allowlist_flags() {
        let Ok(Parsed::Run(c)) = parse(&[
            "--no-curve",
            "--max-body-size=1000",
            "--max-frames",
            "10",
            "--max-headers=3",
            "--max-topic-length=20",
            "--max-subscriptions=5",
            "--authorized-keys-poll=0",
            "--client-buffer=4096",
        ]) else {
            panic!("should parse")
        };
        assert_eq!((c.max_body_size, c.limits.max_frame_size), (1000, 1000 + mc0d::FRAME_SLACK));
        assert_eq!((c.limits.max_frames, c.limits.max_headers, c.limits.max_topic_len), (10, 3, 20));
        assert_eq!(c.max_subscriptions, 5);
        assert_eq!(c.authorized_keys_poll, None);
        assert_eq!(c.client_buffer, 4096);
        let Ok(Parsed::Run(c)) = parse(&["--no-curve"]) else { panic!("should parse") };
        assert_eq!(c.identity_check, mc0d::IdentityCheck::Enforce);
        assert!(c.node_publish_agents.is_empty());
        assert_eq!(c.authorized_keys_poll, Some(mc0d::DEFAULT_KEYS_POLL));
        assert_eq!(c.max_body_size, mc0d::DEFAULT_MAX_BODY_SIZE);
        assert_eq!(c.client_buffer, mc0d::DEFAULT_CLIENT_BUFFER);
    }

    #[test]
    fn identity_flags_with_an_allowlist() {
        let dir = std::env::temp_dir().join(format!("mc0d-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = mc0::keys::KeyPair::generate().unwrap();
        let (_, private) = mc0::keys::write_keypair(dir.join("broker"), &pair, true).unwrap();
        let private = private.display().to_string();
        let Ok(Parsed::Run(c)) = parse(&[
            "--curve-private-key",
            &private,
            "--authorized-keys",
            "/etc/mc0/keys",
            "--identity-check=log",
            "--node-publish-agents",
            "registration, inventory",
        ]) else {
            panic!("should parse")
        };
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.identity_check, mc0d::IdentityCheck::Log);
        assert_eq!(c.node_publish_agents, vec!["registration".to_string(), "inventory".to_string()]);
    }

    #[test]
    fn bad_input_names_the_culprit() {
        for (args, culprit) in [
            (&["--no-curve", "--frobnicate"][..], "--frobnicate"),
            (&["--no-curve", "--port", "x"], "--port"),
            (&["--no-curve", "--port", "0"], "--port"),
            (&["--no-curve", "--port"], "--port"),
            (&["--no-curve", "--log-level", "loud"], "loud"),
            (&["--no-curve", "--sndhwm=-1"], "--sndhwm"),
            (&["--no-curve=1"], "--no-curve"),
            (&[], "--curve-private-key"),
            (&["--no-curve", "--curve-private-key", "k"], "--no-curve"),
            (&["--no-curve", "--authorized-keys", "keys"], "--authorized-keys"),
            (&["--no-curve", "--max-frames", "0"], "--max-frames"),
            (&["--no-curve", "--max-body-size", "big"], "--max-body-size"),
            (&["--no-curve", "--client-buffer", "0"], "--client-buffer"),
            (&["--no-curve", "--authorized-keys-poll", "-1"], "--authorized-keys-poll"),
            (&["--no-curve", "--identity-check", "log"], "--identity-check"),
            (&["--no-curve", "--node-publish-agents", "registration"], "--node-publish-agents"),
            (&["--no-curve", "--identity-check", "strict"], "strict"),
            (&["--no-curve", "--node-publish-agents", "a b"], "--node-publish-agents"),
        ] {
            match parse(args) {
                Err(e) => assert!(e.contains(culprit), "{args:?}: {e}"),
                Ok(_) => panic!("{args:?} should fail"),
            }
        }
    }
}
