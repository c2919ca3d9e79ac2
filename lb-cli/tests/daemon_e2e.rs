//! The `lb run` daemon end to end, in network namespaces (198.18.0.0/15):
//! a backend stopped under client load leaves rotation in time and comes
//! back; a reload under load resets no connection; a bad reload changes
//! nothing; lc counts connections and forgets idle ones.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_testlab::{Lab, echo_backend, enter, in_ns};

const LB_BIN: &str = env!("CARGO_BIN_EXE_lb");

/// When a client request started, and the body it got (or why not).
type Request = (Instant, Result<String, String>);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 1),
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 1, 3),
];

struct Setup {
    lab: Lab,
    client: String,
    backends: Vec<String>,
    lb_pid: u32,
    config: PathBuf,
    log: PathBuf,
}

/// Client, LB (holding the VIP itself: these tests have no VRRP) and three
/// backend hosts; `lb run` started with `config` once `backends_up` ran.
fn setup(
    test: &str,
    config: impl Fn(&Path) -> String,
    backends_up: impl FnOnce(&mut Lab, &[String]),
) -> Setup {
    setup_as(test, config, backends_up, |_, lb| lb.to_string())
}

/// [`setup`], with the daemon's command line (`lb run --config ...`) passed
/// through `launch` with the lab's directory, e.g. to drop privileges.
fn setup_as(
    test: &str,
    config: impl Fn(&Path) -> String,
    backends_up: impl FnOnce(&mut Lab, &[String]),
    launch: impl Fn(&Path, &str) -> String,
) -> Setup {
    let mut lab = Lab::new(test);
    let client = lab.host("client", "198.18.0.1/15");
    let lb = lab.host("lb", "198.18.0.2/15");
    lab.ip(&["-n", &lb, "addr", "add", "198.18.0.100/32", "dev", "eth0"]);
    let backends: Vec<String> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, a)| lab.host(&format!("be{}", i + 1), &format!("{a}/15")))
        .collect();
    backends_up(&mut lab, &backends);
    let dir = lab.dir();
    let cfg_path = dir.join("lb.toml");
    std::fs::write(&cfg_path, config(&dir)).expect("config");
    let log = dir.join("lb.log");
    let lb_pid = lab.spawn_logged(
        &lb,
        &launch(
            &dir,
            &format!("{LB_BIN} run --config {}", cfg_path.display()),
        ),
        Some(&log),
    );
    Setup {
        lab,
        client,
        backends,
        lb_pid,
        config: cfg_path,
        log,
    }
}

fn log_of(s: &Setup) -> String {
    std::fs::read_to_string(&s.log).unwrap_or_default()
}

