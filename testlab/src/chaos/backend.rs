//! A backend whose behaviour the chaos run switches at will: serving HTTP,
//! accepting and hanging, accepting and resetting, or gone (its listener
//! closed, as after a crash: the kernel refuses new connections).
//!
//! It runs as threads of the chaos process inside the backend's namespace,
//! so a switch takes effect at a known instant, and it logs every accepted
//! connection with the peer's port: a failed client request can then be
//! traced to the backend that took it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::enter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Answers `GET` with its name.
    Up,
    /// Accepts, reads, never answers (a deadlocked worker pool).
    Hang,
    /// Accepts and closes at once with a RST (a crashing worker).
    Reset,
    /// No listener: connections are refused (a killed process).
    Down,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Up,
            1 => Mode::Hang,
            2 => Mode::Reset,
            _ => Mode::Down,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Mode::Up => 0,
            Mode::Hang => 1,
            Mode::Reset => 2,
            Mode::Down => 3,
        }
    }
}

/// One connection accepted from `peer`, `at` (since the run's start).
#[derive(Clone, Copy, Debug)]
pub struct Accept {
    pub backend: usize,
    pub peer: SocketAddrV4,
    pub at: Duration,
}

/// A hung connection is held at most this long, so the run's threads end.
const HANG_HOLD: Duration = Duration::from_secs(20);
/// How often the accept loop notices a mode switch while idle.
const POLL_MS: i32 = 20;

pub struct Backend {
    mode: Arc<AtomicU8>,
}

impl Backend {
    /// Starts serving on `0.0.0.0:port` in `ns` (dr backends answer for the
    /// VIP on their loopback and for their own address, where health checks
    /// come). `name` is the body of its answers.
    pub fn start(
        ns: &str,
        index: usize,
        name: String,
        port: u16,
        epoch: Instant,
        accepts: Arc<Mutex<Vec<Accept>>>,
        stop: Arc<AtomicBool>,
    ) -> Backend {
        let mode = Arc::new(AtomicU8::new(Mode::Up.to_u8()));
        let m = mode.clone();
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            enter(&ns);
            let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            let mut listener: Option<TcpListener> = None;
            let mut ready = Some(ready_tx);
            while !stop.load(Ordering::Relaxed) {
                let mode = Mode::from_u8(m.load(Ordering::Relaxed));
                if mode == Mode::Down {
                    // Dropping the listener refuses what is queued and what comes.
                    listener = None;
                    thread::sleep(Duration::from_millis(POLL_MS as u64));
                    continue;
                }
                if listener.is_none() {
                    match TcpListener::bind(addr) {
                        Ok(l) => listener = Some(l),
                        Err(_) => {
                            thread::sleep(Duration::from_millis(POLL_MS as u64));
                            continue;
                        }
                    }
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                let Some(l) = &listener else { continue };
                if !readable(l, POLL_MS) {
                    continue;
                }
                let Ok((conn, peer)) = l.accept() else {
                    continue;
                };
                let std::net::SocketAddr::V4(peer) = peer else {
                    continue;
                };
                accepts.lock().expect("accept log").push(Accept {
                    backend: index,
                    peer,
                    at: epoch.elapsed(),
                });
                // The mode is read again: a switch between poll and accept
                // applies to this connection.
                match Mode::from_u8(m.load(Ordering::Relaxed)) {
                    Mode::Up => {
                        let name = name.clone();
                        thread::spawn(move || serve(conn, &name));
                    }
                    Mode::Hang => {
                        let stop = stop.clone();
                        thread::spawn(move || hang(conn, &stop));
                    }
                    Mode::Reset | Mode::Down => reset(conn),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("chaos backend did not start listening");
        Backend { mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode.to_u8(), Ordering::Relaxed);
    }
}

fn readable(l: &TcpListener, timeout_ms: i32) -> bool {
    let mut fds = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, timeout_ms) > 0 }
}

/// Reads up to the end of the request head (or 2 s), answers, closes.
fn serve(mut c: TcpStream, name: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = c.write_all(
        format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        )
        .as_bytes(),
    );
}

fn hang(mut c: TcpStream, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let until = Instant::now() + HANG_HOLD;
    let mut buf = [0u8; 1024];
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        if let Ok(0) = c.read(&mut buf) {
            return;
        }
    }
}

/// Closes with SO_LINGER 0: the peer gets a RST, not a FIN.
fn reset(c: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
