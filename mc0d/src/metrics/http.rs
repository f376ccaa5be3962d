//! A deliberately small HTTP/1.1 server for the metrics listener: GET and
//! HEAD only, one request per connection, every bound explicit so a slow or
//! hostile client costs at most one of [`MAX_CONNECTIONS`] threads for at
//! most [`REQUEST_TIMEOUT`], and never touches the broker's socket thread.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time to send the whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request: path and query (without the `?`).
pub struct Request<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into().into_bytes() }
    }
}

pub type Handler = dyn Fn(&Request<'_>) -> Response + Send + Sync;

/// Accepts on `listener` until `stop` is set (and a connection wakes the
/// accept), each connection on its own short-lived thread.
pub fn serve(listener: TcpListener, handler: Arc<Handler>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (handler, done) = (handler.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("mc0d-http".into()).spawn(move || {
            connection(stream, &*handler);
            done.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn connection(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let response = match read_head(&mut stream) {
        Ok(head) => respond(&head, handler),
        Err(response) => response,
    };
    let Some(response) = response else { return };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&response.body));
}

/// Reads the request head within [`REQUEST_TIMEOUT`] and [`MAX_REQUEST`]
/// bytes; an error is the answer to give (none when the peer left).
fn read_head(stream: &mut TcpStream) -> Result<String, Option<Response>> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Some(Response::text(408, "request not received in time\n")));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(None),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Some(Response::text(408, "request not received in time\n")))
            }
            Err(_) => return Err(None),
        };
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return String::from_utf8(head).map_err(|_| Some(Response::text(400, "request is not UTF-8\n")));
        }
        if head.len() > MAX_REQUEST {
            return Err(Some(Response::text(431, format!("request head over {MAX_REQUEST} bytes\n"))));
        }
    }
}

fn respond(head: &str, handler: &Handler) -> Option<Response> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Some(Response::text(400, "not an HTTP/1.x request\n"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut response = handler(&Request { path, query });
    match method {
        "GET" => {}
        "HEAD" => response.body.clear(),
        _ => return Some(Response::text(405, "only GET and HEAD\n")),
    }
    Some(response)
}