/// One HTTP/1.0 request through the VIP from the client namespace (the
/// calling thread must be in it); returns the body.
fn get() -> Result<String, String> {
    let mut c = TcpStream::connect_timeout(&VIP.into(), Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    resp.split("\r\n\r\n")
        .nth(1)
        .map(|b| b.trim().to_string())
        .ok_or_else(|| format!("bad response {resp:?}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon and a nat service for the VIP, without backends.
fn service_config(dir: &Path) -> String {
    format!(
        r#"
[daemon]
xdp_mode = "generic"
admin_socket = "{}/admin.sock"

[[service]]
vip = "198.18.0.100:80"
interface = "eth0"
forwarding = "nat"
"#,
        dir.display()
    )
}

fn http_config(dir: &Path) -> String {
    let mut c = service_config(dir);
    c.push_str(
        r#"
[service.check]
type = "http"
path = "/"
delay_loop = "1s"
connect_timeout = "1s"
fall = 2
rise = 2
"#,
    );
    for b in BACKENDS {
        c.push_str(&format!("\n[[service.backend]]\naddress = \"{b}:8080\"\n"));
    }
    c
}

#[test]
fn a_stopped_backend_leaves_rotation_in_time_and_comes_back() {
    let pids = Arc::new(Mutex::new(Vec::new()));
    let p = pids.clone();
    let mut s = setup("hc", http_config, move |lab, backends| {
        for (i, ns) in backends.iter().enumerate() {
            let pid = lab.http_backend(ns, &BACKENDS[i].to_string(), 8080, &format!("be{}", i + 1));
            p.lock().unwrap().push(pid);
        }
    });
    let client = s.client.clone();
    // Bounded load: at most 3000 requests or 40 s, recorded with their
    // start time relative to `t0` set by the main thread.
    let stop = Arc::new(AtomicBool::new(false));
    let records: Arc<Mutex<Vec<Request>>> = Arc::default();
    wait_until("the VIP to answer", Duration::from_secs(15), || {
        in_ns(&client, get).is_ok()
    });
    let load = {
        let (stop, records, client) = (stop.clone(), records.clone(), client.clone());
        thread::spawn(move || {
            enter(&client);
            let started = Instant::now();
            for _ in 0..3_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                let at = Instant::now();
                let r = get();
                records.lock().unwrap().push((at, r));
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    thread::sleep(Duration::from_secs(2));
    let be2 = s.backends[1].clone();
    let be2_pid = pids.lock().unwrap()[1];
    s.lab.kill(be2_pid);
    let t0 = Instant::now();
    // delay_loop × fall + one probe timeout, plus the 50 ms coalescing
    // window and scheduling slack.
    let bound = Duration::from_secs(1) * 2 + Duration::from_secs(1) + Duration::from_millis(300);
    thread::sleep(bound + Duration::from_secs(3));
    let t_restart = Instant::now();
    s.lab.http_backend(&be2, "198.18.1.2", 8080, "be2");
    // From the moment it listens again: `rise` = 2 probes 1 s apart, the
    // first within a delay_loop.
    let t_listening = Instant::now();
    thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");

    let recs = records.lock().unwrap();
    let after_removal: Vec<_> = recs
        .iter()
        .filter(|(at, _)| *at >= t0 + bound && *at < t_restart)
        .collect();
    assert!(
        after_removal.len() > 50,
        "too little load: {}",
        after_removal.len()
    );
    let mut timeouts = 0;
    for (at, r) in &after_removal {
        match r {
            Ok(body) => assert_ne!(
                body,
                "be2",
                "new connection to be2 {:?} after it died",
                *at - t0
            ),
            // A refusal is the dead backend's RST: it must not happen once
            // the backend is out of the table.
            Err(e) if e.contains("refused") || e.contains("reset") => panic!(
                "request {:?} after removal was refused: {e}\n{}",
                *at - t0,
                log_of(&s)
            ),
            // Timeouts are load on this shared 2-core machine; bounded below.
            Err(_) => timeouts += 1,
        }
    }
    assert!(
        timeouts * 20 < after_removal.len(),
        "{timeouts} of {} requests timed out",
        after_removal.len()
    );
    // rise = 2 probes 1 s apart bring it back.
    let back = recs
        .iter()
        .filter(|(at, r)| *at >= t_restart && r.as_deref() == Ok("be2"))
        .map(|(at, _)| at.saturating_duration_since(t_listening))
        .min();
    assert!(
        back.is_some_and(|d| d <= Duration::from_secs(4)),
        "be2 not back in rotation within 4 s of listening again: {back:?}"
    );
    let errors_before = recs
        .iter()
        .filter(|(at, r)| *at < t0 + bound && r.is_err())
        .count();
    println!("client-visible errors while be2 was being detected: {errors_before}");
    let log = log_of(&s);
    assert!(
        log.contains("backend down"),
        "no down transition logged:\n{log}"
    );
    assert!(
        log.contains("backend up"),
        "no up transition logged:\n{log}"
    );
    s.lab.kill(s.lb_pid);
}

fn echo_config(dir: &Path, backends: &[(Ipv4Addr, u32)]) -> String {
    let mut c = service_config(dir);
    for (b, w) in backends {
        c.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{b}:8033\"\nweight = {w}\n"
        ));
    }
    c
}

#[test]
fn reload_under_load_resets_nothing_and_a_bad_reload_changes_nothing() {
    let stop_backends = Arc::new(AtomicBool::new(false));
    let sb = stop_backends.clone();
    let mut s = setup(
        "reload",
        |dir| echo_config(dir, &[(BACKENDS[0], 1), (BACKENDS[1], 1)]),
        move |_, backends| {
            for (i, ns) in backends.iter().enumerate() {
                let name: &'static str = ["be1", "be2", "be3"][i];
                echo_backend(ns, SocketAddrV4::new(BACKENDS[i], 8033), name, sb.clone());
            }
        },
    );
    let client = s.client.clone();
    wait_until("the VIP to answer", Duration::from_secs(15), || {
        in_ns(&client, || {
            TcpStream::connect_timeout(&VIP.into(), Duration::from_millis(500)).is_ok()
        })
    });
    const CONNS: usize = 30;
    let done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (done, client) = (done.clone(), client.clone());
        thread::spawn(move || {
            enter(&client);
            let mut conns = Vec::new();
            for _ in 0..CONNS {
                let c = TcpStream::connect_timeout(&VIP.into(), Duration::from_secs(2))
                    .expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut name = String::new();
                r.read_line(&mut name).expect("greeting");
                conns.push((c, r));
            }
            let mut failures = Vec::new();
            let mut rounds = 0u32;
            // Bounded: 1500 rounds at most, ends when told.
            while !done.load(Ordering::Relaxed) && rounds < 1_500 {
                for (i, (c, r)) in conns.iter_mut().enumerate() {
                    let msg = format!("{i} {rounds}\n");
                    let mut back = String::new();
                    let res = c
                        .write_all(msg.as_bytes())
                        .and_then(|_| r.read_line(&mut back));
                    if res.is_err() || back != msg {
                        failures.push(format!("conn {i} round {rounds}: {res:?} {back:?}"));
                    }
                }
                rounds += 1;
                thread::sleep(Duration::from_millis(20));
            }
            (rounds, failures)
        })
    };
    thread::sleep(Duration::from_secs(1));
    // A good reload: be3 joins, be1 is reweighted.
    std::fs::write(
        &s.config,
        echo_config(
            &s.lab.dir(),
            &[(BACKENDS[0], 3), (BACKENDS[1], 1), (BACKENDS[2], 1)],
        ),
    )
    .unwrap();
    s.lab.signal(s.lb_pid, libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(10), || {
        log_of(&s).contains("config reloaded")
    });
    thread::sleep(Duration::from_secs(1));
    // A bad reload: rejected, the running config keeps serving.
    std::fs::write(
        &s.config,
        "[[service]]\nvip = \"198.18.0.100:80\"\nbogus = 1\n",
    )
    .unwrap();
    s.lab.signal(s.lb_pid, libc::SIGHUP);
    wait_until("the rejection", Duration::from_secs(10), || {
        log_of(&s).contains("reload rejected")
    });
    thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let (rounds, failures) = traffic.join().expect("traffic thread");
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(rounds > 50, "only {rounds} rounds");
    // New connections now spread over all three, be1 with the most.
    let seen = in_ns(&client, || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..60 {
            let c = TcpStream::connect_timeout(&VIP.into(), Duration::from_secs(2))
                .expect("connect after reload");
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut name = String::new();
            BufReader::new(c).read_line(&mut name).expect("greeting");
            *seen.entry(name.trim().to_string()).or_default() += 1;
        }
        seen
    });
    assert!(
        seen.get("be3").copied().unwrap_or(0) > 0,
        "be3 never used after reload: {seen:?}"
    );
    assert!(
        seen.get("be1") > seen.get("be2"),
        "weight 3 vs 1 not reflected: {seen:?}"
    );
    let log = log_of(&s);
    assert!(
        log.contains("service[0].bogus") || log.contains("bogus"),
        "rejection does not name the bad key:\n{log}"
    );
    stop_backends.store(true, Ordering::Relaxed);
    s.lab.kill(s.lb_pid);
}

/// Without privileges `lb run` fails at once with a message that says what
/// it needs; it does not half-start.
#[test]
fn run_without_privileges_fails_clearly() {
    lb_testlab::require_root();
    let dir = std::env::temp_dir().join(format!("lbt-noprivs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        "[daemon]\nadmin_socket = \"/tmp/lbt-noprivs.sock\"\n\n[[service]]\nvip = \"198.18.0.100:80\"\ninterface = \"lo\"\nforwarding = \"nat\"\n\n[[service.backend]]\naddress = \"198.18.1.1:8080\"\n",
    )
    .unwrap();
    // The build tree may sit under a directory nobody cannot enter (CI
    // clones into /root): run a copy from the scratch directory.
    let bin = dir.join("lb");
    std::fs::copy(LB_BIN, &bin).unwrap();
    for p in [&dir, &bin] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("loading the eBPF object")
            && err.contains("CAP_BPF")
            && err.contains("Operation not permitted"),
        "unclear error: {err}"
    );
}

/// The capabilities `configs/lb.service` grants instead of root, as the
/// `lb` user (here nobody) with them ambient, as systemd runs it.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/lb.service"
    ))
    .expect("configs/lb.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

#[test]
fn the_units_capabilities_are_enough_without_root() {
    lb_testlab::require_root();
    let caps = unit_capabilities();
    assert!(caps.contains(&"bpf".to_string()), "{caps:?}");
    let plus = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut s = setup_as(
        "caps",
        |dir| {
            let mut c = http_config(dir).replace("admin.sock", "run/admin.sock");
            // VRRP: raw IP protocol 112 (CAP_NET_RAW), the address by
            // netlink (CAP_NET_ADMIN).
            c.push_str(
                "\n[[vrrp_instance]]\nname = \"VI_CAPS\"\ninterface = \"eth0\"\nvirtual_router_id = 52\npriority = 150\nadvert_int = \"1s\"\nvirtual_ipaddress = [\"198.18.0.101/32\"]\n",
            );
            c
        },
        |lab, backends| {
            for (i, ns) in backends.iter().enumerate() {
                lab.http_backend(ns, &BACKENDS[i].to_string(), 8080, &format!("be{}", i + 1));
            }
        },
        |dir, cmd| {
            // The build tree may sit where nobody cannot enter (CI clones
            // into /root): run a copy from the lab's directory, whose `run/`
            // the daemon's user owns, as systemd's RuntimeDirectory would be.
            use std::os::unix::fs::PermissionsExt;
            let bin = dir.join("lb");
            std::fs::copy(LB_BIN, &bin).expect("copy lb");
            for p in [dir, bin.as_path()] {
                std::fs::set_permissions(p, PermissionsExt::from_mode(0o755)).expect("chmod");
            }
            std::fs::set_permissions(dir.join("lb.toml"), PermissionsExt::from_mode(0o644))
                .expect("chmod");
            let run = dir.join("run");
            std::fs::create_dir_all(&run).expect("run dir");
            std::os::unix::fs::chown(&run, Some(65534), Some(65534)).expect("chown");
            format!(
                "setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
                 --inh-caps=-all,{plus} --ambient-caps=-all,{plus} --bounding-set=-all,{plus} {}",
                cmd.replacen(LB_BIN, &bin.display().to_string(), 1)
            )
        },
    );
    let lb_ns = s.lab.ns("lb");
    let client = s.client.clone();
    wait_until("the VIP to answer", Duration::from_secs(15), || {
        in_ns(&client, get).is_ok()
    });
    let bodies: Vec<String> = in_ns(&client, || (0..30).filter_map(|_| get().ok()).collect());
    assert_eq!(
        bodies.len(),
        30,
        "every request answered: {bodies:?}\n{}",
        log_of(&s)
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.lb_pid)).unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "the daemon runs as nobody: {status}"
    );
    wait_until(
        "VRRP master with its address",
        Duration::from_secs(10),
        || {
            let out = s.lab.sh(&lb_ns, "ip -4 -o addr show dev eth0");
            String::from_utf8_lossy(&out.stdout).contains("198.18.0.101/32")
        },
    );
    let socket = s.lab.dir().join("run/admin.sock");
    let out = std::process::Command::new(LB_BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["status"])
        .output()
        .expect("lb status");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains("MASTER"),
        "lb status: {shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.lab.signal(s.lb_pid, libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(10), || {
        log_of(&s).contains("config reloaded")
    });
    s.lab.signal(s.lb_pid, libc::SIGTERM);
    assert!(
        s.lab.wait_exit(s.lb_pid, Duration::from_secs(10)),
        "SIGTERM ends the daemon"
    );
    let log = log_of(&s);
    assert!(!log.contains("ERROR"), "{log}");
}

