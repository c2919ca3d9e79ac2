//! Two LB nodes sharing a VIP through VRRP, a client probing the VIP and an
//! HTTP backend behind it: the failover lab of the VRRP interop tests and of
//! `lb-bench vrrp`.
//!
//! Each node speaks VRRP with either `lb run` (a `[[vrrp_instance]]` beside
//! the service) or keepalived. A keepalived node also runs `lb run` with the
//! service only, as a site migrating from keepalived would: the VIP then
//! answers through lb's datapath whoever owns it, and what differs between
//! the cases is who moves the address and how fast.
//!
//! A crash (`kill`) takes the whole node's stack down: `lb run`, or
//! keepalived and its service daemon. A clean stop (`term`) stops the VRRP
//! speaker only, as `systemctl stop` of that unit would: for an lb node
//! that is its datapath too, for a keepalived node it is not. A node crash
//! (`crash`) is `kill` plus the node falling silent on the network, as a
//! host that lost power; it comes back (`start`) without the VIP, as a
//! rebooted host would.
//!
//! [`Services`] chooses the forwarding mode, an echo service with two
//! backends for long-lived connections (`crate::flows`), and connection-state
//! sync between the lb nodes.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{Lab, enter};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP_PORT: u16 = 80;
const VRID: u8 = 51;
const CLIENT: &str = "198.18.0.1/15";
const NODE_ADDRS: [&str; 2] = ["198.18.0.2/15", "198.18.0.3/15"];
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const BACKEND_PORT: u16 = 8080;
const KEEPALIVED: &str = "/usr/sbin/keepalived";
/// The echo service's backends (the first is also the HTTP backend).
const ECHO_BACKENDS: [Ipv4Addr; 2] = [BACKEND, Ipv4Addr::new(198, 18, 1, 2)];
/// The echo service's VIP port; nat translates it to `ECHO_PORT + 1`.
pub const ECHO_PORT: u16 = 9000;
pub const SYNC_PORT: u16 = 8849;

/// How the nodes forward (lb's `forwarding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Nat,
    Dr,
    Tun,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Nat => "nat",
            Forwarding::Dr => "dr",
            Forwarding::Tun => "tun",
        }
    }
}

/// What the nodes serve besides the HTTP VIP.
#[derive(Clone, Copy, Debug)]
pub struct Services {
    pub forwarding: Forwarding,
    /// A service on `VIP:ECHO_PORT` with two `crate::flows::backend`s (echo
    /// and push connections).
    pub echo: bool,
    /// `[sync]` between two lb nodes (nat: the SNAT address is the VIP), with
    /// this interval.
    pub sync: Option<Duration>,
    /// lb nodes pin their XDP attachment (`daemon.pin_dir`, in a bpffs the
    /// lab mounts), so their datapath outlives a SIGKILL.
    pub pin: bool,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            forwarding: Forwarding::Nat,
            echo: false,
            sync: None,
            pin: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    Lb,
    Keepalived,
}

impl Speaker {
    pub fn name(self) -> &'static str {
        match self {
            Speaker::Lb => "lb",
            Speaker::Keepalived => "keepalived",
        }
    }
}

/// The settings both nodes share.
#[derive(Clone, Copy, Debug)]
pub struct Vrrp {
    /// 2 or 3.
    pub version: u8,
    pub advert_int: Duration,
}

impl Vrrp {
    /// RFC 3768 skew for v2 (whole seconds whatever the interval), RFC 5798
    /// for v3 (a share of the interval).
    pub fn skew(&self, priority: u8) -> Duration {
        let share = f64::from(256 - u16::from(priority)) / 256.0;
        if self.version == 2 {
            Duration::from_secs_f64(share)
        } else {
            self.advert_int.mul_f64(share)
        }
    }

