//! The daemon's memory over a long reload loop, in network namespaces
//! (198.18.0.0/15): 320 SIGHUP reloads alternating between two configs
//! that add and remove a service, reweight backends and change their
//! checks, while the checks run. RSS is read from /proc after a warm-up
//! and at the end; it must not grow by more than a fixed bound.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use lb_testlab::{Lab, echo_backend};

const LB_BIN: &str = env!("CARGO_BIN_EXE_lb");
const RELOADS: usize = 320;
/// Reloads before the baseline: the allocator's arenas, the tokio
/// runtime's worker stacks and the first table pages settle there.
const WARMUP: usize = 40;
/// Growth allowed from the baseline to the end. A leak of one table swap's
/// buffers or one service's state per reload would cost tens of KiB each,
/// megabytes over 280 reloads; allocator noise after the warm-up stays
/// under 1 MiB. Four leaves room for that noise without hiding a leak.
const GROWTH_BOUND_KIB: u64 = 4 * 1024;
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 1),
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 1, 3),
];
/// Ports per backend host; only the first listens, the others fail their
/// checks, so every reload also brings health transitions.
const PORTS: u16 = 8;

fn config(dir: &Path, variant: usize) -> String {
    let mut c = format!(
        "[daemon]\nxdp_mode = \"generic\"\nadmin_socket = \"{}/admin.sock\"\nflow_capacity = 65536\n",
        dir.display()
    );
    // The service on :80 is in both, reweighted and with another check;
    // :81 and :82 come and go.
    let extra = if variant == 0 { 81 } else { 82 };
    for port in [80, extra] {
        c.push_str(&format!(
            "\n[[service]]\nvip = \"198.18.0.100:{port}\"\ninterface = \"eth0\"\nforwarding = \"nat\"\n\n\
             [service.check]\ntype = \"tcp\"\ndelay_loop = \"{}ms\"\nconnect_timeout = \"500ms\"\n",
            if variant == 0 { 500 } else { 700 }
        ));
        for (i, b) in BACKENDS.iter().enumerate() {
            for p in 0..PORTS {
                c.push_str(&format!(
                    "\n[[service.backend]]\naddress = \"{b}:{}\"\nweight = {}\n",
                    8_033 + p,
                    1 + (i + variant) % 3
                ));
            }
        }
    }
    c
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn reloads_logged(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.matches("config reloaded").count())
        .unwrap_or(0)
}

#[test]
fn rss_is_stable_over_320_reloads() {
    let mut lab = Lab::new("rss");
    let lb = lab.host("lb", "198.18.0.2/15");
    lab.ip(&["-n", &lb, "addr", "add", "198.18.0.100/32", "dev", "eth0"]);
    let stop = Arc::new(AtomicBool::new(false));
    for (i, a) in BACKENDS.iter().enumerate() {
        let ns = lab.host(&format!("be{}", i + 1), &format!("{a}/15"));
        echo_backend(&ns, SocketAddrV4::new(*a, 8_033), "be", stop.clone());
    }
    let dir = lab.dir();
    let cfg = dir.join("lb.toml");
    let log = dir.join("lb.log");
    std::fs::write(&cfg, config(&dir, 0)).expect("config");
    let pid = lab.spawn_logged(
        &lb,
        &format!("{LB_BIN} run --config {}", cfg.display()),
        Some(&log),
    );
    let started = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|s| s.contains("table swapped")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "lb did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut baseline = 0;
    let mut samples = Vec::new();
    let t0 = Instant::now();
    for n in 1..=RELOADS {
        std::fs::write(&cfg, config(&dir, n % 2)).expect("config");
        lab.signal(pid, libc::SIGHUP);
        let asked = Instant::now();
        while reloads_logged(&log) < n {
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "reload {n} not applied in 10 s"
            );
            thread::sleep(Duration::from_millis(5));
        }
        // Let the checks of the new config run a little.
        thread::sleep(Duration::from_millis(20));
        if n == WARMUP {
            baseline = rss_kib(pid);
        }
        if n % 40 == 0 {
            samples.push((n, rss_kib(pid)));
        }
    }
    let end = rss_kib(pid);
    println!(
        "{RELOADS} reloads in {:?}; RSS after {WARMUP}: {baseline} KiB, at the end: {end} KiB; \
         samples (reload, KiB): {samples:?}",
        t0.elapsed()
    );
    assert!(
        end <= baseline + GROWTH_BOUND_KIB,
        "RSS grew from {baseline} KiB to {end} KiB over {} reloads: {samples:?}",
        RELOADS - WARMUP
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    lab.kill(pid);
}