/// Kills be2 under client load (a request every 10 ms) and returns the
/// connections refused after the kill (what the dead backend causes) and
/// the time of the last one.
fn failure_under_load(
    test: &str,
    delay_loop: &str,
    fall: u32,
    observe: &str,
) -> (usize, Duration, String) {
    let pids = Arc::new(Mutex::new(Vec::new()));
    let p = pids.clone();
    let config = |dir: &Path| {
        http_config(dir)
            .replace(
                "delay_loop = \"1s\"",
                &format!("delay_loop = \"{delay_loop}\""),
            )
            .replace("fall = 2", &format!("fall = {fall}"))
            .replace(
                "forwarding = \"nat\"",
                &format!("forwarding = \"nat\"\nobserve = \"{observe}\"\nerror_limit = 3"),
            )
    };
    let mut s = setup(test, config, move |lab, backends| {
        for (i, ns) in backends.iter().enumerate() {
            let pid = lab.http_backend(ns, &BACKENDS[i].to_string(), 8080, &format!("be{}", i + 1));
            p.lock().unwrap().push(pid);
        }
    });
    let client = s.client.clone();
    wait_until("the VIP to answer", Duration::from_secs(15), || {
        in_ns(&client, get).is_ok()
    });
    let t0 = Arc::new(Mutex::new(None::<Instant>));
    let load = {
        let (client, t0) = (client.clone(), t0.clone());
        thread::spawn(move || {
            enter(&client);
            let mut errors = Vec::new();
            let started = Instant::now();
            // Bounded: 25 s or 2500 requests.
            for _ in 0..2_500 {
                if started.elapsed() > Duration::from_secs(25) {
                    break;
                }
                let at = Instant::now();
                // Only refusals come from the dead backend; a timeout on
                // this shared 2-core machine is load, not routing.
                if let Err(e) = get()
                    && (e.contains("refused") || e.contains("reset"))
                    && let Some(t) = *t0.lock().unwrap()
                {
                    errors.push(at.saturating_duration_since(t));
                }
                thread::sleep(Duration::from_millis(10));
            }
            errors
        })
    };
    thread::sleep(Duration::from_secs(2));
    let be2 = pids.lock().unwrap()[1];
    *t0.lock().unwrap() = Some(Instant::now());
    s.lab.kill(be2);
    let errors = load.join().expect("load");
    let log = log_of(&s);
    s.lab.kill(s.lb_pid);
    let last = errors.iter().max().copied().unwrap_or_default();
    (errors.len(), last, log)
}

