//! End-to-end comparison: wrk through a VIP served by lb (generic and native
//! XDP, dr and nat), HAProxy (TCP mode) and nginx stream, against wrk
//! straight to one backend (the ceiling), all in one run on a
//! network-namespace lab.
//!
//! Lab (198.18.0.0/15 only, every host a namespace on one bridge):
//! - client 198.18.0.1: runs wrk;
//! - lb 198.18.0.2: `lb run` in generic XDP mode, VIPs 198.18.0.100:80 (dr),
//!   198.18.0.101:80 (nat → backends :8080) and 198.18.0.102:80 (dr to be1
//!   alone) added on its eth0 since there is no VRRP;
//! - lbn 198.18.0.4: the same in native mode with VIPs 198.18.0.110 and .111,
//!   its bridge-side veth running XDP_PASS (which native veth XDP needs);
//! - proxy 198.18.0.3: HAProxy on :80 and nginx stream on :81, both round
//!   robin to the backends' :8080;
//! - be1..be3 198.18.1.1-3: nginx serving a small static file on :8080 and
//!   :80, the dr VIPs and 198.18.0.120 on loopback with
//!   arp_ignore/arp_announce;
//! - the bridge does not call iptables on bridged frames (a switch).
//!
//! Two ceilings. Direct to one backend is the issue's; but on 2 vCPUs three
//! nginx instances serving the same load cost more than one (more wakeups
//! and context switches per request), a cost every balancer here pays for
//! spreading and that has nothing to do with the balancer. The client
//! routes 198.18.0.120 over all three backends itself (ECMP, layer-4 hash):
//! the same spread with nothing in the path. lb's dr VIP to be1 alone is the
//! other way to separate the two costs.
//!
//! wrk's latencies start when a request is written, so connection setup
//! (and a dropped SYN's 1 s retransmit) shows in req/s, not in p50/p99.
//!
//! Cases and modes are interleaved (repeat 1 of every case, then repeat 2,
//! ...) so drift on a shared machine spreads over all of them. CPU is the
//! machine's (/proc/stat, all CPUs, user+nice+system+irq+softirq) during each
//! wrk run, so it includes wrk, the backends and the softirq time XDP runs
//! in; the direct run's cost per request is subtracted to get the LB's
//! marginal cost.
//!
//! `cargo xtask bench e2e` builds it and `lb` in release mode and runs it.
use std::{
    fmt::Write as _,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    sync::mpsc,
    thread::JoinHandle,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use lb_core::datapath::{AttachMode, Datapath, Limits};

#[derive(Parser)]
#[command(about = "lb vs HAProxy vs nginx stream, end to end (Markdown output; needs root)")]
struct Args {
    /// The `lb` binary (release build).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/lb"))]
    lb: PathBuf,
    /// wrk run length per measurement, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Measurements per case and mode; the median is reported with the spread.
    #[arg(long, default_value_t = 4)]
    repeats: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Measure only the lb cases whose name contains one of these (e.g.
    /// `generic`, `native, dr`); the direct ceiling and HAProxy, which the
    /// report is relative to, always run. Default: every case.
    #[arg(long = "only")]
    only: Vec<String>,
    /// Measure only this mode. Default: both.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
}

/// Namespaces of this harness are `lbe2e-<pid>-<host>`, so a later run can
/// tell its own leftovers (dead pid) from a concurrent run's.
const PREFIX: &str = "lbe2e-";
const BACKENDS: [&str; 3] = ["198.18.1.1", "198.18.1.2", "198.18.1.3"];
const VIP_DR: &str = "198.18.0.100";
const VIP_NAT: &str = "198.18.0.101";
/// dr to be1 alone: the same serving work as the direct ceiling, so the
/// difference is the LB's alone.
const VIP_DR_ONE: &str = "198.18.0.102";
const VIP_NATIVE_DR: &str = "198.18.0.110";
const VIP_NATIVE_NAT: &str = "198.18.0.111";
const PROXY: &str = "198.18.0.3";
/// Owned by every backend (on loopback, like the dr VIPs) and routed by the
/// client itself over all three (ECMP): the backends' load spread as an LB
/// spreads it, with no LB in the path.
const ECMP_ADDR: &str = "198.18.0.120";
const ECMP: &str = "direct to the three backends (client-side ECMP)";
const HAPROXY: &str = "HAProxy 2.6, TCP mode";
const NGINX_MODULES: &str = "/usr/lib/nginx/modules";
const TCP_TUNING: &str =
    "sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 65535'";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Namespaces, processes and files of one run; `Drop` removes them all, so
/// an error anywhere leaves nothing behind.
struct Lab {
    tag: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    ports: u32,
    /// Holds the XDP_PASS program on a native lb host's bridge port; it is
    /// detached when the sender is dropped.
    peer_pass: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

fn ns_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Removes namespaces left by runs that died without cleaning up (killed by
/// SIGKILL, or the machine's command limit).
fn remove_stale() -> Result<()> {
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for p in ns_pids(name) {
            // SAFETY: kill(2) of a process inside a namespace this harness
            // created and whose creator is gone.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

impl Lab {
    fn new() -> Result<Lab> {
        remove_stale()?;
        let tag = format!("{PREFIX}{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            tag,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            ports: 0,
            peer_pass: None,
        };
        let br = lab.add_ns("br")?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        // A switch forwards frames, it does not filter them: without this,
        // a kernel with br_netfilter built in (as here) runs every bridged
        // IPv4 frame through the IP hooks, a cost a real LAN does not have
        // and that every extra crossing of the bridge (every LB and proxy
        // path) pays again.
        lab.sh(
            &br,
            "sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
             net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
        )?;
        Ok(lab)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    fn add_ns(&mut self, host: &str) -> Result<String> {
        let ns = self.ns(host);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Native XDP on a veth drops the frames it sends (XDP_TX) unless the
    /// peer runs an XDP program too: this attaches the datapath's trivial
    /// XDP_PASS to the bridge port of the host created last.
    fn pass_on_last_bridge_port(&mut self) -> Result<()> {
        let br = self.ns("br");
        let port = format!("p{}", self.ports);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let attached = (|| -> Result<Datapath> {
                let f = std::fs::File::open(format!("/run/netns/{br}"))
                    .with_context(|| format!("opening netns {br}"))?;
                // SAFETY: a valid netns fd; setns affects only this thread,
                // which then keeps the program attached in that namespace.
                let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(r == 0, "setns {br}: {}", std::io::Error::last_os_error());
                let mut dp = Datapath::load(Limits {
                    max_vips: 1,
                    max_backends: 1,
                    ring_stride: 2,
                    flow_capacity: 16,
                    new_flow_cap: 0,
                })
                .context("loading the datapath for XDP_PASS")?;
                dp.attach_pass(&port, AttachMode::Native)
                    .with_context(|| format!("XDP_PASS on {br}/{port}"))?;
                Ok(dp)
            })();
            match attached {
                Ok(dp) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(dp);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx
            .recv()
            .context("XDP_PASS thread died")?
            .context("peer XDP program for native mode")?;
        self.peer_pass = Some((stop_tx, handle));
        Ok(())
    }

    /// A host with `eth0` on the bridge, addressed `cidr`.
    fn host(&mut self, host: &str, cidr: &str) -> Result<String> {
        let ns = self.add_ns(host)?;
        let br = self.ns("br");
        self.ports += 1;
        let port = format!("p{}", self.ports);
        ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "addr", "add", cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        // veth leaves checksums to a NIC that does not exist; the datapath's
        // incremental checksum updates need real ones to start from.
        self.sh(&ns, "ethtool -K eth0 tx off >/dev/null")?;
        Ok(ns)
    }

    fn sh(&self, ns: &str, script: &str) -> Result<String> {
        run(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]))
            .with_context(|| format!("in {ns}: {script}"))
    }

    /// Starts a long-running `script` in `ns`, logging to `<dir>/<log>.log`.
    fn spawn(&mut self, ns: &str, log: &str, script: &str) -> Result<()> {
        let path = self.dir.join(format!("{log}.log"));
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {script}")])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {log}: {script}"))?;
        self.children.push((log.to_string(), child));
        Ok(())
    }

    /// Fails with the log of any daemon that already exited.
    fn check_alive(&mut self) -> Result<()> {
        for (log, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                let text = std::fs::read_to_string(self.dir.join(format!("{log}.log")))
                    .unwrap_or_default();
                bail!("{log} exited ({status}):\n{text}");
            }
        }
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SIGTERM first: nginx's and HAProxy's masters take their workers
        // down with them only when asked politely.
        for (_, c) in &self.children {
            // SAFETY: kill(2) of a child this lab spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        if let Some((stop, handle)) = self.peer_pass.take() {
            drop(stop);
            let _ = handle.join();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, c) in &mut self.children {
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            // Whatever still runs in our namespaces (workers) is ours.
            for p in ns_pids(ns) {
                // SAFETY: kill(2) of a process inside a namespace we created.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One thing wrk is pointed at.
struct Case {
    name: &'static str,
    url: String,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "Connection: close",
        }
    }
}

/// One wrk run.
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: f64,
    errors: u64,
    cpu_s: f64,
    /// wrk outlived its duration and was stopped with SIGINT (it then
    /// prints its figures over the longer run time).
    stalled: bool,
}

/// Busy CPU-seconds of the whole machine since boot.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("parsing /proc/stat"))
        .collect::<Result<_>>()?;
    ensure!(f.len() >= 7, "short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq: idle and iowait are not work.
    let ticks = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// wrk's latency with its unit ("812.00us", "1.52ms", "2.01s") in µs.
fn micros(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("latency without unit: {v}")
    };
    Ok(num.parse::<f64>().with_context(|| format!("latency {v}"))? * scale)
}

fn parse_wrk(out: &str) -> Result<(f64, f64, f64, f64, u64)> {
    let (mut rps, mut p50, mut p99, mut requests, mut errors) = (None, None, None, None, 0);
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>()?),
            ["50%", v] => p50 = Some(micros(v)?),
            ["99%", v] => p99 = Some(micros(v)?),
            [n, "requests", "in", ..] => requests = Some(n.parse::<f64>()?),
            ["Socket", "errors:", rest @ ..] => {
                errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    Ok((
        rps.context("no Requests/sec")?,
        p50.context("no 50% latency")?,
        p99.context("no 99% latency")?,
        requests.context("no request count")?,
        errors,
    ))
}

fn wrk(lab: &Lab, client: &str, args: &Args, mode: Mode, url: &str, secs: u32) -> Result<Sample> {
    let header = match mode {
        Mode::KeepAlive => "",
        Mode::Close => "-H 'Connection: close'",
    };
    // wrk sometimes outlives -d when SYNs go unanswered (lb nat with its
    // source ports exhausted). SIGINT makes it stop and still print its
    // figures; SIGKILL 10 s later bounds a wrk that ignores even that.
    let script = format!(
        "timeout -k 10 -s INT {} wrk -t{} -c{} -d{secs}s --latency {header} {url}; echo wrk-exit=$?",
        secs + 10,
        args.threads,
        args.connections
    );
    let before = cpu_seconds()?;
    let out = lab.sh(client, &script)?;
    let cpu_s = cpu_seconds()? - before;
    let stalled = match out.lines().find_map(|l| l.strip_prefix("wrk-exit=")) {
        Some("0") => false,
        Some("124") => true,
        // Killed after ignoring SIGINT too: it printed nothing, and the run
        // counts as stalled with nothing served, as bad as a run can be.
        Some("137") => {
            let run_us = f64::from(secs + 10) * 1e6;
            return Ok(Sample {
                rps: 0.0,
                p50_us: run_us,
                p99_us: run_us,
                requests: 0.0,
                errors: 0,
                cpu_s,
                stalled: true,
            });
        }
        code => bail!("wrk failed (exit {code:?}):\n{out}"),
    };
    let (rps, p50_us, p99_us, requests, errors) =
        parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))?;
    Ok(Sample {
        rps,
        p50_us,
        p99_us,
        requests,
        errors,
        cpu_s,
        stalled,
    })
}

fn backend_conf(dir: &Path, name: &str) -> String {
    let d = dir.display();
    // keepalive_requests: nginx's default (1000) would make keep-alive runs
    // reconnect every 1000 requests.
    format!(
        "worker_processes 2;\n\
         pid {d}/{name}.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 100000000;\n\
         \x20 server {{ listen 8080; listen 80; root {d}/{name}-www; }}\n\
         }}\n"
    )
}

fn haproxy_conf() -> String {
    let mut c = format!(
        "global\n  maxconn 8000\n  nbthread 2\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend fe\n  bind {PROXY}:80\n  default_backend be\n\
         backend be\n  balance roundrobin\n"
    );
    for (i, b) in BACKENDS.iter().enumerate() {
        let _ = writeln!(c, "  server be{} {b}:8080", i + 1);
    }
    c
}

fn nginx_stream_conf(dir: &Path) -> String {
    let d = dir.display();
    let mut c = format!(
        "load_module {NGINX_MODULES}/ngx_stream_module.so;\n\
         worker_processes 2;\n\
         pid {d}/stream.pid;\n\
         events {{ worker_connections 16384; }}\n\
         stream {{\n  upstream be {{\n"
    );
    for b in BACKENDS {
        let _ = writeln!(c, "    server {b}:8080;");
    }
    let _ = write!(
        c,
        "  }}\n  server {{ listen {PROXY}:81; proxy_pass be; }}\n}}\n"
    );
    c
}

/// Where each lb host serves Prometheus metrics, in its own namespace.
const METRICS: &str = "127.0.0.1:9658";

/// Prometheus metrics that tell what lb itself did with the load.
const COUNTERS: [&str; 4] = [
    "lb_service_drops_total",
    "lb_unmatched_drops_total",
    "lb_backend_syns_total",
    "lb_backend_syn_answers_total",
];

/// The nonzero `COUNTERS` of both lb hosts, one per line, prefixed with the
/// host; "none" when there are none.
fn lb_counters(lab: &Lab) -> Result<String> {
    let mut out = String::new();
    for host in ["lb", "lbn"] {
        let text = lab.sh(&lab.ns(host), &format!("curl -sf http://{METRICS}/metrics"))?;
        for line in text.lines() {
            let nonzero = line
                .rsplit_once(' ')
                .is_some_and(|(_, v)| v.parse::<f64>().is_ok_and(|v| v != 0.0));
            if nonzero && COUNTERS.iter().any(|c| line.starts_with(&format!("{c}{{"))) {
                let _ = writeln!(out, "    {host}: {line}");
            }
        }
    }
    if out.is_empty() {
        out.push_str("    none");
    }
    Ok(out)
}

/// `lb run` config of one lb host: a dr and a nat VIP in `xdp_mode`.
fn lb_conf(dir: &Path, xdp_mode: &str, vip_dr: &str, vip_nat: &str) -> String {
    let mut c = format!(
        "[daemon]\nxdp_mode = \"{xdp_mode}\"\nadmin_socket = \"{}/lb-{xdp_mode}.sock\"\n\
         metrics_listen = \"{METRICS}\"\n",
        dir.display()
    );
    let mut services = vec![
        ("e2e-dr", vip_dr, "dr", 80, &BACKENDS[..]),
        ("e2e-nat", vip_nat, "nat", 8080, &BACKENDS[..]),
    ];
    if xdp_mode == "generic" {
        services.push(("e2e-dr-one", VIP_DR_ONE, "dr", 80, &BACKENDS[..1]));
    }
    for (name, vip, fwd, port, backends) in services {
        // Checked as in production: the nat service then also runs passive
        // health (observe layer4) under the load, which must not take a
        // busy, healthy backend down.
        let _ = write!(
            c,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}:80\"\ninterface = \"eth0\"\nforwarding = \"{fwd}\"\n\
             \n[service.check]\ntype = \"tcp\"\ndelay_loop = \"2s\"\nconnect_timeout = \"1s\"\n"
        );
        for b in backends {
            let _ = write!(c, "\n[[service.backend]]\naddress = \"{b}:{port}\"\n");
        }
    }
    c
}

/// Brings the lab up with every peer running; returns it, the client
/// namespace and the cases.
fn setup(args: &Args) -> Result<(Lab, String, Vec<Case>)> {
    ensure!(
        args.lb.exists(),
        "{} not found: cargo build --release -p lb-cli",
        args.lb.display()
    );
    ensure!(
        Path::new(NGINX_MODULES)
            .join("ngx_stream_module.so")
            .exists(),
        "nginx stream module missing: install libnginx-mod-stream (scripts/setup.sh)"
    );
    let mut lab = Lab::new()?;
    let dir = lab.dir.clone();
    let client = lab.host("client", "198.18.0.1/15")?;
    // The client closes first whenever the response's FIN trails it (through
    // a proxy): its TIME_WAITs would pin the default 28k ports for 60 s and
    // wrk would spin on connect. Usual load-generator and proxy tuning, so
    // the proxies are measured rather than the client's port range. Not on
    // the lb host: it opens no connections, and its nat source ports are
    // the datapath's, not the kernel's.
    lab.sh(&client, TCP_TUNING)?;
    let lb = lab.host("lb", "198.18.0.2/15")?;
    let lb_native = lab.host("lbn", "198.18.0.4/15")?;
    lab.pass_on_last_bridge_port()?;
    for (ns, vip) in [
        (&lb, VIP_DR),
        (&lb, VIP_DR_ONE),
        (&lb, VIP_NAT),
        (&lb_native, VIP_NATIVE_DR),
        (&lb_native, VIP_NATIVE_NAT),
    ] {
        ip(&["-n", ns, "addr", "add", &format!("{vip}/32"), "dev", "eth0"])?;
    }
    let proxy = lab.host("proxy", &format!("{PROXY}/15"))?;
    lab.sh(&proxy, TCP_TUNING)?;
    for (i, addr) in BACKENDS.iter().enumerate() {
        let name = format!("be{}", i + 1);
        let ns = lab.host(&name, &format!("{addr}/15"))?;
        // dr: the backend owns the VIP on loopback but must neither answer
        // ARP for it nor use it as an ARP source, or it would steal the VIP
        // from the LB.
        lab.sh(
            &ns,
            &format!(
                "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                 && ip addr add {VIP_DR}/32 dev lo && ip addr add {VIP_DR_ONE}/32 dev lo \
                 && ip addr add {ECMP_ADDR}/32 dev lo && ip addr add {VIP_NATIVE_DR}/32 dev lo"
            ),
        )?;
        let www = dir.join(format!("{name}-www"));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("hello from {name}\n"))?;
        let conf = lab.write(&format!("{name}.conf"), &backend_conf(&dir, &name))?;
        lab.spawn(
            &ns,
            &name,
            &format!(
                "nginx -e {d}/{name}.err -p {d} -c {} -g 'daemon off;'",
                conf.display(),
                d = dir.display()
            ),
        )?;
    }
    // Layer-4 hashing: one TCP connection, one path.
    lab.sh(
        &client,
        &format!(
            "sysctl -qw net.ipv4.fib_multipath_hash_policy=1 && ip route add {ECMP_ADDR}/32{}",
            BACKENDS
                .iter()
                .map(|b| format!(" nexthop via {b}"))
                .collect::<String>()
        ),
    )?;
    let haproxy = lab.write("haproxy.cfg", &haproxy_conf())?;
    lab.spawn(
        &proxy,
        "haproxy",
        &format!("haproxy -db -f {}", haproxy.display()),
    )?;
    let stream = lab.write("stream.conf", &nginx_stream_conf(&dir))?;
    lab.spawn(
        &proxy,
        "nginx-stream",
        &format!(
            "nginx -e {d}/stream.err -p {d} -c {} -g 'daemon off;'",
            stream.display(),
            d = dir.display()
        ),
    )?;
    for (ns, mode, dr, nat) in [
        (&lb, "generic", VIP_DR, VIP_NAT),
        (&lb_native, "native", VIP_NATIVE_DR, VIP_NATIVE_NAT),
    ] {
        let conf = lab.write(&format!("lb-{mode}.toml"), &lb_conf(&dir, mode, dr, nat))?;
        lab.spawn(
            ns,
            &format!("lb-{mode}"),
            &format!("{} run --config {}", args.lb.display(), conf.display()),
        )?;
    }
    let cases = vec![
        Case {
            name: "direct to one backend (ceiling)",
            url: format!("http://{}:8080/", BACKENDS[0]),
        },
        Case {
            name: ECMP,
            url: format!("http://{ECMP_ADDR}/"),
        },
        Case {
            name: "lb, generic XDP, dr",
            url: format!("http://{VIP_DR}/"),
        },
        Case {
            name: "lb, generic XDP, dr, one backend",
            url: format!("http://{VIP_DR_ONE}/"),
        },
        Case {
            name: "lb, generic XDP, nat",
            url: format!("http://{VIP_NAT}/"),
        },
        Case {
            name: "lb, native XDP, dr",
            url: format!("http://{VIP_NATIVE_DR}/"),
        },
        Case {
            name: "lb, native XDP, nat",
            url: format!("http://{VIP_NATIVE_NAT}/"),
        },
        Case {
            name: HAPROXY,
            url: format!("http://{PROXY}:80/"),
        },
        Case {
            name: "nginx 1.22 stream",
            url: format!("http://{PROXY}:81/"),
        },
    ];
    // Every path must serve every backend before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(30);
    for case in &cases {
        loop {
            lab.check_alive()?;
            let out = lab
                .sh(
                    &client,
                    &format!(
                        "for i in 1 2 3 4 5 6; do curl -s --max-time 1 {}; done",
                        case.url
                    ),
                )
                .unwrap_or_default();
            let seen = (1..=3)
                .filter(|i| out.contains(&format!("hello from be{i}")))
                .count();
            let want = if case.name.starts_with("direct") || case.name.ends_with("one backend") {
                1
            } else {
                3
            };
            if seen >= want {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{} ({}) did not reach {want} backend(s) within 30 s; got {out:?}",
                case.name,
                case.url
            );
            sleep(Duration::from_millis(300));
        }
    }
    Ok((lab, client, cases))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one case in one mode.
struct Summary {
    rps: f64,
    rps_min: f64,
    rps_max: f64,
    p50: f64,
    p99: f64,
    p99_min: f64,
    p99_max: f64,
    cpu_ms_per_k: f64,
    errors: u64,
    stalled: usize,
}

fn summarize(samples: &[Sample]) -> Summary {
    let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let mut rps = col(|s| s.rps);
    let mut p99 = col(|s| s.p99_us);
    Summary {
        rps: median(&mut rps),
        rps_min: rps[0],
        rps_max: rps[rps.len() - 1],
        p50: median(&mut col(|s| s.p50_us)),
        p99: median(&mut p99),
        p99_min: p99[0],
        p99_max: p99[p99.len() - 1],
        cpu_ms_per_k: median(&mut col(|s| s.cpu_s * 1e6 / s.requests)),
        errors: samples.iter().map(|s| s.errors).sum(),
        stalled: samples.iter().filter(|s| s.stalled).count(),
    }
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1e3)
}

fn signed_ms(us: f64) -> String {
    format!("{:+.2}", us / 1e3)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "lb-bench-e2e needs root (network namespaces, XDP)"
    );
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (mut lab, client, mut cases) = setup(&args)?;
    cases.retain(|c| {
        !c.name.starts_with("lb")
            || args.only.is_empty()
            || args.only.iter().any(|o| c.name.contains(o.as_str()))
    });
    let modes: Vec<Mode> = [Mode::KeepAlive, Mode::Close]
        .into_iter()
        .filter(|&m| args.mode.is_none_or(|only| only == m))
        .collect();
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); cases.len()]; modes.len()];
    let started = Instant::now();
    eprintln!("warm-up: 2 s per case and mode");
    for &mode in &modes {
        for case in &cases {
            wrk(&lab, &client, &args, mode, &case.url, 2)?;
        }
    }
    for rep in 1..=args.repeats {
        for (m, &mode) in modes.iter().enumerate() {
            for (c, case) in cases.iter().enumerate() {
                if STOP.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                lab.check_alive()?;
                let s = wrk(&lab, &client, &args, mode, &case.url, args.duration)
                    .with_context(|| format!("{} ({})", case.name, mode.label()))?;
                eprintln!(
                    "[{:>4.0}s] repeat {rep}/{}: {:<32} {:<17} {:>9.0} req/s  p50 {} ms  p99 {} ms  {:.3} CPU-ms/1k req  errors {}{}",
                    started.elapsed().as_secs_f64(),
                    args.repeats,
                    case.name,
                    mode.label(),
                    s.rps,
                    ms(s.p50_us),
                    ms(s.p99_us),
                    s.cpu_s * 1e6 / s.requests,
                    s.errors,
                    if s.stalled { "  (wrk stalled)" } else { "" }
                );
                samples[m][c].push(s);
            }
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let counters = lb_counters(&lab)?;
    drop(lab);

    println!(
        "wrk -t{} -c{} -d{}s --latency, {} repeats per case, interleaved; medians, spread min–max.\n",
        args.threads, args.connections, args.duration, args.repeats
    );
    println!(
        "| mode | case | req/s (median) | spread | % of direct | % of ECMP | p50 ms | p99 ms (spread) | added p50 / p99 ms | CPU-ms per 1k req | marginal CPU-ms per 1k req | errors (stalled runs) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    let mut verdicts_ecmp = Vec::new();
    for (m, &mode) in modes.iter().enumerate() {
        let sums: Vec<Summary> = samples[m].iter().map(|s| summarize(s)).collect();
        let direct = &sums[0];
        let haproxy = cases
            .iter()
            .position(|c| c.name == HAPROXY)
            .context("no HAProxy case")?;
        let ecmp = &sums[cases
            .iter()
            .position(|c| c.name == ECMP)
            .context("no ECMP case")?];
        let haproxy_marginal = sums[haproxy].cpu_ms_per_k - direct.cpu_ms_per_k;
        let haproxy_marginal_ecmp = sums[haproxy].cpu_ms_per_k - ecmp.cpu_ms_per_k;
        for (case, s) in cases.iter().zip(&sums) {
            let is_direct = std::ptr::eq(s, direct);
            let marginal = s.cpu_ms_per_k - direct.cpu_ms_per_k;
            println!(
                "| {} | {} | {:.0} | {:.0}–{:.0} | {:.1}% | {:.1}% | {} | {} ({}–{}) | {} | {:.3} | {} | {} |",
                mode.label(),
                case.name,
                s.rps,
                s.rps_min,
                s.rps_max,
                100.0 * s.rps / direct.rps,
                100.0 * s.rps / ecmp.rps,
                ms(s.p50),
                ms(s.p99),
                ms(s.p99_min),
                ms(s.p99_max),
                if is_direct {
                    "baseline".to_string()
                } else {
                    format!(
                        "{} / {}",
                        signed_ms(s.p50 - direct.p50),
                        signed_ms(s.p99 - direct.p99)
                    )
                },
                s.cpu_ms_per_k,
                if is_direct {
                    "baseline".to_string()
                } else {
                    format!("{marginal:+.3}")
                },
                if s.stalled > 0 {
                    format!("{} ({} stalled)", s.errors, s.stalled)
                } else {
                    s.errors.to_string()
                }
            );
            if case.name.starts_with("lb") {
                let share = s.rps / direct.rps;
                let added_p99 = (s.p99 - direct.p99) / direct.p99;
                let cpu_ratio = marginal / haproxy_marginal;
                verdicts.push(format!(
                    "- {} ({}): throughput {:.1}% of direct ({}: ≥ 95%); added p99 {:+.1}% of direct ({}: ≤ 10%); marginal CPU {:.2}× HAProxy's ({}: ≤ 0.20×)",
                    case.name,
                    mode.label(),
                    100.0 * share,
                    if share >= 0.95 { "met" } else { "not met" },
                    100.0 * added_p99,
                    if added_p99 <= 0.10 { "met" } else { "not met" },
                    cpu_ratio,
                    if haproxy_marginal > 0.0 && cpu_ratio <= 0.2 {
                        "met"
                    } else {
                        "not met"
                    },
                ));
                if case.name.ends_with("one backend") {
                    // One backend's serving work: its ceiling is direct's.
                    continue;
                }
                let share = s.rps / ecmp.rps;
                let added_p99 = (s.p99 - ecmp.p99) / ecmp.p99;
                let cpu_ratio = (s.cpu_ms_per_k - ecmp.cpu_ms_per_k) / haproxy_marginal_ecmp;
                verdicts_ecmp.push(format!(
                    "- {} ({}): throughput {:.1}% of ECMP; added p99 {:+.1}% of ECMP's; marginal CPU {:.2}× HAProxy's",
                    case.name,
                    mode.label(),
                    100.0 * share,
                    100.0 * added_p99,
                    cpu_ratio,
                ));
            }
        }
    }
    println!("\nTargets (against direct to one backend, as the issue states them):\n");
    for v in verdicts {
        println!("{v}");
    }
    println!(
        "\nThe same against the three backends without an LB (client-side ECMP), which \
         spreads the serving work as every balancer here does; marginal CPU is then \
         what the balancer adds on top of that spread, HAProxy's likewise:\n"
    );
    for v in verdicts_ecmp {
        println!("{v}");
    }
    println!(
        "\nlb's own counters over the whole run, warm-up included (nonzero drops by \
         reason; SYNs to nat backends and their answers):\n"
    );
    println!("{counters}");
    println!(
        "\nLoad average before / after: {} / {}",
        load_before.trim(),
        load_after.trim()
    );
    Ok(())
}
