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

/// Installs (or with `None` removes) the process-wide sink. Lines more
/// verbose than `max_level` are not even formatted.
pub fn set_logger(sink: Option<Arc<LogFn>>, max_level: Level) {
    let mut guard = SINK.write().unwrap_or_else(|e| e.into_inner());
    let level = if sink.is_some() { max_level as i32 } else { 0 };
    *guard = sink;
    MAX_LEVEL.store(level, Ordering::SeqCst);
}

/// Whether a line at `level` would reach a sink.
pub fn enabled(level: Level) -> bool {
    (level as i32) <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Hands `message` to the sink. The lock is released before the call, so a
/// sink may itself replace the sink; a panicking sink is contained.
pub fn emit(level: Level, message: &str) {
    if !enabled(level) {
        return;
    }
    let sink = SINK.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(sink) = sink {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(level, message)));
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
