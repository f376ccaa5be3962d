//! Load-generator worker processes (`mc0-bench conns-worker`,
//! `request-worker`): thousands of client sockets do not fit in one
//! process's file descriptors (each DEALER holds a TCP connection and a
//! mailbox), so they are spread over copies of this binary. The parent and
//! its workers talk in lines over the workers' stdin and stdout: the parent
//! says words (GO, STOP), a worker answers with a word and fields, or with
//! `FAIL <why>`.

use super::target::Running;
use crate::Result;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The parent's side: the running workers and the lines they print, each
/// tagged with the worker's index. Killed on drop.
pub struct Workers {
    workers: Vec<Worker>,
    lines: mpsc::Receiver<(usize, String)>,
}

impl Workers {
    /// Starts up to `procs` workers in `mode` for `b`'s brokers (worker
    /// `w` on broker `w` mod their number), splitting `total` clients
    /// between them; each gets `--first`/`--count` and the broker's address
    /// and key (and `--key-seed`), plus `extra(count)`.
    pub fn spawn(
        mode: &str,
        b: &Running,
        total: usize,
        procs: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Result<Workers> {
        let procs = procs.clamp(1, total.max(1));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let (tx, lines) = mpsc::channel();
        let mut workers = Vec::new();
        let mut first = 0;
        let endpoints = b.endpoints();
        for w in 0..procs {
            let endpoint = endpoints[w % endpoints.len()];
            let count = total / procs + usize::from(w < total % procs);
            let mut cmd = Command::new(&exe);
            cmd.arg(mode)
                .args(["--endpoint", &endpoint.addr])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(extra(count));
            if let Some(k) = &endpoint.server_key {
                // One argument: a Z85 key may start with "-".
                cmd.arg(format!("--server-key={}", mc0::keys::key_to_z85(k)));
            }
            if let Some(seed) = endpoint.key_seed {
                cmd.args(["--key-seed", &seed.to_string()]);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start a load worker: {e}"))?;
            let stdout = child.stdout.take().unwrap();
            let stdin = child.stdin.take().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((w, line)).is_err() {
                        break;
                    }
                }
            });
            workers.push(Worker { child, stdin });
            first += count;
        }
        Ok(Workers { workers, lines })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Tells every worker `word`.
    pub fn say(&mut self, word: &str) -> Result<()> {
        for w in self.workers.iter_mut() {
            writeln!(w.stdin, "{word}").and_then(|_| w.stdin.flush()).map_err(|e| format!("load worker: {e}"))?;
        }
        Ok(())
    }

    /// Waits until `count` lines starting with `word` arrived (a FAIL line
    /// is an error); returns them.
    pub fn expect(&self, word: &str, count: usize, deadline: Instant) -> Result<Vec<(usize, String)>> {
        let mut got = Vec::new();
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((w, line)) if line.starts_with(word) => got.push((w, line)),
                Ok((w, line)) if line.starts_with("FAIL") => return Err(format!("load worker {w}: {line}")),
                Ok(_) => {}
                Err(_) => return Err(format!("load workers: {} of {count} said {word} in time", got.len())),
            }
        }
        Ok(got)
    }

    /// The next line from any worker, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<(usize, String)> {
        self.lines.recv_timeout(timeout).ok()
    }
}

/// The `key=value` fields after a worker's word, as numbers (0 if unreadable).
pub fn fields(line: &str) -> impl Iterator<Item = (&str, u64)> {
    line.split_whitespace().skip(1).map(|field| {
        let (k, v) = field.split_once('=').unwrap_or((field, "0"));
        (k, v.parse().unwrap_or(0))
    })
}

/// A worker's side: lines to the parent on stdout, words from it on stdin.
pub struct Parent {
    words: mpsc::Receiver<String>,
}

impl Parent {
    /// Runs a worker's body; an error is reported to the parent as
    /// `FAIL <why>` before it is returned.
    pub fn serve(body: impl FnOnce(&Parent) -> Result<()>) -> Result<()> {
        let (tx, words) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim().to_string()).is_err() {
                    break;
                }
            }
        });
        let parent = Parent { words };
        let result = body(&parent);
        if let Err(e) = &result {
            parent.say(&format!("FAIL {e}"));
        }
        result
    }

    pub fn say(&self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    /// Blocks until the parent says `word`.
    pub fn wait_for(&self, word: &str) -> Result<()> {
        loop {
            match self.words.recv() {
                Ok(line) if line == word => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("parent went away before {word}")),
            }
        }
    }

    /// Whether the parent said `word` (or went away) since the last look.
    pub fn said(&self, word: &str) -> bool {
        loop {
            match self.words.try_recv() {
                Ok(line) if line == word => return true,
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => return true,
            }
        }
    }
}
