//! The connector's process-wide log sink. A library must not print, so log
//! lines go to an optional callback (the C ABI's `mc0_set_log_callback`) and
//! are dropped when none is set.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

use crate::log::Level;

/// Receives one formatted line at a time, possibly from the engine threads.
pub type LogFn = dyn Fn(Level, &str) + Send + Sync;

static SINK: RwLock<Option<Arc<LogFn>>> = RwLock::new(None);
/// The most verbose level the sink wants, as `Level as i32`; 0 = no sink.
/// Checked before formatting so disabled logging costs one atomic load.
static MAX_LEVEL: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// Set while this thread runs the sink, to refuse re-entrant set_logger.
    static IN_SINK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (or with `None` removes) the process-wide sink. Lines more
/// verbose than `max_level` are not even formatted. When this returns, the
/// previous sink is no longer running and will not be called again. Called
/// from inside a sink it does nothing (it would wait for itself).
pub fn set_logger(sink: Option<Arc<LogFn>>, max_level: Level) {
    if IN_SINK.with(|f| f.get()) {
        return;
    }
    let mut guard = SINK.write().unwrap_or_else(|e| e.into_inner());
    let level = if sink.is_some() { max_level as i32 } else { 0 };
    *guard = sink;
    MAX_LEVEL.store(level, Ordering::SeqCst);
}

/// Whether a line at `level` would reach a sink.
pub fn enabled(level: Level) -> bool {
    (level as i32) <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Hands `message` to the sink. The read lock is held during the call, so
/// that set_logger can promise the old sink is done; sinks on several
/// threads still run concurrently. A panicking sink is contained.
pub fn emit(level: Level, message: &str) {
    if !enabled(level) {
        return;
    }
    let guard = SINK.read().unwrap_or_else(|e| e.into_inner());
    if let Some(sink) = guard.as_ref() {
        IN_SINK.with(|f| f.set(true));
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(level, message)));
        IN_SINK.with(|f| f.set(false));
    }
}

/// `clog!(Level::Warn, "format {}", args)`: formats only when enabled.
macro_rules! clog {
    ($level:expr, $($arg:tt)*) => {
        if $crate::connector::logging::enabled($level) {
            $crate::connector::logging::emit($level, &format!($($arg)*));
        }
    };
}
pub(crate) use clog;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn sink_gets_enabled_lines_and_cannot_deadlock_itself() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        set_logger(
            Some(Arc::new(move |level, line: &str| {
                assert!(level <= Level::Info && line.starts_with("line"));
                seen.fetch_add(1, Ordering::SeqCst);
                // Re-entrant: ignored instead of waiting for itself.
                set_logger(None, Level::Error);
            })),
            Level::Info,
        );
        assert!(enabled(Level::Info) && !enabled(Level::Debug));
        emit(Level::Warn, "line 1");
        emit(Level::Debug, "not this one");
        clog!(Level::Info, "line {}", 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        set_logger(None, Level::Error);
        emit(Level::Error, "line 3");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!enabled(Level::Error));
    }
}