    /// How long a backup at `priority` waits for a silent master.
    pub fn master_down(&self, priority: u8) -> Duration {
        self.advert_int * 3 + self.skew(priority)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct NodeSpec {
    pub speaker: Speaker,
    pub priority: u8,
    pub nopreempt: bool,
}

struct Node {
    name: &'static str,
    ns: String,
    spec: NodeSpec,
    /// `lb run` (with or without VRRP) or keepalived's parent process.
    vrrp_pid: Option<u32>,
    /// A keepalived node's `lb run` for the service.
    service_pid: Option<u32>,
    /// Sent SIGTERM, not yet reaped.
    stopping: Option<u32>,
    starts: u32,
    /// Off the network since a `crash`.
    crashed: bool,
}

pub struct FailoverLab {
    pub lab: Lab,
    pub client: String,
    lb_bin: PathBuf,
    vrrp: Vrrp,
    services: Services,
    nodes: [Node; 2],
    /// Stops the echo backends' threads.
    echo_stop: Arc<AtomicBool>,
    /// Connections the echo backends saw reset.
    backend_resets: Arc<AtomicU64>,
}

impl Drop for FailoverLab {
    fn drop(&mut self) {
        self.echo_stop.store(true, Ordering::Relaxed);
        if self.services.pin {
            // Unmounting releases whatever a killed node left pinned.
            let _ = Command::new("umount").arg(self.bpffs()).status();
        }
    }
}

impl FailoverLab {
    /// Client, backend and two nodes on one bridge; nothing runs on the
    /// nodes until `start`.
    pub fn new(test: &str, lb_bin: &Path, vrrp: Vrrp, a: NodeSpec, b: NodeSpec) -> FailoverLab {
        Self::with_services(test, lb_bin, vrrp, a, b, Services::default())
    }

    /// Like `new`, with the given forwarding mode, echo service and sync.
    pub fn with_services(
        test: &str,
        lb_bin: &Path,
        vrrp: Vrrp,
        a: NodeSpec,
        b: NodeSpec,
        services: Services,
    ) -> FailoverLab {
        let mut lab = Lab::new(test);
        let client = lab.host("client", CLIENT);
        let echo_stop = Arc::new(AtomicBool::new(false));
        let backend_resets = Arc::new(AtomicU64::new(0));
        let count = if services.echo {
            ECHO_BACKENDS.len()
        } else {
            1
        };
        for (i, addr) in ECHO_BACKENDS.iter().take(count).enumerate() {
            let name = if i == 0 {
                "be".to_string()
            } else {
                format!("be{}", i + 1)
            };
            let ns = lab.host(&name, &format!("{addr}/15"));
            let nat = services.forwarding == Forwarding::Nat;
            if !nat {
                // LVS-DR backend: the VIP on loopback, never answered for in ARP.
                lab.ip(&["-n", &ns, "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
                lab.sh(
                    &ns,
                    "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
                );
            }
            if services.forwarding == Forwarding::Tun {
                // No IPIP device on this kernel: lb's decap helper stands in.
                let cmd = format!(
                    "{} decap --interface eth0 --xdp-mode generic",
                    lb_bin.display()
                );
                lab.spawn(&ns, &cmd);
            }
            if i == 0 {
                let (bind, port) = if nat {
                    (BACKEND.to_string(), BACKEND_PORT)
                } else {
                    ("0.0.0.0".to_string(), VIP_PORT)
                };
                lab.http_backend(&ns, &bind, port, "be1");
            }
            if services.echo {
                let (bind, port) = if nat {
                    (*addr, ECHO_PORT + 1)
                } else {
                    (Ipv4Addr::UNSPECIFIED, ECHO_PORT)
                };
                let label: &'static str = if i == 0 { "be1" } else { "be2" };
                crate::flows::backend(
                    &ns,
                    SocketAddrV4::new(bind, port),
                    label,
                    echo_stop.clone(),
                    backend_resets.clone(),
                );
            }
        }
        let node = |lab: &mut Lab, i: usize, name: &'static str, spec: NodeSpec| Node {
            name,
            ns: lab.host(name, NODE_ADDRS[i]),
            spec,
            vrrp_pid: None,
            service_pid: None,
            stopping: None,
            starts: 0,
            crashed: false,
        };
        let nodes = [node(&mut lab, 0, "a", a), node(&mut lab, 1, "b", b)];
        let fl = FailoverLab {
            lab,
            client,
            lb_bin: lb_bin.to_path_buf(),
            vrrp,
            services,
            nodes,
            echo_stop,
            backend_resets,
        };
        if services.pin {
            let dir = fl.bpffs();
            std::fs::create_dir_all(&dir).expect("bpffs dir");
            let out = Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&dir)
                .output()
                .expect("mount");
            assert!(
                out.status.success(),
                "mounting a bpffs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if services.sync.is_some() {
            let key = fl.lab.dir().join("sync.key");
            std::fs::write(&key, "lab sync key, 32 bytes of secret\n").expect("sync key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod sync key");
        }
        fl
    }

    pub fn spec(&self, i: usize) -> NodeSpec {
        self.nodes[i].spec
    }

    /// The lab's own bpf filesystem (with `Services::pin`).
    fn bpffs(&self) -> PathBuf {
        self.lab.dir().join("bpffs")
    }

    fn file(&self, i: usize, what: &str) -> PathBuf {
        self.lab
            .dir()
            .join(format!("{}-{what}", self.nodes[i].name))
    }

    fn lb_config(&self, i: usize, with_vrrp: bool) -> String {
        let n = &self.nodes[i];
        let fwd = self.services.forwarding;
        let nat = fwd == Forwarding::Nat;
        let sync = self.services.sync.filter(|_| with_vrrp);
        // Synced nat flows need replies to follow the VIP; its SNAT ports
        // stay clear of the VIP's service ports.
        let snat = if nat && sync.is_some() {
            format!("snat_address = \"{VIP}\"\nsnat_ports = \"10000-32767\"\n")
        } else {
            String::new()
        };
        let http_port = if nat { BACKEND_PORT } else { VIP_PORT };
        let pin = if self.services.pin {
            format!("pin_dir = \"{}\"\n", self.bpffs().join(n.name).display())
        } else {
            String::new()
        };
        let mut c = format!(
            r#"[daemon]
xdp_mode = "generic"
admin_socket = "{sock}"
{pin}
[[service]]
vip = "{VIP}:{VIP_PORT}"
interface = "eth0"
forwarding = "{mode}"
{snat}
[[service.backend]]
address = "{BACKEND}:{http_port}"
"#,
            mode = fwd.name(),
            sock = self
                .file(
                    i,
                    if with_vrrp {
                        "vrrp.sock"
                    } else {
                        "service.sock"
                    }
                )
                .display(),
        );
        if self.services.echo {
            let port = if nat { ECHO_PORT + 1 } else { ECHO_PORT };
            c.push_str(&format!(
                "\n[[service]]\nvip = \"{VIP}:{ECHO_PORT}\"\ninterface = \"eth0\"\nforwarding = \"{}\"\n{snat}",
                fwd.name()
            ));
            for b in ECHO_BACKENDS {
                c.push_str(&format!(
                    "\n[[service.backend]]\naddress = \"{b}:{port}\"\n"
                ));
            }
        }
        if let Some(interval) = sync {
            let addr = |j: usize| {
                NODE_ADDRS[j]
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            c.push_str(&format!(
                "\n[sync]\nsource_address = \"{}\"\npeers = [\"{}\"]\nport = {SYNC_PORT}\n\
                 key_file = \"{}\"\ninterval = \"{}ms\"\n",
                addr(i),
                addr(1 - i),
                self.lab.dir().join("sync.key").display(),
                interval.as_millis(),
            ));
        }
        if with_vrrp {
            c.push_str(&format!(
                r#"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = {VRID}
priority = {prio}
advert_int = "{adv}ms"
version = {ver}
nopreempt = {nopreempt}
virtual_ipaddress = ["{VIP}/32"]
"#,
                prio = n.spec.priority,
                adv = self.vrrp.advert_int.as_millis(),
                ver = self.vrrp.version,
                nopreempt = n.spec.nopreempt,
            ));
        }
        c
    }

    fn keepalived_config(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!(
            "global_defs {{\n  router_id lbt_{name}\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  version {ver}\n  \
             virtual_router_id {VRID}\n  priority {prio}\n  advert_int {adv}\n{nopreempt}  \
             virtual_ipaddress {{\n    {VIP}/32\n  }}\n}}\n",
            name = n.name,
            ver = self.vrrp.version,
            prio = n.spec.priority,
            adv = self.vrrp.advert_int.as_secs_f64(),
            nopreempt = if n.spec.nopreempt {
                "  nopreempt\n"
            } else {
                ""
            },
        )
    }

    fn spawn_lb(&mut self, i: usize, config: &str, what: &str) -> u32 {
        let path = self.file(i, &format!("{what}.toml"));
        std::fs::write(&path, config).expect("lb config");
        let ns = self.nodes[i].ns.clone();
        // Rejected adverts are logged at debug: `lb_log` shows them.
        let cmd = format!(
            "env RUST_LOG=info,lb_core::vrrp=debug {} run --config {}",
            self.lb_bin.display(),
            path.display()
        );
        let log = self.file(i, &format!("{what}.log"));
        self.lab.spawn_logged(&ns, &cmd, Some(&log))
    }

    /// Starts node `i`'s VRRP speaker with its current spec (after its
    /// service daemon, for keepalived, as a unit ordering would).
    pub fn start(&mut self, i: usize) {
        assert!(self.nodes[i].vrrp_pid.is_none(), "node {i} already running");
        assert!(
            self.wait_stopped(i, Duration::from_secs(10)),
            "node {i} still running 10 s after SIGTERM"
        );
        if self.nodes[i].crashed {
            // A rebooted host: back on the network, without the VIP.
            let ns = self.nodes[i].ns.clone();
            self.lab
                .try_sh(&ns, &format!("ip addr del {VIP}/32 dev eth0"));
            self.lab.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            self.nodes[i].crashed = false;
        }
        self.nodes[i].starts += 1;
        if self.nodes[i].spec.speaker == Speaker::Keepalived && self.nodes[i].service_pid.is_none()
        {
            let log = self.file(i, "service.log");
            let runs = || {
                std::fs::read_to_string(&log)
                    .map(|l| l.matches("lb running").count())
                    .unwrap_or(0)
            };
            let before = runs();
            let cfg = self.lb_config(i, false);
            let pid = self.spawn_lb(i, &cfg, "service");
            self.nodes[i].service_pid = Some(pid);
            let t0 = Instant::now();
            while runs() == before {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "node {i}'s service daemon did not come up\n{}",
                    self.logs()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        let pid = match self.nodes[i].spec.speaker {
            Speaker::Lb => {
                let cfg = self.lb_config(i, true);
                self.spawn_lb(i, &cfg, "vrrp")
            }
            Speaker::Keepalived => {
                // A crashed keepalived leaves its pid files; one naming a pid
                // not yet reaped makes the next keepalived refuse to start.
                for f in ["keepalived.pid", "vrrp.pid"] {
                    let _ = std::fs::remove_file(self.file(i, f));
                }
                let conf = self.file(i, "keepalived.conf");
                std::fs::write(&conf, self.keepalived_config(i)).expect("keepalived.conf");
                let log = self.file(i, "keepalived.log");
                // Mark each start in the log, so that a failure shows which
                // run it came from.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| writeln!(f, "=== start {}", self.nodes[i].starts))
                    .expect("keepalived.log");
                let cmd = format!(
                    "{KEEPALIVED} -n -l -D -G --vrrp -f {} -p {} -r {}",
                    conf.display(),
                    self.file(i, "keepalived.pid").display(),
                    self.file(i, "vrrp.pid").display(),
                );
                let ns = self.nodes[i].ns.clone();
                self.lab.spawn_logged(&ns, &cmd, Some(&log))
            }
        };
        self.nodes[i].vrrp_pid = Some(pid);
    }

    /// A crash of the node: no priority-0 advert, the VIP stays where it
    /// was, nothing forwards. keepalived's VRRP child would get SIGTERM from
    /// its dying parent (and leave cleanly) or be respawned by it, so both
    /// are stopped first and then killed.
    pub fn kill(&mut self, i: usize) {
        let pid = self.nodes[i].vrrp_pid.take().expect("node not running");
        if self.nodes[i].spec.speaker == Speaker::Keepalived {
            let child = std::fs::read_to_string(self.file(i, "vrrp.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .expect("keepalived's VRRP child pid");
            for p in [pid, child] {
                self.lab.signal(p, libc::SIGSTOP);
            }
            self.lab.signal(child, libc::SIGKILL);
            if let Some(service) = self.nodes[i].service_pid.take() {
                self.lab.kill(service);
            }
        }
        self.lab.kill(pid);
    }

    /// A crash of the whole host: `kill`, and the node falls silent on the
    /// network at once, as a host that lost power. Without this the node's
    /// kernel, still holding the VIP, would answer the flows' next packets
    /// with resets until the new master's gratuitous ARP.
    pub fn crash(&mut self, i: usize) {
        let ns = self.nodes[i].ns.clone();
        self.lab.ip(&["-n", &ns, "link", "set", "eth0", "down"]);
        self.kill(i);
        self.nodes[i].crashed = true;
    }

    /// Connections the echo service's backends saw reset.
    pub fn backend_resets(&self) -> u64 {
        self.backend_resets.load(Ordering::Relaxed)
    }

    /// Which node holds the VIP alone, if one does.
    pub fn master(&self) -> Option<usize> {
        match (self.has_vip(0), self.has_vip(1)) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    }

    /// A counter or gauge from node `i`'s metrics (`lb run` with VRRP), if
    /// its exporter answers and has the series.
    pub fn metric(&self, i: usize, series: &str) -> Option<f64> {
        let out = self.lab.try_sh(
            &self.nodes[i].ns,
            "curl -s --max-time 1 http://127.0.0.1:9658/metrics",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A clean stop of the VRRP speaker; returns at once (see
    /// `wait_stopped`).
    pub fn term(&mut self, i: usize) {
        let pid = self.nodes[i].vrrp_pid.take().expect("node not running");
        self.lab.signal(pid, libc::SIGTERM);
        self.nodes[i].stopping = Some(pid);
    }

    /// Waits for a speaker sent SIGTERM to exit; false if it is still
    /// running after `timeout`.
    pub fn wait_stopped(&mut self, i: usize, timeout: Duration) -> bool {
        match self.nodes[i].stopping {
            Some(pid) if !self.lab.wait_exit(pid, timeout) => false,
            _ => {
                self.nodes[i].stopping = None;
                true
            }
        }
    }

    pub fn has_vip(&self, i: usize) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.nodes[i].ns, "-4", "addr", "show", "dev", "eth0"])
            .output()
            .expect("ip addr show");
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/32"))
    }

    /// Waits until node `i` alone holds the VIP and the VIP answers; returns
    /// how long it took.
    pub fn wait_sole_master(&self, i: usize, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let other = 1 - i;
        loop {
            if self.has_vip(i) && !self.has_vip(other) && self.get_from_client().is_ok() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "node {i} not sole VIP owner within {timeout:?}: has_vip = [{}, {}]\n{}",
                    self.has_vip(0),
                    self.has_vip(1),
                    self.logs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `i` holds the VIP, whoever else does; returns how
    /// long it took (20 ms resolution).
    pub fn wait_vip(&self, i: usize, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        while !self.has_vip(i) {
            if t0.elapsed() > timeout {
                return Err(format!(
                    "node {i} has no VIP within {timeout:?}\n{}",
                    self.logs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(t0.elapsed())
    }

    /// Waits until the VIP answers the client, whoever holds it.
    pub fn wait_answers(&self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        while self.get_from_client().is_err() {
            if t0.elapsed() > timeout {
                return Err(format!(
                    "the VIP did not answer within {timeout:?}\n{}",
                    self.logs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(t0.elapsed())
    }

    fn get_from_client(&self) -> Result<String, String> {
        let ns = self.client.clone();
        thread::spawn(move || {
            enter(&ns);
            http_get(Duration::from_millis(500))
        })
        .join()
        .expect("probe thread")
    }

    /// keepalived's log of node `i` (empty for an lb node).
    pub fn keepalived_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.file(i, "keepalived.log")).unwrap_or_default()
    }

    /// The log of node `i`'s `lb run` with VRRP (empty for keepalived).
    pub fn lb_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.file(i, "vrrp.log")).unwrap_or_default()
    }

    /// Every log of both nodes, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..2 {
            for what in ["vrrp.log", "service.log", "keepalived.log"] {
                if let Ok(s) = std::fs::read_to_string(self.file(i, what)) {
                    let tail: Vec<&str> = s.lines().rev().take(40).collect();
                    out.push_str(&format!("--- node {i} {what} (last 40 lines)\n"));
                    for l in tail.iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    pub fn probe(&self) -> Prober {
        Prober::start(&self.client)
    }
}

/// One HTTP/1.0 GET of the VIP from the calling thread's namespace.
fn http_get(timeout: Duration) -> Result<String, String> {
    let vip = SocketAddrV4::new(VIP, VIP_PORT);
    let mut c = TcpStream::connect_timeout(&vip.into(), timeout).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    if resp.starts_with("HTTP/1.0 200") {
        Ok(resp)
    } else {
        Err(format!("bad response {resp:?}"))
    }
}

/// A client sending one HTTP GET to the VIP every 50 ms, each from a
/// thread of its own with a 200 ms timeout, for at most 60 s or 1200
/// probes. Probes overlap so that one stuck on a vanished address does not
/// delay the next: the gap is then measured to within the 50 ms interval,
/// not the timeout.
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Probed>,
}

pub struct Probed {
    pub attempts: usize,
    pub failures: usize,
    /// The longest time between two successful answers, or from the last
    /// success to the last probe sent.
    pub longest_gap: Duration,
    /// The VIP answered within the last 250 ms of probing. Not just "the
    /// last probe succeeded": on a loaded machine a single probe can miss
    /// its 200 ms while the VIP is fine.
    pub recovered: bool,
}

const PROBE_EVERY: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

impl Prober {
    fn start(client: &str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ns = client.to_string();
        let handle = thread::spawn(move || {
            let started = Instant::now();
            let (tx, rx) = mpsc::channel();
            let mut probes = Vec::new();
            while !s.load(Ordering::Relaxed)
                && probes.len() < 1_200
                && started.elapsed() < Duration::from_secs(60)
            {
                let next = Instant::now() + PROBE_EVERY;
                let (ns, tx) = (ns.clone(), tx.clone());
                probes.push(thread::spawn(move || {
                    enter(&ns);
                    let ok = http_get(PROBE_TIMEOUT).is_ok();
                    let _ = tx.send((Instant::now(), ok));
                }));
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            let ended = Instant::now();
            for p in probes {
                let _ = p.join();
            }
            drop(tx);
            let results: Vec<(Instant, bool)> = rx.iter().collect();
            let answers: Vec<Instant> = {
                let mut a: Vec<Instant> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
                a.sort();
                a
            };
            let tail = ended.saturating_duration_since(answers.last().copied().unwrap_or(started));
            let longest = answers
                .windows(2)
                .map(|w| w[1] - w[0])
                .chain(std::iter::once(tail))
                .max()
                .unwrap_or_default();
            Probed {
                attempts: results.len(),
                failures: results.iter().filter(|r| !r.1).count(),
                longest_gap: longest,
                recovered: tail <= Duration::from_millis(250),
            }
        });
        Prober { stop, handle }
    }

    pub fn stop(self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("prober thread")
    }
}
