//! `--metrics ADDR:PORT`: Prometheus metrics (`/metrics`), the session
//! table as JSON (`/connz`) and a status page (`/`) over HTTP, served on a
//! thread of its own from what the socket thread publishes
//! ([`snapshot`]): a scrape costs the socket thread a copy of its counters
//! at most every 100 ms, a session table one pass over the sessions at most
//! once a second, and only when asked.
//!
//! The families are one table ([`families::FAMILIES`]); the text exposition
//! format is `prometheus-client`'s; the HTTP side ([`http`]) is small and
//! bounded (request size, timeouts, concurrent connections).

pub mod connz;
pub mod families;
pub mod http;
pub mod process;
pub mod snapshot;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::error::BrokerError;
use families::{Kind, Values, FAMILIES};
pub use snapshot::{Hub, Publisher, Snapshot};

/// The status page: self-contained (no external assets), built on `/connz`
/// and `/metrics`.
const STATUS_PAGE: &str = include_str!("status.html");

/// The metrics listener; stops its thread when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves what `hub` holds.
    pub fn start(addr: SocketAddr, hub: Arc<Hub>) -> Result<MetricsServer, BrokerError> {
        let listener =
            TcpListener::bind(addr).map_err(|e| BrokerError(format!("cannot bind --metrics {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| BrokerError(format!("--metrics {addr}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<http::Handler> = Arc::new(move |request: &http::Request<'_>| route(&hub, request));
        let thread = std::thread::Builder::new()
            .name("mc0d-metrics".into())
            .spawn({
                let stop = stop.clone();
                move || http::serve(listener, handler, stop)
            })
            .map_err(|e| BrokerError(format!("cannot start the metrics thread: {e}")))?;
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// The address it listens on (the port chosen when given 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, std::time::Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn route(hub: &Hub, request: &http::Request<'_>) -> http::Response {
    match request.path {
        "/metrics" => http::Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: encode(&hub.snapshot()).into_bytes(),
        },
        "/connz" => match connz::Query::parse(request.query) {
            Ok(query) => http::Response {
                status: 200,
                content_type: "application/json",
                body: connz::render(&hub.sessions(), &query).to_string().into_bytes(),
            },
            Err(e) => http::Response::text(400, format!("{e}\n")),
        },
        "/" => http::Response { status: 200, content_type: "text/html; charset=utf-8", body: STATUS_PAGE.into() },
        _ => http::Response::text(404, "not found: try /metrics, /connz or /\n"),
    }
}

/// The Prometheus text exposition (format 0.0.4) of `snapshot`, with the
/// process figures and build info.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(snapshot.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    process::encode(&mut out);
    out
}

#[derive(Debug)]
struct Families(Snapshot);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in FAMILIES {
            let name = format!("mc0d_{}", family.name);
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let values = (family.read)(&self.0);
            if let Values::Absent = values {
                continue;
            }
            let mut metric = encoder.encode_descriptor(&name, family.help, None, kind)?;
            match values {
                Values::Absent => {}
                Values::One(value) => sample(family.kind, value, metric)?,
                Values::Labelled(names, values) => {
                    for (label_values, value) in values {
                        let labels: Vec<(&str, &str)> =
                            names.iter().copied().zip(label_values.iter().map(String::as_str)).collect();
                        sample(family.kind, value, metric.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let info =
            encoder.encode_descriptor("mc0d_build_info", "mc0d's version (always 1)", None, MetricType::Gauge)?;
        let mut info = info;
        ConstGauge::new(1i64).encode(info.encode_family(&[("version", mc0::VERSION)])?)?;
        Ok(())
    }
}

fn sample(kind: Kind, value: f64, metric: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value as u64).encode(metric),
        Kind::Gauge => ConstGauge::new(value).encode(metric),
    }
}

#[cfg(test)]
mod tests;
