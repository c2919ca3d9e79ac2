//! Project tasks: `cargo xtask <setup|build|test|lint|lab|bench [micro|vrrp|health|e2e|all] [--katran DIR]|chaos [--duration 180s]>`.
//!
//! The lab is the project's main job: network namespaces on 198.18.0.0/15
//! with a client, the load balancer and three HTTP backends, brought up with
//! the `lb` binary and the config in `configs/lab.toml`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lb project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh Debian 12 machine lacks (apt packages, nightly
    /// rust-src, bpf-linker): runs scripts/setup.sh.
    Setup,
    /// Build the `lb` binary (release) with the XDP object embedded.
    Build,
    /// Run every test (needs root: eBPF, network namespaces).
    Test,
    /// rustfmt check and clippy (-D warnings) on the host crates and, with
    /// the nightly toolchain, on the eBPF programs.
    Lint,
    /// The netns lab: `up` (default) builds, starts and demonstrates it;
    /// `down` removes everything it created; `check` brings it up, checks
    /// the traffic and VRRP, and takes it down (part of `test`).
    Lab {
        #[arg(value_enum, default_value = "up")]
        action: LabAction,
    },
    /// Benchmarks (as root): `micro` (default) is datapath ns/packet (every
    /// mode and scheduler), Maglev build time and the lc/wlc recount; `vrrp` the failover gap against keepalived (about
    /// 4 minutes); `health` 1000 health-checked backends against HAProxy
    /// (about 2 minutes); `e2e` wrk through lb vs HAProxy vs nginx stream
    /// (about 10 minutes); `all` runs them all. `--katran DIR` adds Katran's
    /// XDP balancer to the datapath bench.
    Bench {
        #[arg(value_enum, default_value = "micro")]
        which: BenchKind,
        /// A Katran checkout (facebookincubator/katran): its XDP balancer is
        /// built with clang and measured beside lb in the datapath bench.
        #[arg(long, value_name = "DIR")]
        katran: Option<PathBuf>,
    },
    /// The cargo-fuzz targets (VRRP codec, config parser), each for
    /// `--seconds`, from the committed seeds plus fuzz/corpus (needs nightly
    /// and cargo-fuzz: scripts/setup.sh installs both). CI runs the short
    /// default; see fuzz/README.md for a long run.
    Fuzz {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Chaos under load (as root): two `lb run` nodes (VRRP, dr) and five
    /// backends killed, hung, resetting and flapping, the master killed,
    /// valid and invalid reloads, under a bounded client load; prints one
    /// table and fails if a client error is the LB's while a healthy
    /// backend existed. See RELIABILITY.md.
    Chaos {
        /// Length of the load ("180s" or "180"); setup adds about 20 s.
        #[arg(long, default_value = "180s", value_parser = seconds)]
        duration: u64,
        /// Seed of the fault schedule (the same seed, the same events).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn seconds(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .strip_suffix('s')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("{s:?}: expected seconds, e.g. 180s"))?;
    if (10..=3600).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{s:?}: between 10s and 3600s"))
    }
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum BenchKind {
    Micro,
    Vrrp,
    Health,
    E2e,
    All,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LabAction {
    Up,
    Down,
    Check,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "{what} needs root (eBPF and network namespaces)"
    );
    Ok(())
}

fn build() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "lb-cli"]))?;
    Ok(root().join("target/release/lb"))
}

fn test() -> Result<()> {
    require_root("cargo xtask test")?;
    // The eBPF crate's library (ABI, hash, checksums) is tested on the host;
    // its programs are exercised through lb-core's test-run and netns tests.
    run(cargo().args(["test", "-p", "lb-ebpf", "--lib"]))?;
    run(cargo().args(["test", "--workspace", "--exclude", "lb-ebpf"]))?;
    lab_check()
}

/// The README's main job, as a new user runs it: `lab` comes up and spreads
/// requests over every backend with one VRRP master, and `lab down` leaves
/// no namespace, process or state directory behind.
fn lab_check() -> Result<()> {
    println!("\nlab: up, traffic through the VIP, down");
    ensure!(
        !lab_present()?,
        "a lab is up ({PREFIX}* namespaces or {STATE}); `cargo xtask lab down` it first"
    );
    let checked = lab_up().and_then(|report| {
        let hello = report
            .counts
            .iter()
            .filter(|(line, _)| line.starts_with("hello from be"))
            .count();
        ensure!(
            hello == BACKENDS.len() && report.counts.len() == hello,
            "expected answers from each of the {} backends only: {:?}",
            BACKENDS.len(),
            report.counts
        );
        let answered: usize = report.counts.iter().map(|(_, n)| n).sum();
        ensure!(
            answered == LAB_REQUESTS,
            "{answered} of {LAB_REQUESTS} requests answered"
        );
        ensure!(
            report.masters == 1,
            "expected one VRRP master, found {}",
            report.masters
        );
        Ok(())
    });
    lab_down()?;
    ensure!(!lab_present()?, "`lab down` left namespaces or {STATE}");
    checked?;
    println!("lab: ok, nothing left behind");
    Ok(())
}

