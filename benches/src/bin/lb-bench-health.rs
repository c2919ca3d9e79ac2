//! Health checks of 1000 backends: `lb run` against HAProxy, one after the
//! other, in network namespaces (198.18.0.0/15), printed as Markdown.
//!
//! One responder in this process serves every backend (1000 ports on a few
//! addresses, so the checker's namespace needs a handful of neighbour entries
//! rather than a thousand of the host's shared neighbour table) and records
//! when each probe arrives. For each checker in turn:
//!
//! 1. steady state: CPU of the checker process over a window (utime + stime
//!    from /proc), and the lateness of every probe against a 1 s period,
//!    measured where the probes land;
//! 2. failure: a few backends start answering 503 at a known instant; the
//!    time until the checker marks them down and takes them out of rotation
//!    (lb: its "backend down" and "table swapped" log lines; HAProxy: its
//!    "Server ... is DOWN" log, received on a unix socket and timestamped on
//!    arrival, cross-checked with `show stat` on its stats socket).
//!
//! Needs root (namespaces); `cargo build --release -p lb-cli -p lb-benches`
//! first, then `target/release/lb-bench-health`.
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use lb_testlab::{Lab, enter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The check both checkers run, as the issue specifies it.
const INTER: Duration = Duration::from_secs(1);
const FALL: u32 = 3;
const RISE: u32 = 2;
/// Ports per backend address. 250 keeps every port below the kernel's
/// ephemeral range on both sides.
const PORTS_PER_ADDR: usize = 250;
const FIRST_PORT: u16 = 8001;

#[derive(Parser)]
#[command(about = "Health checks of N backends: lb vs HAProxy (Markdown output; needs root)")]
struct Args {
    /// The lb binary. Default: `lb` next to this binary.
    #[arg(long)]
    lb: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
    #[arg(long, default_value_t = 1000)]
    backends: usize,
    /// Backends made to fail at once in the detection phase.
    #[arg(long, default_value_t = 10)]
    failing: usize,
    /// Length of the steady window, in seconds.
    #[arg(long, default_value_t = 30)]
    window: u64,
}

/// Wall-clock time as a duration since the epoch: the only clock that lb's
/// log timestamps and this process's records share.
fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The backends, what the responder saw of them, and which ones fail.
struct Backends {
    addrs: Vec<SocketAddrV4>,
    arrivals: Vec<Mutex<Vec<Duration>>>,
    failing: Vec<AtomicBool>,
}

impl Backends {
    fn new(n: usize) -> Result<Self> {
        let addrs = (0..n)
            .map(|i| {
                let host = u8::try_from(1 + i / PORTS_PER_ADDR)?;
                let port = FIRST_PORT + u16::try_from(i % PORTS_PER_ADDR)?;
                Ok(SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, host), port))
            })
            .collect::<Result<Vec<_>>>()
            .context("too many backends for 198.18.2.1-255 × 250 ports")?;
        Ok(Self {
            addrs,
            arrivals: (0..n).map(|_| Mutex::default()).collect(),
            failing: (0..n).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    fn hosts(&self) -> Vec<Ipv4Addr> {
        let mut h: Vec<_> = self.addrs.iter().map(|a| *a.ip()).collect();
        h.dedup();
        h
    }

    fn reset(&self) {
        for a in &self.arrivals {
            a.lock().expect("arrivals lock").clear();
        }
        for f in &self.failing {
            f.store(false, Ordering::Relaxed);
        }
    }

    fn arrivals(&self, i: usize) -> Vec<Duration> {
        self.arrivals[i].lock().expect("arrivals lock").clone()
    }
}

/// Raises the calling thread to nice -10. The responder and the log receiver
/// are the instruments: on a shared machine they must not be the ones that
/// starve, or the timings would measure them instead of the checker (which
/// runs at the default priority).
fn instrument_priority() -> Result<()> {
    // SAFETY: gettid and setpriority have no preconditions; a thread id is a
    // valid PRIO_PROCESS target on Linux and affects that thread only.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10)
    };
    ensure!(r == 0, "setpriority: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Starts the responder on a thread inside `ns`: one current-thread tokio
/// runtime for every listener, so its own CPU use stays small beside the
/// checker's. Returns once every port listens.
fn start_responder(ns: &str, backends: Arc<Backends>) -> Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        if let Err(e) = instrument_priority() {
            let _ = ready_tx.send(Err(e));
            return;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e).context("responder runtime"));
                return;
            }
        };
        rt.block_on(async move {
            let mut listeners = Vec::new();
            for a in &backends.addrs {
                match tokio::net::TcpListener::bind(a).await {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e).with_context(|| format!("binding {a}")));
                        return;
                    }
                }
            }
            for (i, l) in listeners.into_iter().enumerate() {
                tokio::spawn(accept_loop(l, i, backends.clone()));
            }
            let _ = ready_tx.send(Ok(()));
            std::future::pending::<()>().await;
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the responder did not start")?
}

