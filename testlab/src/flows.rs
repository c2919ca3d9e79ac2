//! Long-lived TCP connections that keep exchanging data with a backend,
//! each checking every byte it gets: what "a flow survived" means in the
//! failover tests.
//!
//! Half the connections are client-driven (the client sends, the backend
//! echoes), half backend-driven (the backend pushes a message every
//! [`PUSH_EVERY`] and the client only reads). After a failover the first
//! packet of a push connection usually comes from the backend (its
//! retransmission), which only a node that knows the flow can translate;
//! an echo connection's first packet is usually the client's.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddrV4, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use std::net::TcpListener;

use crate::enter;

/// How often a backend-driven connection gets a message.
pub const PUSH_EVERY: Duration = Duration::from_millis(100);

/// Bytes per message; each is unique to its connection and round.
const MESSAGE: usize = 64;
/// A connection waits this long for its echo before it counts as broken:
/// longer than a failover plus TCP's retransmission backoff.
const ECHO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Conn {
    /// The backend's greeting (its name).
    backend: Mutex<String>,
    last_echo: Mutex<Option<Instant>>,
    echoes: AtomicU64,
    /// Why the connection stopped working, if it did.
    failure: Mutex<Option<String>>,
    reset: AtomicBool,
}

pub struct Conns {
    conns: Vec<Arc<Conn>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn message(id: usize, round: u64) -> [u8; MESSAGE] {
    let mut m = [0u8; MESSAGE];
    let head = format!("{id:05} {round:012} ");
    m[..head.len()].copy_from_slice(head.as_bytes());
    for (i, b) in m.iter_mut().enumerate().skip(head.len()) {
        *b = b'a' + ((id as u64 * 7 + round * 13 + i as u64) % 26) as u8;
    }
    m[MESSAGE - 1] = b'\n';
    m
}

/// The backend of both kinds of connection, on `addr` in `ns`, until `stop`:
/// greets with `name` and a newline, reads the client's choice (`echo` or
/// `push` and a newline), then echoes what it reads, or pushes the
/// messages of connection 0 in order every [`PUSH_EVERY`]. Connections it
/// saw reset are counted in `resets`.
pub fn backend(
    ns: &str,
    addr: SocketAddrV4,
    name: &'static str,
    stop: Arc<AtomicBool>,
    resets: Arc<AtomicU64>,
) {
    let ns = ns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(addr).expect("bind flow backend");
        l.set_nonblocking(true).expect("nonblocking");
        let _ = ready_tx.send(());
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => {
                    let (stop, resets) = (stop.clone(), resets.clone());
                    thread::spawn(move || {
                        if serve(c, name, &stop)
                            .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset)
                        {
                            resets.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx.recv().expect("flow backend failed");
}

fn serve(c: TcpStream, name: &str, stop: &AtomicBool) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    w.write_all(format!("{name}\n").as_bytes())?;
    let idle = |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    let mut mode = String::new();
    while mode.is_empty() && !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut mode) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if mode.trim() == "push" {
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) {
            w.write_all(&message(0, round))?;
            round += 1;
            thread::sleep(PUSH_EVERY);
        }
        return Ok(());
    }
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => w.write_all(&buf[..n])?,
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Connection `id`: even ids are client-driven (echo), odd ids
/// backend-driven (push).
fn run(ns: &str, addr: SocketAddrV4, id: usize, every: Duration, c: &Conn, stop: &AtomicBool) {
    enter(ns);
    let fail = |why: String, reset: bool| {
        c.reset.store(reset, Ordering::Relaxed);
        *c.failure.lock().expect("lock") = Some(why);
    };
    let s = match TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                format!("connect: {e}"),
                e.kind() == ErrorKind::ConnectionReset,
            );
        }
    };
    let _ = s.set_read_timeout(Some(ECHO_TIMEOUT));
    let _ = s.set_nodelay(true);
    let mut r = BufReader::new(match s.try_clone() {
        Ok(r) => r,
        Err(e) => return fail(format!("clone: {e}"), false),
    });
    let mut w = s;
    let mut greeting = String::new();
    if let Err(e) = r.read_line(&mut greeting) {
        return fail(
            format!("greeting: {e}"),
            e.kind() == ErrorKind::ConnectionReset,
        );
    }
    *c.backend.lock().expect("lock") = greeting.trim().to_string();
    let push = id % 2 == 1;
    if let Err(e) = w.write_all(if push { b"push\n" } else { b"echo\n" }) {
        return fail(format!("mode: {e}"), e.kind() == ErrorKind::ConnectionReset);
    }
    let mut round = 0u64;
    while push && !stop.load(Ordering::Relaxed) {
        let mut got = [0u8; MESSAGE];
        if let Err(e) = r.read_exact(&mut got) {
            return fail(
                format!("push {round}: read: {e}"),
                e.kind() == ErrorKind::ConnectionReset,
            );
        }
        if got != message(0, round) {
            return fail(
                format!("push {round}: differs: {:?}", String::from_utf8_lossy(&got)),
                false,
            );
        }
        *c.last_echo.lock().expect("lock") = Some(Instant::now());
        c.echoes.fetch_add(1, Ordering::Relaxed);
        round += 1;
    }
    while !stop.load(Ordering::Relaxed) {
        let m = message(id, round);
        if let Err(e) = w.write_all(&m) {
            return fail(
                format!("round {round}: write: {e}"),
                e.kind() == ErrorKind::ConnectionReset,
            );
        }
        let mut back = [0u8; MESSAGE];
        if let Err(e) = r.read_exact(&mut back) {
            return fail(
                format!("round {round}: read: {e}"),
                e.kind() == ErrorKind::ConnectionReset,
            );
        }
        if back != m {
            return fail(
                format!(
                    "round {round}: echo differs: {:?}",
                    String::from_utf8_lossy(&back)
                ),
                false,
            );
        }
        *c.last_echo.lock().expect("lock") = Some(Instant::now());
        c.echoes.fetch_add(1, Ordering::Relaxed);
        round += 1;
        thread::sleep(every);
    }
}

