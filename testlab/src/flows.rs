//! Long-lived TCP connections that keep exchanging data with an echo
//! backend (`crate::echo_backend`), each checking every byte it gets back:
//! what "a flow survived" means in the failover tests.

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

use crate::enter;

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

fn run(ns: &str, addr: SocketAddrV4, id: usize, every: Duration, c: &Conn, stop: &AtomicBool) {
    enter(ns);
    let fail = |why: String, reset: bool| {
        c.reset.store(reset, Ordering::Relaxed);
        *c.failure.lock().expect("lock") = Some(why);
    };
    let s = match TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect: {e}"), e.kind() == ErrorKind::ConnectionReset),
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
        return fail(format!("greeting: {e}"), e.kind() == ErrorKind::ConnectionReset);
    }
    *c.backend.lock().expect("lock") = greeting.trim().to_string();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let m = message(id, round);
        if let Err(e) = w.write_all(&m) {
            return fail(format!("round {round}: write: {e}"), e.kind() == ErrorKind::ConnectionReset);
        }
        let mut back = [0u8; MESSAGE];
        if let Err(e) = r.read_exact(&mut back) {
            return fail(format!("round {round}: read: {e}"), e.kind() == ErrorKind::ConnectionReset);
        }
        if back != m {
            return fail(
                format!("round {round}: echo differs: {:?}", String::from_utf8_lossy(&back)),
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
    /// Opens `n` connections from namespace `ns` to `addr`, each sending a
    /// message every `every` and checking its echo, and waits (up to
    /// `timeout`) until each has had its first echo or failed.
    pub fn open(ns: &str, addr: SocketAddrV4, n: usize, every: Duration, timeout: Duration) -> Conns {
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
            && all
                .conns
                .iter()
                .any(|c| c.echoes.load(Ordering::Relaxed) == 0 && c.failure.lock().expect("lock").is_none())
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

    /// Connections that had an echo after `t`.
    pub fn echoed_since(&self, t: Instant) -> usize {
        self.conns
            .iter()
            .filter(|c| c.last_echo.lock().expect("lock").is_some_and(|e| e > t))
            .count()
    }

    /// Waits until every connection still working has echoed after `t`, or
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

    /// Echoes received, all connections together.
    pub fn echoes(&self) -> u64 {
        self.conns.iter().map(|c| c.echoes.load(Ordering::Relaxed)).sum()
    }

    /// Connections per backend (by greeting).
    pub fn backends(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for c in &self.conns {
            *m.entry(c.backend.lock().expect("lock").clone()).or_insert(0) += 1;
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