async fn accept_loop(l: tokio::net::TcpListener, i: usize, backends: Arc<Backends>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            // Out of descriptors or memory: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        backends.arrivals[i]
            .lock()
            .expect("arrivals lock")
            .push(now());
        tokio::spawn(serve(s, i, backends.clone()));
    }
}

/// Reads the request head, answers 200 (or 503 while failing) and closes.
/// The failure flag is read after the request, so a probe that arrives after
/// the failure instant always sees it.
async fn serve(mut s: tokio::net::TcpStream, i: usize, backends: Arc<Backends>) {
    let mut buf = [0u8; 2048];
    let read_head = async {
        let mut n = 0;
        while n < buf.len() {
            let k = s.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(2), read_head).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let resp: &[u8] = if backends.failing[i].load(Ordering::Relaxed) {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfail\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
    };
    let _ = s.write_all(resp).await;
    let _ = s.shutdown().await;
}

/// The responder holds one listening socket per backend plus the probes in
/// flight, beyond the usual soft limit of 1024 descriptors.
fn raise_fd_limit(backends: usize) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    ensure!(r == 0, "getrlimit: {}", std::io::Error::last_os_error());
    let want = (backends as libc::rlim_t + 4096).max(lim.rlim_cur);
    lim.rlim_cur = want;
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: a valid pointer to an rlimit.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    ensure!(
        r == 0,
        "raising the open-files limit to {want}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// (utime, stime) of `pid`, in seconds; fails if it is gone or a zombie.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.first() != Some(&"Z"), "process {pid} has exited");
    let ticks = |k: usize| -> Result<u64> {
        f.get(k)
            .context("short /proc/PID/stat")?
            .parse()
            .context("utime/stime")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? as f64 / hz, ticks(12)? as f64 / hz))
}

/// The pid `Lab::spawn` returns is the checker itself only because
/// `ip netns exec` and `sh -c exec` both exec; this makes sure, so that the
/// CPU measured is the checker's and not a wrapper's.
fn expect_comm(pid: u32, bin: &Path) -> Result<()> {
    let want: String = bin
        .file_name()
        .context("binary path without a file name")?
        .to_string_lossy()
        .chars()
        .take(15)
        .collect();
    wait_for("the checker to start", Duration::from_secs(5), || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .with_context(|| format!("process {pid} is gone"))?;
        Ok(comm.trim() == want)
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Lb,
    Haproxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lb => "lb",
            Kind::Haproxy => "HAProxy",
        }
    }
}

/// What one checker did.
struct Report {
    user_pct: f64,
    sys_pct: f64,
    /// Longest time in the window with no probe arriving at all.
    longest_silence_ms: f64,
    /// Packets through the checker's interface per probe in the window.
    packets_per_probe: f64,
    probes: usize,
    lateness_ms: Vec<f64>,
    /// Failure instant → marked down, per detected backend, in seconds.
    down_s: Vec<f64>,
    /// Failure instant → out of the forwarding table, in seconds.
    removed_s: Vec<f64>,
    /// The `fall`-th failed probe's arrival → out of the table, in ms.
    after_fall_ms: Vec<f64>,
    /// Marked down → out of the table, in ms: the controller and datapath's
    /// share of `after_fall_ms`.
    down_to_removed_ms: Vec<f64>,
    failing: usize,
    false_downs: usize,
    cross_check: String,
}

