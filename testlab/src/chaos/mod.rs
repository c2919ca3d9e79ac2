//! Chaos under load: two `lb run` nodes (VRRP, dr forwarding) in front of
//! backends that get killed, hang, reset and flap, while a bounded client
//! load runs through the VIP, the master is killed and comes back, and the
//! config is reloaded, valid and invalid. Every failed request is
//! classified ([`classify`]); the run's result is one table ([`Report`]).
//!
//! dr because both nodes build the same Maglev table from the same healthy
//! set: a flow moving to the other node on failover keeps its backend
//! without any connection-table sync.

pub mod backend;
pub mod classify;
pub mod load;
pub mod schedule;

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{Lab, in_ns};
use backend::Backend;
use classify::{Bounds, Event, Report, Timed, classify, failover_gaps};
use load::{Load, LoadSpec};

pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODES: [(&str, &str, u8); 2] = [("a", "198.18.0.2/15", 150), ("b", "198.18.0.3/15", 100)];
/// Backends that fault one at a time; one more flaps throughout.
pub const NORMAL_BACKENDS: usize = 4;

/// The health check of the run's config, and what it implies.
const DELAY_LOOP: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const FALL: u32 = 2;
const RISE: u32 = 2;
const ADVERT_INT: Duration = Duration::from_secs(1);
/// Scheduling on a shared 2-core machine, added to each bound.
const SLACK: Duration = Duration::from_secs(1);

/// The bounds the config promises. A fault that begins just after a
/// passing probe is probed within a delay_loop; `fall` failed rounds a
/// delay_loop apart, each probe up to connect_timeout, take it down
/// (`CheckSpec::down_within`), and the table swap follows within the
/// daemon's 50 ms coalescing window. A killed master's backup takes over
/// after 3 × advert_int + skew (RFC 3768), then its gratuitous ARP turns
/// the client around.
pub fn bounds() -> Bounds {
    let skew = Duration::from_secs_f64((256.0 - 100.0) / 256.0);
    Bounds {
        detect: (DELAY_LOOP + CONNECT_TIMEOUT) * FALL + Duration::from_millis(50) + SLACK,
        rise: DELAY_LOOP * RISE + SLACK,
        failover: ADVERT_INT * 3 + skew + SLACK,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub duration: Duration,
    pub seed: u64,
    pub load: LoadSpec,
}

impl Options {
    /// About 300 requests a second from 6 clients; at most 400 a second.
    pub fn new(duration: Duration, seed: u64) -> Options {
        Options {
            duration,
            seed,
            load: LoadSpec {
                workers: 6,
                pause: Duration::from_millis(15),
                max_requests: 400 * duration.as_secs() as usize,
            },
        }
    }
}

/// The report, and what the nodes logged, for the caller to check and to
/// show on failure.
pub struct Run {
    pub report: Report,
    pub logs: [String; 2],
    pub reloads_applied: [usize; 2],
    pub reloads_rejected: [usize; 2],
}

struct Nodes {
    ns: [String; 2],
    pids: [Option<u32>; 2],
    config: [PathBuf; 2],
    log: [PathBuf; 2],
}

fn config(dir: &Path, node: usize, weight: u32) -> String {
    let mut c = format!(
        r#"[daemon]
xdp_mode = "generic"
admin_socket = "{dir}/{name}.sock"
flow_capacity = 65536

[[service]]
vip = "{VIP}"
interface = "eth0"
forwarding = "dr"

[service.check]
type = "http"
path = "/"
delay_loop = "{delay}ms"
connect_timeout = "{timeout}ms"
fall = {FALL}
rise = {RISE}
"#,
        dir = dir.display(),
        name = NODES[node].0,
        delay = DELAY_LOOP.as_millis(),
        timeout = CONNECT_TIMEOUT.as_millis(),
    );
    for i in 0..=NORMAL_BACKENDS {
        // A valid reload changes be1's weight: a real table swap.
        let w = if i == 0 { weight } else { 1 };
        c.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:80\"\nweight = {w}\n",
            backend_addr(i)
        ));
    }
    c.push_str(&format!(
        r#"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = {prio}
advert_int = "{adv}ms"
virtual_ipaddress = ["{vip}/32"]
"#,
        prio = NODES[node].2,
        adv = ADVERT_INT.as_millis(),
        vip = VIP.ip(),
    ));
    c
}

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1 + i as u8)
}

fn count(path: &Path, what: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.matches(what).count())
        .unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "chaos: timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

impl Nodes {
    fn start(&mut self, lab: &mut Lab, lb: &Path, i: usize) {
        let cmd = format!(
            "env RUST_LOG=info {} run --config {}",
            lb.display(),
            self.config[i].display()
        );
        self.pids[i] = Some(lab.spawn_logged(&self.ns[i], &cmd, Some(&self.log[i])));
    }

    fn write(&self, dir: &Path, weight: u32) {
        for i in 0..2 {
            std::fs::write(&self.config[i], config(dir, i, weight)).expect("chaos config");
        }
    }

