//! The bounded load generator: a few client threads in the client
//! namespace, each sending one HTTP/1.0 GET per connection to the VIP, with
//! a pause between requests, until a deadline or a request budget.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use super::classify::{Failure, Outcome, Request};
use crate::enter;

/// Connect and read timeouts of one request. SYN retransmits come at 1 s
/// and 3 s: a request survives one lost SYN, as a browser would.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub workers: usize,
    /// Pause between two requests of one worker.
    pub pause: Duration,
    /// Requests of all workers together, at most.
    pub max_requests: usize,
}

pub struct Load {
    handles: Vec<JoinHandle<()>>,
    records: Arc<Mutex<Vec<Request>>>,
}

impl Load {
    /// Starts `spec.workers` clients in `ns` until `deadline`.
    pub fn start(
        ns: &str,
        vip: SocketAddrV4,
        names: Vec<String>,
        spec: LoadSpec,
        epoch: Instant,
        deadline: Instant,
    ) -> Load {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(names);
        let handles = (0..spec.workers)
            .map(|_| {
                let (ns, records, sent, names) =
                    (ns.to_string(), records.clone(), sent.clone(), names.clone());
                thread::spawn(move || {
                    enter(&ns);
                    while Instant::now() < deadline
                        && sent.fetch_add(1, Ordering::Relaxed) < spec.max_requests
                    {
                        let start = epoch.elapsed();
                        let (port, outcome) = request(vip, &names);
                        let r = Request {
                            start,
                            end: epoch.elapsed(),
                            port,
                            outcome,
                        };
                        records.lock().expect("records").push(r);
                        thread::sleep(spec.pause);
                    }
                })
            })
            .collect();
        Load { handles, records }
    }

    /// Waits for the workers (each ends within a connect and a read timeout
    /// of the deadline) and returns every request.
    pub fn finish(self) -> Vec<Request> {
        for h in self.handles {
            let _ = h.join();
        }
        std::mem::take(&mut *self.records.lock().expect("records"))
    }
}

fn failure(e: &std::io::Error) -> Failure {
    match e.kind() {
        ErrorKind::ConnectionRefused => Failure::Refused,
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Failure::Reset
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::Other,
    }
}

/// A socket bound to an ephemeral port, and that port.
fn bound() -> std::io::Result<(Socket, u16)> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())?;
    let port = s.local_addr()?.as_socket().map_or(0, |a| a.port());
    Ok((s, port))
}

/// One request; the local port, and what came of it. The port is known
/// before connecting: a backend that accepts and resets at once fails the
/// connect itself, and it must still be traced to that backend.
fn request(vip: SocketAddrV4, names: &[String]) -> (Option<u16>, Outcome) {
    let (s, port) = match bound() {
        Ok(b) => b,
        Err(e) => return (None, Outcome::Failed(failure(&e))),
    };
    let port = Some(port);
    let mut c: TcpStream = match s.connect_timeout(&vip.into(), REQUEST_TIMEOUT) {
        Ok(()) => s.into(),
        Err(e) => return (port, Outcome::Failed(failure(&e))),
    };
    let r = c
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|_| c.write_all(b"GET / HTTP/1.0\r\n\r\n"))
        .and_then(|_| {
            let mut resp = Vec::new();
            c.read_to_end(&mut resp).map(|_| resp)
        });
    let outcome = match r {
        Err(e) => Outcome::Failed(failure(&e)),
        Ok(resp) => {
            let resp = String::from_utf8_lossy(&resp);
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
            match names.iter().position(|n| n == body) {
                Some(i) if resp.starts_with("HTTP/1.0 200") => Outcome::Served(i),
                // A close without an answer: what a hung-up backend looks like.
                _ => Outcome::Failed(Failure::Closed),
            }
        }
    };
    (port, outcome)
}