fn lb_config(dir: &Path, b: &Backends) -> String {
    let mut c = format!(
        r#"[daemon]
xdp_mode = "generic"
admin_socket = "{dir}/admin.sock"

[[service]]
vip = "198.18.0.100:80"
interface = "eth0"
forwarding = "nat"

[service.check]
type = "http"
path = "/"
delay_loop = "{inter}s"
connect_timeout = "{inter}s"
fall = {FALL}
rise = {RISE}
"#,
        dir = dir.display(),
        inter = INTER.as_secs(),
    );
    for a in &b.addrs {
        let _ = write!(c, "\n[[service.backend]]\naddress = \"{a}\"\n");
    }
    c
}

fn haproxy_config(dir: &Path, b: &Backends) -> String {
    let mut c = format!(
        r#"global
    log {dir}/log.sock local0
    stats socket {dir}/stats.sock mode 600 level admin

defaults
    mode tcp
    log global
    timeout connect {inter}s
    timeout client 30s
    timeout server 30s
    timeout check {inter}s

frontend fe
    bind 198.18.0.4:80
    default_backend be

backend be
    option httpchk GET /
"#,
        dir = dir.display(),
        inter = INTER.as_secs(),
    );
    for (i, a) in b.addrs.iter().enumerate() {
        let _ = writeln!(
            c,
            "    server b{i} {a} check inter {}s fall {FALL} rise {RISE}",
            INTER.as_secs()
        );
    }
    c
}

/// HAProxy's log lines, each with the time it arrived here.
type Received = Arc<Mutex<Vec<(Duration, String)>>>;

/// Receives syslog datagrams on `path` until `stop`.
fn log_receiver(path: &Path, stop: Arc<AtomicBool>) -> Result<Received> {
    let sock = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .context("log socket timeout")?;
    let got: Received = Arc::default();
    let out = got.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = ready_tx.send(instrument_priority());
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                let at = now();
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                out.lock().expect("log lock").push((at, line));
            }
        }
    });
    ready_rx
        .recv()
        .context("the log receiver did not start")??;
    Ok(got)
}

/// `show stat` on HAProxy's stats socket: (servers UP, servers DOWN).
fn haproxy_states(sock: &Path) -> Result<(usize, usize)> {
    let mut s =
        UnixStream::connect(sock).with_context(|| format!("connecting {}", sock.display()))?;
    s.write_all(b"show stat\n").context("show stat")?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("reading show stat")?;
    let status = |l: &str| l.split(',').nth(17).map(str::to_owned);
    let servers: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("be,b"))
        .filter_map(status)
        .collect();
    Ok((
        servers.iter().filter(|s| s.starts_with("UP")).count(),
        servers.iter().filter(|s| s.starts_with("DOWN")).count(),
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// tracing's default timestamp, `2026-11-25T07:20:01.123456Z`.
fn parse_utc(ts: &str) -> Option<Duration> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let days = days_from_civil(d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let secs = days * 86_400 + t.next()?? * 3600 + t.next()?? * 60 + t.next()??;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some(Duration::from_secs(u64::try_from(secs).ok()?) + Duration::from_secs_f64(frac))
}

/// Drops ANSI escape sequences, in case the log was written in colour.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A backend's fall in lb's log: when it was marked down, and when the first
/// table swap that excludes it was logged.
#[derive(Clone, Copy, Default)]
struct LbFall {
    down: Duration,
    swapped: Option<Duration>,
}

/// Each backend's first "backend down" line and the first "table swapped"
/// line after it.
fn lb_transitions(log: &str) -> HashMap<SocketAddrV4, LbFall> {
    let mut falls: HashMap<SocketAddrV4, LbFall> = HashMap::new();
    for line in log.lines().map(strip_ansi) {
        let Some(at) = line.split_whitespace().next().and_then(parse_utc) else {
            continue;
        };
        if line.contains("table swapped") {
            for f in falls.values_mut() {
                f.swapped.get_or_insert(at);
            }
        } else if line.contains("backend down")
            && let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("backend="))
                .and_then(|a| a.parse().ok())
        {
            // The health task logs the transition just before it hands it to
            // the controller, so the next swap is the first that can include
            // it.
            falls.entry(addr).or_insert(LbFall {
                down: at,
                ..LbFall::default()
            });
        }
    }
    falls
}

fn lb_events(log: &Path) -> Result<HashMap<SocketAddrV4, LbFall>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(lb_transitions(&text))
}