fn lab_present() -> Result<bool> {
    let list = output(Command::new("ip").args(["netns", "list"]))?;
    Ok(Path::new(STATE).exists() || list.lines().any(|l| l.starts_with(PREFIX)))
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // `--workspace` would also build lb-ebpf's programs for the host.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["clippy", "-p", "lb-ebpf", "--lib", "--", "-D", "warnings"]))?;
    run(Command::new("rustup")
        .current_dir(root().join("lb-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--",
            "-D",
            "warnings",
        ]))
}

fn bench(which: BenchKind, katran: Option<&Path>) -> Result<()> {
    require_root("cargo xtask bench")?;
    let katran = katran.map(build_katran).transpose()?;
    // lb-cli too: the vrrp, health and e2e benches drive the `lb` binary.
    run(cargo().args(["build", "--release", "-p", "lb-benches", "-p", "lb-cli"]))?;
    let release = root().join("target/release");
    let bin = release.join("lb-bench");
    let all = which == BenchKind::All;
    if all || which == BenchKind::Micro {
        println!("\n## Datapath, ns/packet (BPF_PROG_TEST_RUN)\n");
        let mut datapath = Command::new(&bin);
        datapath.arg("datapath");
        if let Some(object) = &katran {
            datapath.arg("--katran").arg(object);
        }
        run(&mut datapath)?;
        println!("\n## Maglev table build\n");
        run(Command::new(&bin).arg("maglev"))?;
        println!("\n## lc/wlc active-flow recount\n");
        run(Command::new(&bin).arg("recount"))?;
    }
    if all || which == BenchKind::Vrrp {
        println!("\n## VRRP failover gap\n");
        run(Command::new(&bin).arg("vrrp"))?;
    }
    if all || which == BenchKind::Health {
        println!("\n## Health checks: 1000 backends\n");
        run(Command::new(release.join("lb-bench-health")).args([
            "--backends",
            "1000",
            "--failing",
            "10",
            "--window",
            "30",
        ]))?;
    }
    if all || which == BenchKind::E2e {
        println!("\n## End to end: lb vs HAProxy vs nginx stream\n");
        run(Command::new(release.join("lb-bench-e2e"))
            .arg("--lb")
            .arg(release.join("lb")))?;
    }
    Ok(())
}

/// Builds Katran's balancer from the checkout `src` as Katran's own
/// Makefile does (clang to LLVM IR, llc to BPF), into target/katran.
fn build_katran(src: &Path) -> Result<PathBuf> {
    let source = src.join("katran/lib/bpf/balancer.bpf.c");
    ensure!(
        source.is_file(),
        "{} is not a Katran checkout (no katran/lib/bpf/balancer.bpf.c)",
        src.display()
    );
    let out = root().join("target/katran");
    std::fs::create_dir_all(&out)?;
    let (ir, object) = (out.join("balancer.ll"), out.join("balancer.bpf.o"));
    run(Command::new("clang")
        .arg(format!(
            "-I{}",
            src.join("katran/lib/linux_includes").display()
        ))
        .arg(format!("-I{}", src.display()))
        .args([
            "-D__KERNEL__",
            "-Wno-unused-value",
            "-Wno-pointer-sign",
            "-Wno-compare-distinct-pointer-types",
            "-O2",
            "-emit-llvm",
            "-c",
            "-g",
        ])
        .arg(&source)
        .arg("-o")
        .arg(&ir))
    .context("compiling Katran (clang and llc: scripts/setup.sh installs them)")?;
    run(Command::new("llc")
        .args(["-march=bpf", "-filetype=obj"])
        .arg(&ir)
        .arg("-o")
        .arg(&object))?;
    Ok(object)
}

