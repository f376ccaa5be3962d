//! Process figures from `/proc/self`, read by the HTTP thread at scrape
//! time (nothing on the socket thread).

use std::fmt::Write;

/// `name value` lines (Prometheus's standard `process_*` names), with HELP
/// and TYPE; missing figures (no /proc) are left out.
pub fn encode(out: &mut String) {
    let mut put = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)) {
        if ticks > 0 {
            let cpu = (stat.utime + stat.stime) as f64 / ticks as f64;
            put("process_cpu_seconds_total", "User and system CPU time spent, in seconds.", "counter", cpu);
            if let Some(boot) = boot_time() {
                let start = boot as f64 + stat.starttime as f64 / ticks as f64;
                put(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds.",
                    "gauge",
                    start,
                );
            }
        }
        put(
            "process_resident_memory_bytes",
            "Resident memory size, in bytes.",
            "gauge",
            (stat.rss * page.max(0) as u64) as f64,
        );
        put("process_virtual_memory_bytes", "Virtual memory size, in bytes.", "gauge", stat.vsize as f64);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        put("process_open_fds", "Open file descriptors.", "gauge", dir.count() as f64);
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        put("process_max_fds", "Limit of open file descriptors (RLIMIT_NOFILE).", "gauge", limit.rlim_cur as f64);
    }
}

struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss: u64,
}

/// Fields of `/proc/self/stat` (proc(5)); the command name in parentheses
/// may contain spaces, so fields are counted after its closing one.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, starttime: field(22)?, vsize: field(23)?, rss: field(24)? })
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_stat() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let stat = super::parse_stat(&text).expect("parsed");
        assert!(stat.rss > 0 && stat.vsize > 0 && stat.starttime > 0);
    }
}