fn haproxy_downs(got: &Received) -> HashMap<usize, Duration> {
    let mut down = HashMap::new();
    for (at, line) in got.lock().expect("log lock").iter() {
        let Some(rest) = line.split("Server be/b").nth(1) else {
            continue;
        };
        let Some((idx, tail)) = rest.split_once(' ') else {
            continue;
        };
        if tail.starts_with("is DOWN")
            && let Ok(i) = idx.parse()
        {
            down.entry(i).or_insert(*at);
        }
    }
    down
}

/// Set by SIGINT/SIGTERM. An interrupted run must still return through
/// `Lab`'s `Drop`, or it would leave namespaces behind and a checker probing
/// a thousand backends on a shared machine.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let old = unsafe { libc::signal(sig, on_interrupt as *const () as libc::sighandler_t) };
        ensure!(
            old != libc::SIG_ERR,
            "installing a handler for signal {sig}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Sleeps `d`, in steps short enough to notice an interrupt.
fn pause(d: Duration) -> Result<()> {
    wait_for("nothing", d + Duration::from_secs(1), {
        let end = Instant::now() + d;
        move || Ok(Instant::now() >= end)
    })
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn measure(
    kind: Kind,
    lab: &mut Lab,
    ns: &str,
    b: &Backends,
    bin: &Path,
    args: &Args,
) -> Result<Report> {
    b.reset();
    let dir = lab.dir().join(kind.name());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("out.log");
    let stop_logs = Arc::new(AtomicBool::new(false));
    let (pid, received) = match kind {
        Kind::Lb => {
            let cfg = dir.join("lb.toml");
            std::fs::write(&cfg, lb_config(&dir, b)).context("writing lb.toml")?;
            // NO_COLOR: the log is parsed for its timestamps.
            let cmd = format!(
                "env NO_COLOR=1 RUST_LOG=info {} run --config {}",
                bin.display(),
                cfg.display()
            );
            (lab.spawn_logged(ns, &cmd, Some(&log)), None)
        }
        Kind::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(&dir, b)).context("writing haproxy.cfg")?;
            let received = log_receiver(&dir.join("log.sock"), stop_logs.clone())?;
            let cmd = format!("{} -db -f {}", bin.display(), cfg.display());
            (lab.spawn_logged(ns, &cmd, Some(&log)), Some(received))
        }
    };
    let run = Run {
        kind,
        pid,
        ns,
        dir: &dir,
        log: &log,
        received: received.as_ref(),
    };
    let result = expect_comm(pid, bin).and_then(|()| run_phases(&run, b, args));
    stop_logs.store(true, Ordering::Relaxed);
    // SIGTERM first so lb detaches its XDP program and exits cleanly.
    lab.signal(pid, libc::SIGTERM);
    let _ = wait_for("the checker to exit", Duration::from_secs(5), || {
        Ok(cpu_seconds(pid).is_err())
    });
    lab.kill(pid);
    result.with_context(|| {
        format!(
            "{} run; its output:\n{}",
            kind.name(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
}

/// One checker process under measurement.
struct Run<'a> {
    kind: Kind,
    pid: u32,
    /// Its namespace.
    ns: &'a str,
    dir: &'a Path,
    /// Its stdout and stderr.
    log: &'a Path,
    /// HAProxy's log lines; lb's are in `log`.
    received: Option<&'a Received>,
}

/// rx + tx packets of eth0 in `ns`. Read through `ip netns exec`, which
/// mounts that namespace's /sys.
fn packets(ns: &str) -> Result<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .args(["rx_packets", "tx_packets"].map(|f| format!("/sys/class/net/eth0/statistics/{f}")))
        .output()
        .with_context(|| format!("reading eth0's counters in {ns}"))?;
    ensure!(out.status.success(), "reading eth0's counters in {ns}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse::<u64>().context("packet counter"))
        .sum()
}

fn run_phases(run: &Run, b: &Backends, args: &Args) -> Result<Report> {
    let Run {
        kind,
        pid,
        ns,
        dir,
        log,
        received,
    } = *run;
    let n = b.addrs.len();
    // Three probes per backend: every first probe (jittered over one
    // interval) is past and the schedule is in its steady rhythm.
    wait_for("3 probes of every backend", Duration::from_secs(30), || {
        cpu_seconds(pid)?;
        Ok((0..n).all(|i| b.arrivals[i].lock().expect("arrivals lock").len() >= 3))
    })?;

    let (w0, cpu0, t0, pkts0) = (now(), cpu_seconds(pid)?, Instant::now(), packets(ns)?);
    pause(Duration::from_secs(args.window))?;
    let (w1, cpu1, elapsed, pkts1) = (now(), cpu_seconds(pid)?, t0.elapsed(), packets(ns)?);
    let share = |a: f64, b: f64| (b - a) / elapsed.as_secs_f64() * 100.0;
    let (user_pct, sys_pct) = (share(cpu0.0, cpu1.0), share(cpu0.1, cpu1.1));
    let mut lateness_ms = Vec::new();
    let mut all = Vec::new();
    for i in 0..n {
        let seen: Vec<Duration> = b
            .arrivals(i)
            .into_iter()
            .filter(|t| *t >= w0 && *t <= w1)
            .collect();
        lateness_ms.extend(
            seen.windows(2)
                .map(|w| (w[1].as_secs_f64() - w[0].as_secs_f64() - INTER.as_secs_f64()) * 1e3),
        );
        all.extend(seen);
    }
    let probes = all.len();
    // With a thousand probes a second, a long gap between any two arrivals
    // means everything stopped (the checker or the responder starved on a
    // shared machine): it tells a disturbed run from a slow checker.
    all.sort();
    let longest_silence_ms = all
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);

    let failing: Vec<usize> = (0..args.failing).map(|k| k * n / args.failing).collect();
    let t_fail = now();
    for &i in &failing {
        b.failing[i].store(true, Ordering::Relaxed);
    }
    let bound = INTER * (FALL + 4);
    let detected = || -> Result<usize> {
        Ok(match received {
            None => {
                let ev = lb_events(log)?;
                failing
                    .iter()
                    .filter(|&&i| ev.get(&b.addrs[i]).is_some_and(|f| f.swapped.is_some()))
                    .count()
            }
            Some(r) => {
                let d = haproxy_downs(r);
                failing.iter().filter(|i| d.contains_key(i)).count()
            }
        })
    };
    // Not finding all of them in time is a result, not an error: it shows
    // as fewer detections in the table.
    let _ = wait_for("the failing backends to be marked down", bound, || {
        Ok(detected()? == failing.len())
    });

    let (downs, removals): (HashMap<usize, Duration>, HashMap<usize, Duration>) = match received {
        None => {
            let ev = lb_events(log)?;
            let idx: HashMap<SocketAddrV4, usize> =
                b.addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
            let mut d = HashMap::new();
            let mut r = HashMap::new();
            for (a, f) in ev {
                let i = idx[&a];
                d.insert(i, f.down);
                if let Some(s) = f.swapped {
                    r.insert(i, s);
                }
            }
            (d, r)
        }
        Some(r) => {
            let d = haproxy_downs(r);
            (d.clone(), d)
        }
    };
    let false_downs = downs.keys().filter(|i| !failing.contains(i)).count();
    let secs = |t: Duration| t.as_secs_f64() - t_fail.as_secs_f64();
    let mut report = Report {
        user_pct,
        sys_pct,
        longest_silence_ms,
        packets_per_probe: (pkts1 - pkts0) as f64 / probes as f64,
        probes,
        lateness_ms,
        down_s: Vec::new(),
        removed_s: Vec::new(),
        after_fall_ms: Vec::new(),
        down_to_removed_ms: Vec::new(),
        failing: failing.len(),
        false_downs,
        cross_check: String::new(),
    };
    for &i in &failing {
        let down = downs.get(&i).filter(|d| **d >= t_fail);
        if let Some(d) = down {
            report.down_s.push(secs(*d));
        }
        let Some(r) = removals.get(&i).filter(|r| **r >= t_fail) else {
            continue;
        };
        report.removed_s.push(secs(*r));
        if let Some(d) = down {
            report
                .down_to_removed_ms
                .push((r.as_secs_f64() - d.as_secs_f64()) * 1e3);
        }
        let fall_th = b
            .arrivals(i)
            .into_iter()
            .filter(|t| *t >= t_fail)
            .nth(FALL as usize - 1);
        if let Some(f) = fall_th {
            report
                .after_fall_ms
                .push((r.as_secs_f64() - f.as_secs_f64()) * 1e3);
        }
    }
    report.cross_check = match kind {
        Kind::Haproxy => {
            let (up, down) = haproxy_states(&dir.join("stats.sock"))?;
            format!("`show stat`: {up} UP, {down} DOWN")
        }
        Kind::Lb => {
            let text = std::fs::read_to_string(log).context("reading lb's log")?;
            let last = text
                .lines()
                .rev()
                .map(strip_ansi)
                .find(|l| l.contains("table swapped"))
                .and_then(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("backends=").map(str::to_owned))
                })
                .unwrap_or_else(|| "?".into());
            format!("last swap: {last} backends")
        }
    };
    Ok(report)
}