    /// SIGHUP to every running node; waits until each has logged `outcome`.
    fn reload(&self, lab: &Lab, outcome: &str) {
        let before: Vec<usize> = self.log.iter().map(|l| count(l, outcome)).collect();
        for pid in self.pids.iter().flatten() {
            lab.signal(*pid, libc::SIGHUP);
        }
        for ((pid, log), before) in self.pids.iter().zip(&self.log).zip(before) {
            if pid.is_some() {
                wait_for(outcome, Duration::from_secs(10), || {
                    count(log, outcome) > before
                });
            }
        }
    }
}

fn has_vip(lab: &Lab, ns: &str) -> bool {
    let out = lab.ip(&["-n", ns, "-4", "addr", "show", "dev", "eth0"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {}/32", VIP.ip()))
}

/// Runs the chaos for `opts.duration` (plus about 20 s of setup) and
/// returns its report. `test` names the lab's namespaces.
pub fn run(lb: &Path, test: &str, opts: &Options) -> Run {
    let mut lab = Lab::new(test);
    let client = lab.host("client", &format!("{CLIENT}/15"));
    let node_ns = [lab.host("a", NODES[0].1), lab.host("b", NODES[1].1)];
    let epoch = Instant::now();
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = (0..=NORMAL_BACKENDS)
        .map(|i| format!("be{}", i + 1))
        .collect();
    let backends: Vec<Backend> = (0..=NORMAL_BACKENDS)
        .map(|i| {
            let ns = lab.host(&names[i], &format!("{}/15", backend_addr(i)));
            // LVS-DR backend: the VIP on loopback, never answered for in ARP.
            lab.ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", VIP.ip()),
                "dev",
                "lo",
            ]);
            lab.sh(
                &ns,
                "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
            );
            Backend::start(
                &ns,
                i,
                names[i].clone(),
                VIP.port(),
                epoch,
                accepts.clone(),
                stop.clone(),
            )
        })
        .collect();
    let dir = lab.dir();
    let mut nodes = Nodes {
        ns: node_ns,
        pids: [None, None],
        config: [dir.join("a.toml"), dir.join("b.toml")],
        log: [dir.join("a.log"), dir.join("b.log")],
    };
    let mut weight = 1;
    nodes.write(&dir, weight);
    nodes.start(&mut lab, lb, 0);
    nodes.start(&mut lab, lb, 1);
    wait_for("node a to hold the VIP", Duration::from_secs(30), || {
        has_vip(&lab, &nodes.ns[0]) && !has_vip(&lab, &nodes.ns[1])
    });
    wait_for("the VIP to answer", Duration::from_secs(15), || {
        in_ns(&client, || {
            TcpStream::connect_timeout(&VIP.into(), Duration::from_millis(500)).is_ok()
        })
    });

    let plan = schedule::plan(opts.duration, opts.seed, NORMAL_BACKENDS);
    let start = Instant::now();
    let offset = start - epoch;
    let load = Load::start(&client, VIP, names, opts.load, epoch, start + opts.duration);
    let mut events: Vec<Timed> = Vec::new();
    for p in &plan {
        thread::sleep((start + p.at).saturating_duration_since(Instant::now()));
        let at = epoch.elapsed();
        match p.event {
            Event::Backend(i, mode) => backends[i].set(mode),
            Event::MasterKill => {
                if let Some(pid) = nodes.pids[0].take() {
                    lab.kill(pid);
                }
            }
            Event::MasterStart => nodes.start(&mut lab, lb, 0),
            Event::Reload(true) => {
                weight = 3 - weight;
                nodes.write(&dir, weight);
                nodes.reload(&lab, "config reloaded");
            }
            Event::Reload(false) => {
                for c in &nodes.config {
                    std::fs::write(c, "[[service]]\nvip = \"198.18.0.100:80\"\nbogus = 1\n")
                        .expect("bad config");
                }
                nodes.reload(&lab, "reload rejected");
                // A node restarted later must find a valid config.
                nodes.write(&dir, weight);
            }
        }
        events.push(Timed { at, event: p.event });
    }
    let requests = load.finish();
    stop.store(true, Ordering::Relaxed);
    let accepts: Vec<_> = accepts
        .lock()
        .expect("accept log")
        .iter()
        .filter(|a| *a.peer.ip() == CLIENT)
        .copied()
        .collect();
    let failed = classify(&requests, &accepts, &events, NORMAL_BACKENDS + 1, &bounds());
    let gaps = failover_gaps(&requests, &events);
    let served = requests
        .iter()
        .filter(|r| matches!(r.outcome, classify::Outcome::Served(_)))
        .count();
    // Times in the report are from the start of the load.
    let shift = |d: Duration| d.saturating_sub(offset);
    let report = Report {
        duration: opts.duration,
        flapper: NORMAL_BACKENDS,
        events: events
            .iter()
            .map(|e| Timed {
                at: shift(e.at),
                event: e.event,
            })
            .collect(),
        requests: requests.len(),
        served,
        failed: failed
            .into_iter()
            .map(|(mut r, c)| {
                r.start = shift(r.start);
                r.end = shift(r.end);
                (r, c)
            })
            .collect(),
        gaps,
    };
    let logs = nodes
        .log
        .clone()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default());
    Run {
        reloads_applied: nodes.log.clone().map(|l| count(&l, "config reloaded")),
        reloads_rejected: nodes.log.clone().map(|l| count(&l, "reload rejected")),
        report,
        logs,
    }
}
