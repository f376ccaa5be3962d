//! The engine sleeps while it cannot make progress: with the broker stalled
//! and the socket at its high-water mark, it must wait for the socket, not
//! spin. Alone in its test binary so that the process's CPU time is the
//! connector's (the broker is another process).

mod common_connector;

use std::time::Duration;

use common_connector::{wait_until, Broker, WAIT};
use mc0::connector::Connector;

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn engine_waits_without_spinning_when_the_socket_is_full() {
    let mut broker = Broker::start();
    let mut config = broker.config("blocked");
    config.set("send_queue", "100000").unwrap();
    let c = Connector::connect(&config).unwrap();
    c.subscribe("big").unwrap();
    broker.pause();
    // Far more than the socket's high-water mark (1000) and the kernel's buffers.
    let body = vec![7u8; 64 * 1024];
    for _ in 0..3000 {
        c.publish("big", &[], &body).unwrap();
    }
    // Let the engine push what the socket takes, then watch it idle.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time() - before;
    broker.resume();
    assert!(used < Duration::from_millis(500), "the connector used {used:?} of CPU in 2 s while blocked");
    // And it recovers: everything is delivered once the broker runs again.
    assert!(wait_until(Duration::from_secs(60), || c.stats().published == 3000), "{:?}", c.stats());
    c.flush(WAIT).unwrap();
}