/// Passive health (observe layer4): with slow active checks (5 s × 3), a
/// backend that refuses connections is taken out by the datapath's RST
/// counts within a second, and clients see a handful of errors instead of
/// ~15 s of them.
#[test]
fn passive_health_removes_a_refusing_backend_before_active_checks() {
    let (active_errors, active_last, _) = failure_under_load("pasa", "5s", 3, "none");
    let (passive_errors, passive_last, log) = failure_under_load("pasp", "5s", 3, "layer4");
    println!(
        "active checks only (5s x 3): {active_errors} client errors, last at {active_last:?}; \
         with observe layer4 (error_limit 3): {passive_errors} client errors, last at {passive_last:?}"
    );
    assert!(
        log.contains("observe layer4"),
        "no passive transition logged:\n{log}"
    );
    assert!(
        passive_last < Duration::from_secs(3),
        "passive detection took {passive_last:?}\n{log}"
    );
    assert!(
        active_last > Duration::from_secs(5),
        "active-only run detected too fast ({active_last:?}) to compare"
    );
    assert!(
        passive_errors * 5 < active_errors,
        "{passive_errors} vs {active_errors} errors"
    );
}

/// lc through the daemon: `lb status` names the scheduler, new connections
/// go to the backend with the fewest open ones, and connections that idled
/// past tcp_timeout stop counting once the daemon's recount (every second)
/// has seen them expire.
#[test]
fn lc_counts_connections_and_forgets_idle_ones() {
    let stop_backends = Arc::new(AtomicBool::new(false));
    let sb = stop_backends.clone();
    let mut s = setup(
        "lcd",
        |dir| {
            let mut c = service_config(dir);
            c.push_str("scheduler = \"lc\"\ntcp_timeout = \"2s\"\n");
            for b in &BACKENDS[..2] {
                c.push_str(&format!("\n[[service.backend]]\naddress = \"{b}:8033\"\n"));
            }
            c
        },
        move |_, backends| {
            for (i, ns) in backends.iter().enumerate() {
                let name: &'static str = ["be1", "be2", "be3"][i];
                echo_backend(ns, SocketAddrV4::new(BACKENDS[i], 8033), name, sb.clone());
            }
        },
    );
    let client = s.client.clone();
    wait_until("the VIP to answer", Duration::from_secs(15), || {
        in_ns(&client, || {
            TcpStream::connect_timeout(&VIP.into(), Duration::from_millis(500)).is_ok()
        })
    });
    let socket = s.lab.dir().join("admin.sock");
    let out = std::process::Command::new(LB_BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["status", "--json"])
        .output()
        .expect("lb status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("\"scheduler\": \"lc\""), "{status}");
    // The probes above closed their connections: none counts any more.
    let (first, later) = in_ns(&client, || {
        let open = || {
            let c =
                TcpStream::connect_timeout(&VIP.into(), Duration::from_secs(2)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut name = String::new();
            BufReader::new(c.try_clone().unwrap())
                .read_line(&mut name)
                .expect("greeting");
            (c, name.trim().to_string())
        };
        let held: Vec<_> = (0..3).map(|_| open()).collect();
        // All three idle past the 2 s timeout; the next recount drops them.
        thread::sleep(Duration::from_millis(3_500));
        let later = open();
        let names: Vec<String> = held.iter().map(|(_, n)| n.clone()).collect();
        (names, later.1)
    });
    assert_eq!(first, ["be1", "be2", "be1"], "least connections first");
    assert_eq!(
        later, "be1",
        "be1 still counted its two idle connections (be2 got it)"
    );
    stop_backends.store(true, Ordering::Relaxed);
    s.lab.kill(s.lb_pid);
}