fn chaos(duration: u64, seed: u64) -> Result<()> {
    require_root("cargo xtask chaos")?;
    run(cargo().args(["build", "--release", "-p", "lb-benches", "-p", "lb-cli"]))?;
    let release = root().join("target/release");
    run(Command::new(release.join("lb-chaos"))
        .arg("--lb")
        .arg(release.join("lb"))
        .args([
            "--duration",
            &duration.to_string(),
            "--seed",
            &seed.to_string(),
        ]))
}

/// Lab layout. Namespaces are prefixed so `down` finds all of them.
const PREFIX: &str = "lblab-";
const STATE: &str = "/run/lb-lab";
/// Requests the client sends through the VIP once the lab is up.
const LAB_REQUESTS: usize = 60;
const BACKENDS: [(&str, &str); 3] = [
    ("be1", "198.18.1.1"),
    ("be2", "198.18.1.2"),
    ("be3", "198.18.1.3"),
];

fn ns(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn in_ns(name: &str, script: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns(name), "sh", "-c", script]);
    c
}

/// Starts `script` in `name` detached, logging to STATE/<log>.log and
/// recording its pid for `down`.
fn daemon(name: &str, log: &str, script: &str) -> Result<()> {
    let logf = std::fs::File::create(format!("{STATE}/{log}.log"))?;
    let child = in_ns(name, &format!("exec {script}"))
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("starting {log}"))?;
    std::fs::write(format!("{STATE}/{log}.pid"), child.id().to_string())?;
    Ok(())
}

fn host(name: &str, iface: &str, cidr: &str, port: &str) -> Result<()> {
    let n = ns(name);
    ip(&["netns", "add", &n])?;
    ip(&["-n", &n, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &ns("br"),
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        iface,
        "netns",
        &n,
    ])?;
    ip(&["-n", &ns("br"), "link", "set", port, "master", "br0", "up"])?;
    ip(&["-n", &n, "addr", "add", cidr, "dev", iface])?;
    ip(&["-n", &n, "link", "set", iface, "up"])?;
    // veth leaves checksums to a NIC that does not exist; the datapath's
    // incremental checksum updates need real ones to start from.
    run(&mut in_ns(
        name,
        &format!("ethtool -K {iface} tx off >/dev/null"),
    ))
}

/// What `lab_up` saw: each distinct answer to the client's requests with
/// its count, and how many LB nodes hold the VIP.
struct LabReport {
    counts: Vec<(String, usize)>,
    masters: usize,
}

/// cargo-fuzz targets; fuzz/ is a workspace of its own (see its README).
const FUZZ_TARGETS: [&str; 2] = ["vrrp_codec", "config_parser"];

fn fuzz(seconds: u64) -> Result<()> {
    let fuzz = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(root()).args(["+nightly", "fuzz"]).args(args);
        c
    };
    run(&mut fuzz(&["build", "-O"]))?;
    for t in FUZZ_TARGETS {
        let corpus = root().join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root().join("fuzz/seeds").join(t);
        run(&mut fuzz(&[
            "run",
            "-O",
            t,
            &corpus.display().to_string(),
            &seeds.display().to_string(),
            "--",
            &format!("-max_total_time={seconds}"),
        ]))
        .with_context(|| format!("fuzz target {t} failed: see fuzz/artifacts/{t}/"))?;
    }
    Ok(())
}

