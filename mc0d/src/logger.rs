//! The broker's log: one line per event on stderr, `<UTC timestamp> <LEVEL>
//! <text>`. The timestamp is kept even under systemd (journald adds its own)
//! so logs redirected to a file still read on their own.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mc0::log::Level;

#[derive(Debug, Clone)]
pub struct Logger {
    level: Level,
}

impl Logger {
    pub fn new(level: Level) -> Self {
        Logger { level }
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    pub fn log(&self, level: Level, text: std::fmt::Arguments<'_>) {
        if !self.enabled(level) {
            return;
        }
        let tag = match level {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
        };
        let line = format!("{} {tag} {text}\n", timestamp(SystemTime::now()));
        // One write per line so lines from a crash handler or a second
        // process sharing the stream do not interleave mid-line. A closed
        // stderr must not take the broker down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, d.subsec_millis())
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Lets one warning through per `interval` and counts the rest, so a flood
/// of identical failures (say, drops to a stuck subscriber) is reported
/// without drowning the log.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        RateLimit { interval, last: None, suppressed: 0 }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were
    /// suppressed since the last one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Suppressed events not yet reported (reported and reset by the caller).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 3_723_456); // 2000-02-29
        assert_eq!(timestamp(t), "2000-02-29T01:02:03.456Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // last second of 2024
        assert_eq!(timestamp(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(1));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(r.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(r.allow(t0 + Duration::from_millis(1100)), Some(2));
        assert_eq!(r.allow(t0 + Duration::from_millis(1200)), None);
        assert_eq!(r.take_suppressed(), 1);
        assert_eq!(r.take_suppressed(), 0);
    }
}
