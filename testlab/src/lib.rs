//! Network-namespace labs for end-to-end tests.
//!
//! Hosts are namespaces joined by a bridge that lives in its own namespace,
//! so the host's network is never touched. Every name carries a per-test tag,
//! and `Drop` deletes the namespaces (which deletes their veths) and kills
//! the processes started in them, so a failed test leaves nothing behind.
//! Addresses come from 198.18.0.0/15 only.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

pub mod vrrp;

/// Tests that load eBPF or create namespaces need root. They fail loudly
/// without it; they never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs / creates network namespaces and must run as root"
    );
}

pub struct Lab {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    ports: u32,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    /// A lab with its bridge namespace. `test` must be unique among tests.
    pub fn new(test: &str) -> Lab {
        require_root();
        let tag = format!("lbt-{test}-{}", std::process::id());
        let mut lab = Lab {
            tag,
            namespaces: Vec::new(),
            children: Vec::new(),
            ports: 0,
        };
        let br = lab.add_ns("br");
        lab.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        lab.ip(&["-n", &br, "link", "set", "br0", "up"]);
        lab
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    fn add_ns(&mut self, host: &str) -> String {
        let ns = self.ns(host);
        self.ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(args))
    }

    /// A host with `eth0` on the bridge, addressed `cidr` (e.g. 198.18.0.1/15).
    /// Tx checksum offload is off: a veth would otherwise hand over packets
    /// whose checksum is left to a NIC that does not exist, and nobody would
    /// check that the datapath's checksums are right.
    pub fn host(&mut self, host: &str, cidr: &str) -> String {
        let ns = self.add_ns(host);
        let br = self.ns("br");
        self.ports += 1;
        let port = format!("p{}", self.ports);
        self.ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
        self.ip(&["-n", &ns, "addr", "add", cidr, "dev", "eth0"]);
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        self.sh(&ns, "ethtool -K eth0 tx off >/dev/null");
        ns
    }

    /// The bridge-side veth of a host (to give it an XDP program in native
    /// mode, see EBPF_TOOLCHAIN.md).
    pub fn bridge_port(&self, host_index: u32) -> (String, String) {
        (self.ns("br"), format!("p{host_index}"))
    }

    pub fn sh(&self, ns: &str, script: &str) -> Output {
        run(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]))
    }

    /// Like `sh` but returns the output whatever the exit status.
    pub fn try_sh(&self, ns: &str, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", script])
            .output()
            .expect("spawning ip netns exec")
    }

    /// Starts a long-running process in `ns`; it is killed with the lab.
    pub fn spawn(&mut self, ns: &str, script: &str) -> u32 {
        self.spawn_logged(ns, script, None)
    }

    /// Like `spawn`, with stdout and stderr appended to `log`.
    pub fn spawn_logged(&mut self, ns: &str, script: &str, log: Option<&std::path::Path>) -> u32 {
        let (out, err) = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("log file");
                (Stdio::from(f.try_clone().expect("dup")), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {script}")])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// A real HTTP server (python's http.server) on `addr:port` in `ns`,
    /// answering `GET /` with `name`. Waits until it listens; returns its pid.
    pub fn http_backend(&mut self, ns: &str, addr: &str, port: u16, name: &str) -> u32 {
        let dir = std::env::temp_dir().join(format!("{}-{name}", self.tag));
        std::fs::create_dir_all(&dir).expect("backend dir");
        std::fs::write(dir.join("index.html"), name).expect("index.html");
        let pid = self.spawn(
            ns,
            &format!(
                "python3 -m http.server {port} --bind {addr} --directory {}",
                dir.display()
            ),
        );
        for _ in 0..100 {
            let host = if addr.contains(':') {
                format!("[{addr}]")
            } else {
                addr.to_string()
            };
            let out = self.try_sh(ns, &format!("curl -gs --max-time 1 http://{host}:{port}/"));
            if out.status.success() {
                return pid;
            }
            thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("backend {name} on {addr}:{port} did not come up");
    }

    /// A scratch directory removed with the lab.
    pub fn dir(&self) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("{}-files", self.tag));
        std::fs::create_dir_all(&d).expect("lab dir");
        d
    }

    /// Sends `sig` to a process started with `spawn`.
    pub fn signal(&self, pid: u32, sig: i32) {
        // SAFETY: kill(2) on a child we own.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Waits up to `timeout` for a process started with `spawn` to exit
    /// (and reaps it); false if it is still running.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> bool {
        let Some(i) = self.children.iter().position(|c| c.id() == pid) else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !matches!(self.children[i].try_wait(), Ok(None)) {
                // Already reaped by try_wait; wait only returns its status.
                let _ = self.children.remove(i).wait();
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.tag));
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&self.tag) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Moves the calling thread into `ns`. Sockets, netlink and ioctls then act
/// there; /proc and /sys do not (they follow the process), which is why the
/// datapath's userspace avoids them.
pub fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("opening netns");
    // SAFETY: a valid netns fd; affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a fresh thread inside `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

/// A TCP backend in `ns` that greets each connection with its name and a
/// newline, then echoes what it reads, until `stop` is set.
pub fn echo_backend(ns: &str, addr: SocketAddrV4, name: &'static str, stop: Arc<AtomicBool>) {
    let ns = ns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(addr).expect("bind echo");
        l.set_nonblocking(true).expect("nonblocking");
        let _ = ready_tx.send(());
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let stop = stop.clone();
                    thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = c.write_all(format!("{name}\n").as_bytes());
                        let mut buf = [0u8; 256];
                        while !stop.load(Ordering::Relaxed) {
                            match c.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if c.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx.recv().expect("echo backend failed");
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread living in a namespace that owns a `S` (e.g. a `Balancer`) and
/// runs jobs on it there.
pub struct NsWorker<S> {
    tx: Option<mpsc::Sender<Job<S>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl<S: 'static> NsWorker<S> {
    pub fn start(ns: &str, init: impl FnOnce() -> S + Send + 'static) -> Self {
        let ns = ns.to_string();
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            enter(&ns);
            let mut state = init();
            let _ = ready_tx.send(());
            for job in rx {
                job(&mut state);
            }
        });
        ready_rx.recv().expect("worker failed to start");
        NsWorker {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut S) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("worker stopped")
            .send(Box::new(move |s: &mut S| {
                let _ = tx.send(f(s));
            }))
            .expect("worker gone");
        rx.recv().expect("worker job panicked")
    }
}

impl<S> Drop for NsWorker<S> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