fn lab_up() -> Result<LabReport> {
    require_root("cargo xtask lab")?;
    let lb = build()?;
    lab_down()?;
    std::fs::create_dir_all(STATE)?;
    ip(&["netns", "add", &ns("br")])?;
    ip(&["-n", &ns("br"), "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &ns("br"), "link", "set", "br0", "up"])?;
    host("client", "eth0", "198.18.0.1/15", "p-client")?;
    host("lb1", "lb0", "198.18.0.2/15", "p-lb1")?;
    host("lb2", "lb0", "198.18.0.3/15", "p-lb2")?;
    for (name, addr) in BACKENDS {
        host(name, "eth0", &format!("{addr}/15"), &format!("p-{name}"))?;
        let dir = format!("{STATE}/{name}");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            format!("{dir}/index.html"),
            format!("hello from {name} ({addr})\n"),
        )?;
        daemon(
            name,
            name,
            &format!("python3 -m http.server 8080 --bind {addr} --directory {dir}"),
        )?;
    }
    // lb2 is lb1's config as the VRRP backup: lower priority, own socket.
    let config = root().join("configs/lab.toml");
    let text = std::fs::read_to_string(&config)?;
    ensure!(
        text.contains("priority = 150") && text.contains("lb1.sock"),
        "configs/lab.toml: expected `priority = 150` and `lb1.sock` to derive lb2's config"
    );
    let lb2_config = format!("{STATE}/lb2.toml");
    std::fs::write(
        &lb2_config,
        text.replace("priority = 150", "priority = 100")
            .replace("lb1.sock", "lb2.sock"),
    )?;
    for (name, cfg) in [("lb1", config.display().to_string()), ("lb2", lb2_config)] {
        daemon(name, name, &format!("{} run --config {cfg}", lb.display()))?;
    }
    println!("lab: waiting for the VIP 198.18.0.100:80 to answer ...");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = in_ns(
            "client",
            "curl -s --max-time 1 http://198.18.0.100/ >/dev/null",
        )
        .status()
        .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("the VIP did not answer within 20 s; see {STATE}/lb1.log");
        }
        sleep(Duration::from_millis(300));
    }
    let out = output(&mut in_ns(
        "client",
        &format!(
            "for i in $(seq {LAB_REQUESTS}); do curl -s --max-time 2 http://198.18.0.100/; done"
        ),
    ))?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in out.lines() {
        match counts.iter_mut().find(|(l, _)| l == line) {
            Some((_, n)) => *n += 1,
            None => counts.push((line.to_string(), 1)),
        }
    }
    counts.sort();
    println!(
        "\n{LAB_REQUESTS} requests from the client to http://198.18.0.100/ (VIP :80 → backends :8080, nat):"
    );
    for (line, n) in &counts {
        println!("  {n:3}  {line}");
    }
    let mut masters = 0;
    for name in ["lb1", "lb2"] {
        let owns = output(&mut in_ns(name, "ip -4 -o addr show dev lb0"))?.contains("198.18.0.100");
        masters += usize::from(owns);
        println!(
            "  {name}: {}",
            if owns {
                "VRRP MASTER (owns the VIP)"
            } else {
                "VRRP BACKUP"
            }
        );
    }
    let lb = lb.display();
    println!(
        "\nThe lab is up ({PREFIX}* namespaces; logs, pids and lb2's config in {STATE}).\n\
         Drive it (as root):\n\
         \x20 ip netns exec {PREFIX}client curl http://198.18.0.100/      # a request through the VIP\n\
         \x20 export LB_ADMIN_SOCKET={STATE}/lb1.sock                     # talk to lb1 (lb2: lb2.sock)\n\
         \x20 {lb} status                                                 # services, backends, VRRP, counters\n\
         \x20 {lb} drain 198.18.0.100:80 198.18.1.2:8080 --wait           # drain be2 until its flows end\n\
         \x20 {lb} undrain 198.18.0.100:80 198.18.1.2:8080\n\
         \x20 kill $(cat {STATE}/be3.pid)                                 # kill a backend: it leaves rotation\n\
         \x20 kill $(cat {STATE}/lb1.pid)                                 # stop the master: lb2 takes the VIP\n\
         \x20 tail -f {STATE}/lb1.log {STATE}/lb2.log                     # the daemons' logs\n\
         \x20 ip netns exec {PREFIX}lb1 curl -s 127.0.0.1:9658/metrics    # Prometheus metrics of lb1\n\
         Tear it down:\n\
         \x20 cargo xtask lab down"
    );
    Ok(LabReport { counts, masters })
}

fn lab_down() -> Result<()> {
    require_root("cargo xtask lab down")?;
    if let Ok(entries) = std::fs::read_dir(STATE) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid")
                && let Ok(pid) = std::fs::read_to_string(&p)
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                // SAFETY: plain kill(2) of a pid we started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        sleep(Duration::from_millis(300));
    }
    let list = output(Command::new("ip").args(["netns", "list"]))?;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) {
            // Processes still inside would keep nothing alive: the namespace
            // goes with its last process, and deleting the name is enough.
            let pids = output(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) of a process inside our lab namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            ip(&["netns", "del", name])?;
        }
    }
    let _ = std::fs::remove_dir_all(STATE);
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => run(&mut Command::new(root().join("scripts/setup.sh"))),
        Task::Build => build().map(|p| println!("built {}", p.display())),
        Task::Test => test(),
        Task::Lint => lint(),
        Task::Lab {
            action: LabAction::Up,
        } => lab_up().map(drop),
        Task::Lab {
            action: LabAction::Down,
        } => {
            lab_down()?;
            println!("lab removed");
            Ok(())
        }
        Task::Lab {
            action: LabAction::Check,
        } => lab_check(),
        Task::Bench { which, katran } => bench(which, katran.as_deref()),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Chaos { duration, seed } => chaos(duration, seed),
    }
}
