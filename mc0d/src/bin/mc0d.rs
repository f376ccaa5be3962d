//! `mc0d`: the mc0 broker. A thin command line ([`mc0d::cli::Mc0dArgs`])
//! over [`mc0d::Broker`].
//!
//! Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 on a runtime
//! failure, 2 on a usage or startup error (one line on stderr naming it).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use mc0d::cli::{self, Early, Mc0dArgs};
use mc0d::cluster::{ClusterOptions, DEFAULT_CLUSTER_NAME};
use mc0d::engine::queues::QueueLimits;
use mc0d::{Broker, Config};

enum Parsed {
    // Boxed: the Config is large next to the error text.
    Run(Box<Config>),
    Exit(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let args: Mc0dArgs = match cli::parse("mc0d", args) {
        Ok(args) => args,
        Err(Early::Print(text)) => return Ok(Parsed::Exit(text)),
        Err(Early::Usage(line)) => return Err(line),
    };
    if args.no_curve && args.authorized_keys.is_some() {
        return Err("--authorized-keys needs CURVE (it cannot be combined with --no-curve)".into());
    }
    if (args.identity_check.is_some() || args.node_publish_agents.is_some()) && args.authorized_keys.is_none() {
        return Err(
            "--identity-check and --node-publish-agents need --authorized-keys (identities and roles come from it)"
                .into(),
        );
    }
    if args.queue_writer.is_some() && args.queue_dir.is_none() {
        return Err("--queue-writer needs --queue-dir (without it queues live in memory)".into());
    }
    let mut config = Config {
        bind: args.bind,
        port: args.port,
        log_level: args.log_level.into(),
        status_interval: match args.status_interval {
            // Effectively never: the final line at exit still appears.
            0 => Duration::from_secs(100 * 365 * 86_400),
            secs => Duration::from_secs(secs),
        },
        sndhwm: args.sndhwm,
        client_buffer: args.client_buffer,
        rcvhwm: args.rcvhwm,
        max_subscriptions: args.max_subscriptions,
        authorized_keys: args.authorized_keys,
        authorized_keys_poll: match args.authorized_keys_poll {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        },
        identity_check: args.identity_check.map(Into::into).unwrap_or_default(),
        node_publish_agents: args.node_publish_agents.map(|a| a.0).unwrap_or_default(),
        metrics: args.metrics,
        cluster: (!args.cluster.is_empty()).then(|| ClusterOptions {
            urls: args.cluster.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect(),
            name: args.cluster_name.unwrap_or_else(|| DEFAULT_CLUSTER_NAME.into()),
            user: args.cluster_user,
            password: args.cluster_password,
            token: args.cluster_token,
            creds: args.cluster_creds,
            nkey: args.cluster_nkey,
            tls_ca: args.cluster_tls_ca,
            tls_cert: args.cluster_tls_cert,
            tls_key: args.cluster_tls_key,
        }),
        queues: args.queue,
        queue_dir: args.queue_dir,
        queue_writer: args.queue_writer.map(Into::into).unwrap_or_default(),
        queue_limits: QueueLimits {
            max_messages: args.queue_max_messages,
            max_bytes: args.queue_max_bytes,
            idle: Duration::from_secs(args.queue_idle),
            ..QueueLimits::default()
        },
        ..Config::default()
    };
    config.set_max_body_size(args.max_body_size);
    config.limits.max_frames = args.max_frames;
    config.limits.max_headers = args.max_headers;
    config.limits.max_topic_len = args.max_topic_length;
    match (args.no_curve, args.curve_private_key) {
        (true, Some(_)) => return Err("--no-curve and --curve-private-key exclude each other".into()),
        (false, None) => return Err("--curve-private-key FILE is required (or --no-curve to run without CURVE)".into()),
        (false, Some(path)) => {
            mc0::ensure_curve_support()?;
            config.curve_secret_key = Some(mc0::keys::read_key_file(&path).map_err(|e| e.to_string())?);
        }
        (true, None) => {}
    }
    Ok(Parsed::Run(Box::new(config)))
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

/// SIGINT/SIGTERM set the first flag (stop), SIGHUP the second (reload the
/// allowlist; its default action would kill the broker, and `systemctl
/// reload` sends it). The handlers only store to atomics.
fn install_signal_handlers() -> std::io::Result<(Arc<AtomicBool>, Arc<AtomicBool>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (stop, reload) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    signal_hook::flag::register(SIGHUP, Arc::clone(&reload))?;
    Ok((stop, reload))
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(config)) => *config,
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
    let (stop, reload) = match install_signal_handlers() {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("mc0d: cannot install the signal handlers: {e}");
            return ExitCode::from(2);
        }
    };
    let broker = match Broker::bind(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mc0d: {e}");
            return ExitCode::from(2);
        }
    };
    match broker.run(&stop, &reload) {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc0::log::Level;

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
        assert_eq!(c.cluster, None);
    }

    #[test]
    fn cluster_options() {
        let Ok(Parsed::Run(c)) = parse(&[
            "--no-curve",
            "--cluster",
            "nats://a:4222, nats://b:4222",
            "--cluster-user=u",
            "--cluster-password=p",
            "--cluster-tls-ca",
            "/ca.pem",
        ]) else {
            panic!("should parse")
        };
        let cluster = c.cluster.as_ref().expect("clustered");
        assert_eq!(cluster.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(cluster.name, DEFAULT_CLUSTER_NAME);
        assert_eq!((cluster.user.as_deref(), cluster.password.as_deref()), (Some("u"), Some("p")));
        assert_eq!(cluster.tls_ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        for (args, culprit) in [
            (&["--no-curve", "--cluster-name", "x"][..], "--cluster"),
            (&["--no-curve", "--cluster", "nats://a", "--cluster-user", "u"], "--cluster-password"),
            (&["--no-curve", "--cluster", "nats://a", "--cluster-tls-key", "k"], "--cluster-tls-cert"),
        ] {
            match parse(args) {
                Err(e) => assert!(e.contains(culprit), "{args:?}: {e}"),
                Ok(_) => panic!("{args:?} should fail"),
            }
        }
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
            (&["--no-curve", "--queue-writer", "aio"], "--queue-dir"),
            (&["--no-curve", "--queue-dir", "q", "--queue-writer", "fast"], "fast"),
        ] {
            match parse(args) {
                Err(e) => assert!(e.contains(culprit), "{args:?}: {e}"),
                Ok(_) => panic!("{args:?} should fail"),
            }
        }
    }
}