impl Conns {
    /// Opens `n` connections from namespace `ns` to `addr` (a [`backend`]),
    /// half sending a message every `every` and checking its echo, half
    /// checking what the backend pushes, and waits (up to `timeout`) until
    /// each has had its first message or failed.
    pub fn open(
        ns: &str,
        addr: SocketAddrV4,
        n: usize,
        every: Duration,
        timeout: Duration,
    ) -> Conns {
        let stop = Arc::new(AtomicBool::new(false));
        let mut conns = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for id in 0..n {
            let c = Arc::new(Conn {
                backend: Mutex::new(String::new()),
                last_echo: Mutex::new(None),
                echoes: AtomicU64::new(0),
                failure: Mutex::new(None),
                reset: AtomicBool::new(false),
            });
            let (ns, c2, stop2) = (ns.to_string(), c.clone(), stop.clone());
            threads.push(
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || run(&ns, addr, id, every, &c2, &stop2))
                    .expect("connection thread"),
            );
            conns.push(c);
            // Paced, so the backends' accept queues (128) never overflow.
            thread::sleep(Duration::from_millis(5));
        }
        let all = Conns {
            conns,
            stop,
            threads,
        };
        let t0 = Instant::now();
        while t0.elapsed() < timeout
            && all.conns.iter().any(|c| {
                c.echoes.load(Ordering::Relaxed) == 0 && c.failure.lock().expect("lock").is_none()
            })
        {
            thread::sleep(Duration::from_millis(20));
        }
        all
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections that received a message after `t`.
    pub fn echoed_since(&self, t: Instant) -> usize {
        self.conns
            .iter()
            .filter(|c| c.last_echo.lock().expect("lock").is_some_and(|e| e > t))
            .count()
    }

    /// Waits until every connection still working has received after `t`, or
    /// `timeout`; returns how many did.
    pub fn wait_echoed_since(&self, t: Instant, timeout: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            let echoed = self.echoed_since(t);
            if echoed + self.failures().len() >= self.len() || t0.elapsed() > timeout {
                return echoed;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// (connection, reason) of every connection that stopped working.
    pub fn failures(&self) -> Vec<(usize, String)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, c.failure.lock().expect("lock").clone()?)))
            .collect()
    }

    /// Connections that ended with a reset.
    pub fn resets(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.reset.load(Ordering::Relaxed))
            .count()
    }

    /// Messages received and checked, all connections together.
    pub fn echoes(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.echoes.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections per backend (by greeting).
    pub fn backends(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for c in &self.conns {
            *m.entry(c.backend.lock().expect("lock").clone())
                .or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
