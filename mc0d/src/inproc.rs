//! The channel a worker thread (NATS, the queue store) answers the socket
//! thread on: an inproc PAIR that the server loop polls with the ROUTER, so
//! the socket thread keeps its one place of waiting.

use crate::error::BrokerError;

/// Binds `endpoint` for the socket thread (the first socket: what it polls)
/// and connects the outlet the worker thread sends on (the second). Both
/// are unbounded: what feeds the worker bounds them. `name` ("cluster",
/// "store") names the socket in errors.
pub fn pair(ctx: &zmq::Context, endpoint: &str, name: &str) -> Result<(zmq::Socket, zmq::Socket), BrokerError> {
    let err = |what: &str, e: zmq::Error| BrokerError(format!("cannot {what} the {name} socket: {e}"));
    let inbox = ctx.socket(zmq::PAIR).map_err(|e| err("create", e))?;
    inbox.set_rcvhwm(0).map_err(|e| err("set ZMQ_RCVHWM on", e))?;
    inbox.bind(endpoint).map_err(|e| err("bind", e))?;
    let outlet = ctx.socket(zmq::PAIR).map_err(|e| err("create", e))?;
    outlet.set_sndhwm(0).map_err(|e| err("set ZMQ_SNDHWM on", e))?;
    outlet.connect(endpoint).map_err(|e| err("connect", e))?;
    Ok((inbox, outlet))
}