/// Nearest-rank percentile of sorted data.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn med_max(v: &[f64], unit: &str, prec: usize) -> String {
    let s = sorted(v);
    if s.is_empty() {
        return "none".into();
    }
    format!("{:.prec$} / {:.prec$} {unit}", pct(&s, 0.5), s[s.len() - 1])
}

/// A table row: its label and how to print one checker's figure.
type Row = (String, Box<dyn Fn(&Report) -> String>);

fn table(args: &Args, reports: &[(Kind, Report)]) -> String {
    let n = reports.first().map_or(0, |(_, r)| r.failing);
    let rows: Vec<Row> = vec![
        (
            format!(
                "checker CPU, % of one core ({} s steady window)",
                args.window
            ),
            Box::new(|r| format!("{:.1}%", r.user_pct + r.sys_pct)),
        ),
        (
            "of which user / system".into(),
            Box::new(|r| format!("{:.1}% / {:.1}%", r.user_pct, r.sys_pct)),
        ),
        (
            "packets per probe (checker's interface, rx + tx)".into(),
            Box::new(|r| format!("{:.1}", r.packets_per_probe)),
        ),
        (
            format!(
                "probes received in the window (ideal {})",
                args.backends as u64 * args.window
            ),
            Box::new(|r| r.probes.to_string()),
        ),
        (
            "probe lateness vs 1 s, p50 / p99 / max".into(),
            Box::new(|r| {
                let s = sorted(&r.lateness_ms);
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    pct(&s, 0.5),
                    pct(&s, 0.99),
                    s.last().copied().unwrap_or(f64::NAN)
                )
            }),
        ),
        (
            "longest gap with no probe arriving at all".into(),
            Box::new(|r| format!("{:.0} ms", r.longest_silence_ms)),
        ),
        (
            format!("failure → marked down, median / max (ideal ≤ {FALL} s)"),
            Box::new(|r| med_max(&r.down_s, "s", 2)),
        ),
        (
            "failure → out of rotation, median / max".into(),
            Box::new(|r| med_max(&r.removed_s, "s", 2)),
        ),
        (
            format!("`fall`-th ({FALL}) failed probe → out of rotation, median / max"),
            Box::new(|r| med_max(&r.after_fall_ms, "ms", 1)),
        ),
        (
            "of which marked down → out of rotation, median / max".into(),
            Box::new(|r| med_max(&r.down_to_removed_ms, "ms", 1)),
        ),
        (
            format!("failing backends taken out (of {n})"),
            Box::new(|r| r.removed_s.len().to_string()),
        ),
        (
            "healthy backends marked down (false downs)".into(),
            Box::new(|r| r.false_downs.to_string()),
        ),
        (
            "state at the end".into(),
            Box::new(|r| r.cross_check.clone()),
        ),
    ];
    let mut out = String::from("| |");
    for (k, _) in reports {
        let _ = write!(out, " {} |", k.name());
    }
    out.push_str("\n|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    for (label, f) in &rows {
        let _ = write!(out, "\n| {label} |");
        for (_, r) in reports {
            let _ = write!(out, " {} |", f(r));
        }
    }
    out.push('\n');
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench-health creates network namespaces and must run as root");
    }
    ensure!(
        args.failing >= 1 && args.failing <= args.backends,
        "--failing must be between 1 and --backends"
    );
    let lb = match &args.lb {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("lb"),
    };
    for bin in [&lb, &args.haproxy] {
        ensure!(
            bin.is_file(),
            "{} not found (build lb with `cargo build --release -p lb-cli`; \
             HAProxy comes from the distribution)",
            bin.display()
        );
    }
    let haproxy_version = std::process::Command::new(&args.haproxy)
        .arg("-v")
        .output()
        .context("running haproxy -v")?;
    let haproxy_version = String::from_utf8_lossy(&haproxy_version.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();

    catch_interrupts()?;
    raise_fd_limit(args.backends)?;
    let backends = Arc::new(Backends::new(args.backends)?);
    let mut lab = Lab::new("hcbench");
    let be_ns = lab.host("backends", "198.18.0.3/15");
    for h in backends.hosts() {
        lab.ip(&[
            "-n",
            &be_ns,
            "addr",
            "add",
            &format!("{h}/32"),
            "dev",
            "eth0",
        ]);
    }
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    let haproxy_ns = lab.host("haproxy", "198.18.0.4/15");
    start_responder(&be_ns, backends.clone())?;

    let load_before = loadavg();
    let mut reports = Vec::new();
    for (kind, ns, bin) in [
        (Kind::Lb, &lb_ns, &lb),
        (Kind::Haproxy, &haproxy_ns, &args.haproxy),
    ] {
        eprintln!("measuring {} ...", kind.name());
        let r = measure(kind, &mut lab, ns, &backends, bin, &args)?;
        reports.push((kind, r));
        // Let the last run's connections close before the next checker starts.
        pause(Duration::from_secs(2))?;
    }

    println!(
        "{} backends, HTTP check `GET /` every {} s, fall {FALL}, rise {RISE}; \
         {} failing at once. {haproxy_version}. Load average before / after: {load_before} / {}.\n",
        args.backends,
        INTER.as_secs(),
        args.failing,
        loadavg()
    );
    print!("{}", table(&args, &reports));
    println!(
        "\nReproduce: `cargo build --release -p lb-cli -p lb-benches && \
         sudo target/release/lb-bench-health --backends {} --failing {} --window {}`",
        args.backends, args.failing, args.window
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        let t = parse_utc("2026-11-25T07:20:01.250000Z").expect("parses");
        assert_eq!(t.as_secs(), 1_795_591_201);
        assert_eq!(t.subsec_millis(), 250);
        assert!(parse_utc("07:20:01").is_none());
    }

    #[test]
    fn the_first_swap_after_the_down_line_counts() {
        let log = "\
2026-11-25T07:20:00.000000Z  INFO lb_core::datapath::balancer: table swapped vip=198.18.0.100:80 generation=1 backends=3
2026-11-25T07:20:01.000000Z  WARN lb_core::health::runner: backend down service=x backend=198.18.2.1:8001 reason=r
2026-11-25T07:20:01.060000Z  INFO lb_core::datapath::balancer: table swapped vip=198.18.0.100:80 generation=2 backends=2
";
        let ev = lb_transitions(log);
        let f = ev[&"198.18.2.1:8001".parse().expect("addr")];
        assert_eq!(f.down.subsec_millis(), 0);
        assert_eq!(f.swapped.expect("swapped").subsec_millis(), 60);
    }
}
