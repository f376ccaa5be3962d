//! `mc0d --cluster`: several brokers share one fleet through NATS.
//!
//! The engine (see `engine::cluster`) says which topics have local
//! subscribers and what was PUT; [`bridge`] runs the NATS client
//! (`async-nats`) on its own thread and talks to the server loop through
//! an inproc ZeroMQ PAIR (NATS → loop, polled with the ROUTER) and a
//! channel (loop → NATS), so the ROUTER keeps its one thread and the hot
//! path takes no lock. [`subject`] maps topics to subjects, [`payload`]
//! carries the MESSAGE frames.

pub mod bridge;
pub mod payload;
pub mod subject;

pub use bridge::{Bridge, ClusterCounters, ClusterOptions};

/// `--cluster-name` when not given: subjects read `mc0.mcollective.…`.
pub const DEFAULT_CLUSTER_NAME: &str = "mc0";
